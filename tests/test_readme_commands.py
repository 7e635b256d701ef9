"""Every command the README and docs/ show, pasted in the order shown into one shell on a fresh
machine (the README first, then each docs/ page in the order the README links them, then any other
page by name): a sandbox copy of the project (tests/sandbox.py) where the Pulumi CLI, Docker,
curl and package downloads are stand-ins that behave like the real ones at their edges
(a stack must exist, secrets need the passphrase, `config set` writes the stack file).
Our own commands run for real on the offline engine. So the README cannot drift: a
command that would fail when pasted fails here.

What the test changes, and why:
* `<placeholder>` values become dummy values (a reader types their own);
* `/tmp/` paths land in the test's temporary directory;
* `./scripts/test` is a recorder (it is the command running this test; CI runs it for real);
* `bench` gets `--repeat 1 --skip-harness` (the full run boots the loopback harness;
  tests/commstack/devtools/test_bench.py covers it);
* each command's stdin is a file holding the test password (what a reader types at a prompt);
* a `python -m pytest FILE…` line (the session-only tests that need jars built outside the
  clone) only checks that its test files exist: this suite runs them itself, and they skip here.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.sandbox import ROOT, Sandbox

PASSWORD = "correct horse battery staple"
PLACEHOLDER = re.compile(r"<([a-z_][a-z_ ]*)>")
# Commands that may fail because nothing is deployed behind the stand-ins (no homeserver answers
# on the stack's addresses), and what they must print then.
MAY_FIND_NOTHING_DEPLOYED = {"commstack doctor": "checks:"}


def documents(root: Path = ROOT) -> list[Path]:
    """README.md, then the docs/ pages it links (in that order), then any other page, by name."""
    readme = (root / "README.md").read_text()
    linked = list(dict.fromkeys(re.findall(r"\]\((docs/[\w-]+\.md)(?:#[\w-]*)?\)", readme)))
    pages = [root / name for name in linked if (root / name).is_file()]
    pages += [page for page in sorted((root / "docs").glob("*.md")) if page not in pages]
    return [root / "README.md", *pages]


def documentation(root: Path = ROOT) -> str:
    """The README and every docs/ page, in reading order."""
    return "\n".join(page.read_text() for page in documents(root))


def readme_commands(readme: str) -> list[str]:
    """Each command line of each ```bash block, in order (continuation lines joined)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.S):
        pending = ""
        for line in block.splitlines():
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            line = pending + line
            pending = ""
            if line.strip() and not line.strip().startswith("#"):
                commands.append(line.strip())
    return commands


def pasted(command: str, tmp: str) -> str:
    command = PLACEHOLDER.sub(lambda m: f"sandbox-{re.sub('[_ ]', '-', m.group(1))}-0123456789abcdef", command)
    command = command.replace("/tmp/", f"{tmp}/")
    if " -m pytest " in command:
        files = [word for word in command.split() if word.endswith(".py")]
        return " && ".join(f"test -f {f}" for f in files) or "false"
    return re.sub(r"((?:-m |scripts/)commstack bench)", r"\1 --repeat 1 --skip-harness", command)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("readme")
    box = Sandbox(tmp)
    (box.root / "scripts" / "test").write_text('#!/bin/sh\necho "{\\"cmd\\": \\"scripts/test\\", \\"args\\": \\"$*\\"}" '
                                                '>> "$SANDBOX_LOG"\n')
    box.git_init()
    # What a deployed dev stack would answer, on addresses where nothing listens (doctor finds
    # nothing deployed and says so, as it would before `pulumi up` finished).
    box.outputs = {"serverName": "127.0.0.1", "homeserverUrl": "https://127.0.0.1:9/", "publicIp": "127.0.0.1",
                   "dockerHost": "",
                   "turnUris": [], "registrationSharedSecret": "sandbox-shared-secret-0123456789",
                   "createAdminCommand": "./scripts/commstack create-admin --stack dev --user admin",
                   "tlsCertificate": self_signed_certificate("commstack.localhost")}
    expiry = int((time.time() + 7 * 86400) * 1000)
    answer = json.dumps({"step": "new", "status": 200,
                         "body": {"token": "sandboxTOKEN123", "uses_allowed": 1, "expiry_time": expiry}})
    commands = readme_commands(documentation(box.root))
    (tmp / "typed").write_text(f"{PASSWORD}\n" * 3)
    script = ["set -u"]
    for index, command in enumerate(commands):
        line = re.sub(r"\s+#\s.*$", "", pasted(command, str(tmp)))  # the comment, so the redirect is not in it
        script += [f'{line} < "{tmp}/typed"', f'echo "::rc {index} $?"']
    (tmp / "pasted.sh").write_text("\n".join(script) + "\n")
    done = subprocess.run(["bash", str(tmp / "pasted.sh")], cwd=box.root, env=box.env(SANDBOX_DOCKER_EXEC_ANSWER=answer),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900,
                          start_new_session=True)  # no terminal: password prompts read stdin
    codes = {int(i): int(rc) for i, rc in re.findall(r"^::rc (\d+) (\d+)$", done.stdout, flags=re.M)}
    return box, commands, codes, done


def self_signed_certificate(name: str) -> str:
    """A PEM certificate for `name`, as a tls: self-signed stack's tlsCertificate output holds one."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now)
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
                   .sign(key, hashes.SHA256()))
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def test_documents_are_the_readme_then_its_links_then_the_rest(tmp_path):
    (tmp_path / "docs").mkdir()
    for name in ("a.md", "b.md", "c.md"):
        (tmp_path / "docs" / name).write_text(name)
    (tmp_path / "README.md").write_text("[c](docs/c.md#x) and [a](docs/a.md), [c again](docs/c.md), [gone](docs/gone.md)")
    assert [p.relative_to(tmp_path).as_posix() for p in documents(tmp_path)] == [
        "README.md", "docs/c.md", "docs/a.md", "docs/b.md"]


def test_the_readme_shows_the_commands_a_newcomer_needs():
    readme = readme_commands((ROOT / "README.md").read_text())
    for needed in ("./scripts/up dev", "./scripts/test", "export PULUMI_CONFIG_PASSPHRASE_FILE=",
                   "create-admin --stack dev", "doctor --stack dev"):
        assert any(needed in command for command in readme), needed
    everywhere = "\n".join(readme_commands(documentation()))
    for needed in ("registration-token --stack dev", "render --stack", "render-diff --base", "doctor --server-name"):
        assert needed in everywhere, needed


def test_our_cli_is_run_one_way():
    """Every command line runs our CLI with ./scripts/commstack (the project's venv), never a bare
    `python -m commstack` that the system Python would run."""
    bare = [c for c in readme_commands(documentation()) if re.search(r"(^|\s)(python3?|\.venv/bin/python) -m commstack", c)]
    assert bare == []


def test_every_command_runs_when_pasted_in_order(session):
    box, commands, codes, done = session
    assert len(codes) == len(commands), done.stdout[-3000:] + done.stderr[-3000:]
    failed = []
    for index, command in enumerate(commands):
        allowed = next((m for m in MAY_FIND_NOTHING_DEPLOYED if m in command), None)
        if codes[index] != 0 and not (allowed and codes[index] == 1):
            failed.append(f"{command!r} exited {codes[index]}")
    assert not failed, "\n".join(failed) + "\n--- stderr ---\n" + done.stderr[-4000:]
    assert "Traceback" not in done.stdout + done.stderr


def test_nothing_deployed_is_reported_as_such(session):
    _, _, _, done = session
    assert MAY_FIND_NOTHING_DEPLOYED["commstack doctor"] in done.stdout


def test_pulumi_got_the_passphrase_and_the_stacks_it_needed(session):
    box, _, _, _ = session
    pulumi = [e for e in box.entries() if e["cmd"] == "pulumi"]
    passfile = str(box.home / ".config" / "commstack" / "passphrase")
    secret_calls = [e for e in pulumi if "--secret" in e["args"] or e["args"][:1] in (["up"], ["preview"])]
    assert secret_calls and all(e["passphrase_file"] == passfile for e in secret_calls)
    config = (box.root / "Pulumi.prod.yaml").read_text()
    assert "commstack:cloudflareApiToken:\n    secure:" in config and "commstack:telegramApiHash:\n    secure:" in config
    assert ["preview", "--policy-pack", "policy"] in [e["args"] for e in pulumi if e["args"][:1] == ["preview"]] or any(
        e["args"][:1] == ["preview"] and "policy" in e["args"] for e in pulumi)


def test_the_issued_registration_token_is_printed(session):
    box, _, _, done = session
    assert "\nsandboxTOKEN123\n" in done.stdout
    exec_calls = [args for args in box.calls("docker") if "exec" in args]
    assert exec_calls and PASSWORD not in json.dumps(exec_calls)


def test_the_test_command_and_the_policy_venv_were_reached(session):
    box, commands, _, _ = session
    # Once per README line that runs it, and `bench --test-command`/`--cold` run it too.
    direct = [c for c in commands if c.split()[0] == "./scripts/test"]
    assert direct and len(box.calls("scripts/test")) >= len(direct)
    assert any("policy/requirements.txt" in args for args in box.calls("pip"))
