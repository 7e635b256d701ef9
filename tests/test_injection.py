"""No injection: every setting that reaches a shell, a systemd unit, nginx, Traefik or YAML is
validated for what it is and quoted for where it lands (components/quoting.py).

The files checked are the ones `commstack render` writes (its own writer), and the checks are
the real readers: `bash -n` and shlex for shell lines, `systemd-analyze verify` for the units,
`nginx -t` for the nginx sites, and PyYAML for every YAML file. Hypothesis feeds hostile
strings to every string setting; each is refused with a SettingsError that names the key, or it
renders and stays one word / one literal everywhere it lands.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import string
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from commstack.devtools import offline
from tests.conftest import write_self_signed_pair
from commstack.devtools.render import write_render
from components.settings import CONFIG_KEYS, SettingsError
from tests.conftest import TEST_SECRETS, stack_config

CERTBOT_UNIT = "/etc/systemd/system/signal-certbot.service"
APOSTROPHE = "o'brien@example.org"


def evaluate_prod(**overrides: str) -> offline.Evaluation:
    config = stack_config("prod", **overrides)
    return offline.evaluate("prod", config=config, secret_keys=list(TEST_SECRETS))


def rendered(evaluation: offline.Evaluation, out: Path) -> dict[str, str]:
    """The render as {relative path: text}, written by `commstack render`'s writer."""
    result = write_render(evaluation, out)
    return {rf.path.as_posix(): (out / rf.path).read_text() for rf in result.files}


def instance_file(files: dict[str, str], path: str) -> str:
    matches = [text for rel, text in files.items() if rel.endswith(path) and "/" in rel
               and rel.split("/", 1)[1] == path.lstrip("/")]
    assert len(matches) == 1, f"{path}: {len(matches)} rendered copies"
    return matches[0]


def user_data(files: dict[str, str]) -> dict:
    texts = [text for rel, text in files.items() if rel.endswith("/user-data")]
    assert len(texts) == 1
    return yaml.safe_load(texts[0])


# -- how the real readers see a line ----------------------------------------------------


def unit_values(unit: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(f"{key}=")]


def systemd_exec_words(value: str) -> list[str]:
    """An Exec*= value split the way systemd does for the quoting components/quoting.py writes
    (double-quoted words with \\\\ and \\" escapes; `$$` and `%%` are a literal `$` and `%`)."""
    words = shlex.split(value, posix=True)
    decoded = []
    for word in words:
        assert not re.search(r"(?<!\$)\$(?!\$)|(?<!%)%(?!%)", word.replace("$$", "").replace("%%", "")), \
            f"systemd would expand a variable or specifier in {word!r}"
        decoded.append(re.sub(r"\$\$|%%", lambda m: m.group()[0], word))
    return decoded


def bash_syntax_ok(script: str) -> None:
    done = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"bash -n: {done.stderr}\n{script}"


def systemd_verify(units: dict[str, str], tmp: Path) -> list[str]:
    from tests.components.signal.test_host import NOT_THIS_MACHINE

    directory = tmp / "units"
    directory.mkdir(exist_ok=True)
    for name, text in units.items():
        (directory / name).write_text(text)
    binary = shutil.which("systemd-analyze")
    assert binary, "systemd-analyze is missing: apt-get install systemd"
    done = subprocess.run([binary, "verify", "--man=no", *sorted(str(p) for p in directory.iterdir())],
                          capture_output=True, text=True, timeout=60)
    return [line for line in (done.stdout + done.stderr).splitlines()
            if line.strip() and not any(marker in line for marker in NOT_THIS_MACHINE)]


def certbot_command(unit: str) -> list[str]:
    start, = unit_values(unit, "ExecStart")
    return systemd_exec_words(start)


def run_with_stub(argv: list[str], stub: str, tmp: Path) -> list[str]:
    """Runs `argv` (a real shell) with PATH's `stub` recording its arguments; returns them."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp / f"{stub}.args.json"
    script = bin_dir / stub
    script.write_text(f"#!/usr/bin/env python3\nimport json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n")
    script.chmod(stat.S_IRWXU)
    done = subprocess.run(argv, cwd=tmp, env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(record.read_text())


# -- the findings ---------------------------------------------------------------------------


@pytest.mark.parametrize("key, value", [
    ("acmeEmail", "a@b.c;touch${IFS}/tmp/pwn"),  # the review's payload: accepted by the old check
    ("acmeEmail", "a@b.c$(touch /tmp/pwn)"),
    ("acmeEmail", "x@example.org\nExecStartPre=/bin/sh -c id"),
    ("signalJarS3Uri", "s3://builds/x.jar;touch${IFS}/tmp/pwn"),
    ("signalJarS3Uri", "s3://builds/$(id).jar"),
    ("signalJarS3Uri", "s3://builds/*"),  # a wildcard in the jar's IAM resource ARN
    ("dockerHost", "ssh://deploy@host;id"),
])
def test_hostile_values_the_old_checks_accepted_are_refused_with_the_key(key, value):
    with pytest.raises(SettingsError) as raised:
        evaluate_prod(**{key: value})
    assert any(p.startswith(f"commstack:{key}:") for p in raised.value.problems), raised.value.problems


def test_the_apostrophe_address_renders_and_certbot_gets_it_whole(tmp_path):
    files = rendered(evaluate_prod(acmeEmail=APOSTROPHE), tmp_path / "render")
    unit = instance_file(files, CERTBOT_UNIT)
    assert systemd_verify({"signal-certbot.service": unit}, tmp_path) == []
    shell, flag, script = certbot_command(unit)
    assert (shell, flag) == ("/bin/sh", "-c")
    bash_syntax_ok(script)
    args = run_with_stub(["/bin/sh", "-c", script], "certbot", tmp_path)
    assert args[args.index("-m") + 1] == APOSTROPHE
    assert args[args.index("-d") + 1] == "chat.example.org"
    assert args[args.index("--pre-hook") + 1] == "systemctl stop nginx"
    # Traefik's ACME account gets it too, as one YAML string.
    static = yaml.safe_load(files["proxy/etc/traefik/traefik.yml"])
    assert static["certificatesResolvers"]["letsencrypt"]["acme"]["email"] == APOSTROPHE


def test_shell_characters_legal_in_an_address_run_nothing(tmp_path):
    """`` ` ``, `$`, `{`, `}` and `|` are legal in an e-mail local part; in the certbot line they stay text."""
    email = "a`touch${IFS}pwned`|x@example.org"
    files = rendered(evaluate_prod(acmeEmail=email), tmp_path / "render")
    _, _, script = certbot_command(instance_file(files, CERTBOT_UNIT))
    args = run_with_stub(["/bin/sh", "-c", script], "certbot", tmp_path)
    assert args[args.index("-m") + 1] == email
    assert not (tmp_path / "pwned").exists()


def test_the_prebuilt_jar_uri_is_one_word_of_the_download(tmp_path):
    uri = "s3://builds/it's-(v9.81.0)!.jar"
    files = rendered(evaluate_prod(signalJarS3Uri=uri), tmp_path / "render")
    shell_steps = [step for step in user_data(files)["runcmd"] if isinstance(step, list) and step[:2] == ["sh", "-c"]]
    download = next(step[2] for step in shell_steps if "aws s3 cp" in step[2])
    bash_syntax_ok(download)
    args = run_with_stub(["/bin/sh", "-c", download], "aws", tmp_path)
    assert args == ["s3", "cp", "--region", "eu-central-1", uri, "/opt/signal/TextSecureServer.jar"]


def test_units_take_the_region_as_one_environment_assignment(tmp_path):
    files = rendered(evaluate_prod(), tmp_path / "render")
    for unit in ("signal-server.service", "signal-redis.service"):
        assignments = [shlex.split(v) for v in unit_values(instance_file(files, f"/etc/systemd/system/{unit}"),
                                                          "Environment")]
        assert assignments == [["AWS_DEFAULT_REGION=eu-central-1"]], unit


# -- hostile strings, every string setting --------------------------------------------------

# What a shell, systemd, nginx or YAML would act on, plus ordinary characters and a non-ASCII one.
HOSTILE_ALPHABET = "';\"`$(){}[]|&<>*?!#~%\\ \t\n=+/^.,:@-_" + string.ascii_letters[:8] + string.digits[:4] + "é"
# Only strings holding at least one such character: a plain DNS label proves nothing.
hostile = st.text(alphabet=HOSTILE_ALPHABET, min_size=1, max_size=24).filter(
    lambda s: not re.fullmatch(r"[A-Za-z0-9.-]*", s.strip()))

# Every setting whose value is text (choices, booleans and numbers are checked by their own readers).
STRING_SETTINGS = sorted(k.name for k in CONFIG_KEYS.values()
                         if k.namespace == "commstack" and not k.secret
                         and k.kind.type_name not in ("boolean", "choice", "integer", "JSON object")
                         and not k.kind.type_name.startswith("JSON list"))


def test_the_hostile_test_covers_every_text_setting():
    assert set(STRING_SETTINGS) >= {"domain", "dockerHost", "publicIp", "acmeEmail", "matrixSubdomain",
                                    "elementSubdomain", "turnSubdomain", "signalInstanceType", "signalServerRepo",
                                    "signalServerRef", "signalJarS3Uri"}


def check_render_keeps_literal(evaluation: offline.Evaluation, values: dict[str, str]) -> None:
    """Every YAML and JSON file loads back; where a value lands it is one scalar, one shell word,
    one systemd word, and nginx accepts the sites."""
    with tempfile.TemporaryDirectory(prefix="commstack-injection-") as tmp:
        tmp_path = Path(tmp)
        files = rendered(evaluation, tmp_path / "render")
        for rel, text in files.items():
            if rel.endswith((".yaml", ".yml", "/user-data")):
                assert yaml.safe_load(text) is not None, rel
            elif rel.endswith(".json"):
                json.loads(text)
        if any(rel.endswith("/user-data") for rel in files):
            document = user_data(files)
            for step in document["runcmd"]:
                if isinstance(step, list) and step[:2] == ["sh", "-c"]:
                    bash_syntax_ok(step[2])
                    jar = values.get("signalJarS3Uri")
                    if jar and "aws s3 cp" in step[2]:
                        assert jar in shlex.split(step[2])
            units = {entry["path"].rsplit("/", 1)[1]: entry["content"] for entry in document["write_files"]
                     if entry["path"].endswith(".service")}
            assert systemd_verify(units, tmp_path) == []
            _, _, script = certbot_command(units["signal-certbot.service"])
            bash_syntax_ok(script)
            if "acmeEmail" in values:
                words = shlex.split(script)
                assert words[words.index("-m") + 1] == values["acmeEmail"]
        if "acmeEmail" in values and "proxy/etc/traefik/traefik.yml" in files:
            static = yaml.safe_load(files["proxy/etc/traefik/traefik.yml"])
            assert static["certificatesResolvers"]["letsencrypt"]["acme"]["email"] == values["acmeEmail"]
        nginx_sites_accepted(files, tmp_path)


def nginx_sites_accepted(files: dict[str, str], tmp_path: Path) -> None:
    """`nginx -t` on the well-known site and the Signal front, their certificate paths pointed at a real pair."""
    write_self_signed_pair(tmp_path)
    sites = [text for rel, text in files.items() if rel.endswith(("/etc/nginx/conf.d/default.conf",
                                                                  "/etc/nginx/sites-available/signal.conf"))]
    assert sites
    for index, site in enumerate(sites):
        site = re.sub(r"(ssl_certificate\s+)\S+;", rf"\g<1>{tmp_path}/cert.pem;", site)
        site = re.sub(r"(ssl_certificate_key\s+)\S+;", rf"\g<1>{tmp_path}/key.pem;", site)
        (tmp_path / f"site{index}.conf").write_text(site)
        (tmp_path / "nginx.conf").write_text(
            f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
            f"http {{\n    access_log off;\n    include {tmp_path}/site{index}.conf;\n}}\n")
        done = subprocess.run(["nginx", "-t", "-q", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr


FAST = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
@pytest.mark.parametrize("key", STRING_SETTINGS)
@FAST
@given(value=hostile)
def test_a_hostile_string_is_refused_by_name_or_stays_literal(key, value):
    try:
        evaluation = evaluate_prod(**{key: value})
    except SettingsError as error:
        assert any(p.startswith(f"commstack:{key}:") for p in error.problems), error.problems
        return
    check_render_keeps_literal(evaluation, {key: value.strip()})


# Values each grammar accepts, built from the characters it allows that a shell or systemd acts on.
EMAIL_SPECIALS = "!#$%&'*+/=?^_`{|}~-"
email_local = st.text(alphabet=string.ascii_lowercase[:4] + EMAIL_SPECIALS, min_size=1, max_size=20).filter(
    lambda s: not s.startswith(".") and ".." not in s)
s3_key = st.text(alphabet=string.ascii_lowercase[:4] + "!_.'()-", min_size=1, max_size=20)


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(local=email_local, key=s3_key)
def test_legal_values_full_of_shell_characters_stay_one_word(local, key):
    values = {"acmeEmail": f"{local}@example.org", "signalJarS3Uri": f"s3://builds/{key}"}
    check_render_keeps_literal(evaluate_prod(**values), values)


# The secret Telegram api_hash lands in the bridge's YAML config: whatever it holds stays one literal.
secret_text = st.text(alphabet=HOSTILE_ALPHABET.replace("\n", ""), min_size=1, max_size=24).filter(
    lambda s: s.strip() == s and not re.fullmatch(r"[A-Za-z0-9.-]*", s))


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(api_hash=secret_text)
def test_a_hostile_secret_setting_stays_one_yaml_literal(api_hash):
    evaluation = evaluate_prod(telegramApiHash=api_hash)
    with tempfile.TemporaryDirectory(prefix="commstack-injection-") as tmp:
        files = rendered(evaluation, Path(tmp) / "render")
        assert yaml.safe_load(files["bridge-telegram/data/config.yaml"])["network"]["api_hash"] == api_hash
