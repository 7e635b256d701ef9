"""`render`: every deployed file lands on disk, parses, and no secret leaks."""

from __future__ import annotations

import base64
import gzip
import json
import stat
from pathlib import Path

import pulumi
import pulumi_aws as aws
import pulumi_docker as docker
import pytest
import yaml

from commstack.devtools import offline, render
from commstack.__main__ import main as cli
from components.common import generated_secret
from components.settings import SettingsError


def secret_values(evaluation: offline.Evaluation, config: dict | None = None) -> set[str]:
    """Every secret the providers generated in this evaluation (secret outputs that are not
    echoed inputs: passwords, keys, tokens), plus the config's secret values."""

    def leaves(value):
        if isinstance(value, dict):
            return [s for v in value.values() for s in leaves(v)]
        if isinstance(value, list):
            return [s for v in value for s in leaves(v)]
        return [value] if isinstance(value, str) else []

    found = {s for reg in evaluation.registrations for key, value in reg.outputs.items()
             if key not in reg.inputs and offline.is_secret(value) for s in leaves(offline.unwrap(value))}
    found.update(v for k, v in (config or {}).items() if k in offline.OFFLINE_SECRET_STANDINS)
    return {s for s in found if len(s) >= 8}


def all_strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *all_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in all_strings(v)]
    return [value] if isinstance(value, str) else []


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- writing files from registrations (a small program on the offline engine) -------------

CLOUD_INIT_SCRIPT = "#!/bin/sh\necho ready\n"
CLOUD_INIT_CONF = "[Service]\nRestart=on-failure\n"


@pulumi.runtime.test
def test_uploads_and_cloud_init_files_are_written_where_they_would_be_placed(recorded, tmp_path):
    holder = pulumi.ComponentResource("test:index:Holder", "holder")
    password = generated_secret("holder-password", holder)
    plain_container = docker.Container("element", image="img", uploads=[
        docker.ContainerUploadArgs(file="/app/config.json", content='{"brand": "Element"}')])
    container = docker.Container(
        "synapse", image="img", uploads=[
            docker.ContainerUploadArgs(file="/data/homeserver.yaml", content="server_name: example.org\n"),
            docker.ContainerUploadArgs(file="/data/secret.yaml", content=password.apply(lambda p: f"key: {p}\n")),
            docker.ContainerUploadArgs(file="/usr/local/bin/start", executable=True,
                                       content_base64=base64.b64encode(b"#!/bin/sh\nexec synapse\n").decode()),
        ])
    user_data = yaml.safe_dump({"write_files": [
        {"path": "/etc/signal/start.sh", "content": CLOUD_INIT_SCRIPT, "permissions": "0755"},
        {"path": "/etc/systemd/system/signal.service.d/override.conf", "encoding": "gz+b64",
         "content": base64.b64encode(gzip.compress(CLOUD_INIT_CONF.encode())).decode()},
        {"path": "/etc/signal/b64.txt", "encoding": "b64", "content": base64.b64encode(b"plain").decode()},
    ]})
    instance = aws.ec2.Instance("signal-server", ami="ami-1", instance_type="t3.large",
                                user_data="#cloud-config\n" + user_data)

    def check(args):
        secret = args[0]
        result = render.write_render(recorded, tmp_path / "out")
        out = result.out
        assert (out / "synapse/data/homeserver.yaml").read_text() == "server_name: example.org\n"
        assert yaml.safe_load((out / "synapse/data/secret.yaml").read_text()) == {"key": secret}
        assert (out / "synapse/usr/local/bin/start").read_bytes() == b"#!/bin/sh\nexec synapse\n"
        assert (out / "signal-server/user-data").read_text().startswith("#cloud-config\n")
        assert (out / "signal-server/etc/signal/start.sh").read_text() == CLOUD_INIT_SCRIPT
        assert (out / "signal-server/etc/systemd/system/signal.service.d/override.conf").read_text() == CLOUD_INIT_CONF
        assert (out / "signal-server/etc/signal/b64.txt").read_bytes() == b"plain"
        # One secret upload makes the container's whole upload list secret, so all its files are 0600.
        assert mode(out / "synapse/data/secret.yaml") == 0o600
        assert mode(out / "synapse/data/homeserver.yaml") == 0o600
        assert mode(out / "synapse/usr/local/bin/start") == 0o700
        assert mode(out / "element/app/config.json") == 0o644
        assert mode(out / "signal-server/etc/signal/start.sh") == 0o755
        assert mode(out / "signal-server/etc/signal/b64.txt") == 0o644
        assert {str(f.path) for f in result.secret_files} == {
            "synapse/data/secret.yaml", "synapse/data/homeserver.yaml", "synapse/usr/local/bin/start"}
        assert len(result.files) == 8 and result.resource_count == len(recorded.registrations)

        document = json.loads((out / render.RESOURCES_FILE).read_text())
        assert {r["urn"] for r in document["resources"]} == {r.urn for r in recorded.registrations}
        synapse, = [r for r in document["resources"] if r["name"] == "synapse"]
        assert synapse["inputs"]["uploads"] == "[secret]"
        assert secret not in json.dumps(document)

    return pulumi.Output.all(password, container.id, plain_container.id, instance.id).apply(check)


def test_a_non_render_directory_is_refused_and_an_earlier_render_replaced(tmp_path):
    evaluation = offline.Evaluation(stack="empty")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(render.RenderError, match="not an earlier render"):
        render.write_render(evaluation, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"

    out = tmp_path / "render"
    render.write_render(evaluation, out)
    (out / "stale").write_text("from an older render")
    render.write_render(evaluation, out)
    assert sorted(p.name for p in out.iterdir()) == [".gitignore", "resources.json"]
    assert mode(out) == 0o700
    assert (out / ".gitignore").read_text().splitlines()[-1] == "*"


def test_paths_escaping_the_render_directory_are_refused():
    with pytest.raises(render.RenderError):
        render._relative("/data/../../etc/passwd")
    assert str(render._relative("/data/homeserver.yaml")) == "data/homeserver.yaml"


def test_overrides_default_to_the_project_namespace():
    assert render.parse_overrides(["registration=token", "aws:region=eu-west-1", "bridges=[]"]) == {
        "commstack:registration": "token", "aws:region": "eu-west-1", "commstack:bridges": "[]"}
    with pytest.raises(render.RenderError, match="key=value"):
        render.parse_overrides(["registration"])


def test_stand_ins_only_for_missing_secret_keys():
    config, secret_keys, standins = render.offline_config(
        "prod", {**offline.stack_config("prod"), "commstack:telegramApiHash": "given-hash-0123456789"})
    assert standins == ["commstack:cloudflareApiToken", "commstack:signalTwilioApiKeySecret"]
    assert config["commstack:telegramApiHash"] == "given-hash-0123456789"
    assert set(secret_keys) == {"commstack:cloudflareApiToken", "commstack:telegramApiHash",
                                "commstack:signalTwilioApiKeySecret"}


def test_every_secret_the_stack_file_holds_encrypted_gets_a_stand_in(tmp_path):
    # After `pulumi config set --secret commstack:backupS3SecretAccessKey ...` the stack file
    # holds ciphertext the offline engine cannot read; render must still evaluate the stack.
    document = yaml.safe_load((offline.ROOT / "Pulumi.dev.yaml").read_text())
    document["config"].update({
        "commstack:backupTarget": "s3",
        "commstack:backupS3Endpoint": "https://s3.example.org",
        "commstack:backupS3Bucket": "backups",
        "commstack:backupS3AccessKeyId": {"secure": "v1:AAAA"},
        "commstack:backupS3SecretAccessKey": {"secure": "v1:BBBB"},
    })
    (tmp_path / "Pulumi.dev.yaml").write_text(yaml.safe_dump(document))
    config, secret_keys, standins = render.offline_config("dev", project_dir=tmp_path)
    assert {"commstack:backupS3AccessKeyId", "commstack:backupS3SecretAccessKey"} <= set(standins)
    assert config["commstack:backupS3SecretAccessKey"] == "offline-stand-in-backupS3SecretAccessKey"
    assert {"commstack:backupS3AccessKeyId", "commstack:backupS3SecretAccessKey"} <= set(secret_keys)
    assert "commstack:backupS3AccessKeyId" not in render.offline_config("dev")[2]


# -- whole stacks --------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["dev", "prod"])
def rendered(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"render-{request.param}")
    return render.render_stack(request.param, out)


def test_every_upload_and_user_data_file_exists(rendered):
    expected = set()
    for reg in rendered.evaluation.registrations:
        if reg.type == render.CONTAINER:
            container = reg.plain_inputs["name"]  # the docker name, not the Pulumi resource name
            expected |= {f"{container}/{u['file'].lstrip('/')}" for u in reg.plain_inputs.get("uploads") or []}
        elif reg.type == render.INSTANCE and {"userData", "userDataBase64"} & set(reg.inputs):
            expected.add(f"{reg.name}/user-data")
    assert expected, "the stack places no files"
    assert expected <= {str(f.path) for f in rendered.files}
    assert all((rendered.out / f.path).is_file() for f in rendered.files)


def test_container_files_sit_under_the_docker_container_name(rendered):
    synapse, = [r for r in rendered.evaluation.of_type(render.CONTAINER) if r.plain_inputs["name"] == "synapse"]
    assert synapse.name != "synapse"  # the Pulumi name derives from the component's
    assert (rendered.out / "synapse" / "data" / "homeserver.yaml").is_file()
    assert not (rendered.out / synapse.name).exists()
    assert {f.resource for f in rendered.files if f.path.parts[0] == "synapse"} == {"synapse"}


def test_structured_files_parse(rendered):
    parsed = 0
    for f in rendered.files:
        text = (rendered.out / f.path).read_text()
        if f.path.suffix in (".yaml", ".yml") or f.path.name == "user-data":
            assert yaml.safe_load(text) is not None, f.path
            parsed += 1
        elif f.path.suffix == ".json":
            json.loads(text)
            parsed += 1
    assert parsed > 0


def test_homeserver_yaml_is_rendered_for_this_server_name(rendered):
    homeservers = [f for f in rendered.files if f.path.name == "homeserver.yaml"]
    assert len(homeservers) == 1
    config = yaml.safe_load((rendered.out / homeservers[0].path).read_text())
    domain = offline.stack_config(rendered.evaluation.stack)["commstack:domain"]
    assert config["server_name"] == domain
    assert homeservers[0].secret and mode(rendered.out / homeservers[0].path) == 0o600


@pytest.mark.parametrize("rendered", ["prod"], indirect=True)
def test_prod_renders_the_signal_instance_user_data(rendered):
    instances = rendered.evaluation.of_type(render.INSTANCE)
    assert len(instances) == 1
    user_data = yaml.safe_load((rendered.out / instances[0].name / "user-data").read_text())
    written = {entry["path"] for entry in user_data.get("write_files") or []}
    assert written and all((rendered.out / instances[0].name / p.lstrip("/")).is_file() for p in written)


def test_resources_json_lists_every_registration_without_secret_values(rendered):
    document = json.loads((rendered.out / render.RESOURCES_FILE).read_text())
    registrations = rendered.evaluation.registrations
    assert sorted(r["urn"] for r in document["resources"]) == sorted(r.urn for r in registrations)
    by_urn = {r.urn: r for r in registrations}
    for entry in document["resources"]:
        reg = by_urn[entry["urn"]]
        assert (entry["type"], entry["name"], entry["parent"], entry["protect"]) == (
            reg.type, reg.name, reg.parent, bool(reg.protect))
        assert entry["dependencies"] == sorted(reg.dependencies)
    config, _, _ = render.offline_config(rendered.evaluation.stack)
    secrets = secret_values(rendered.evaluation, config)
    assert secrets
    strings = all_strings(document)
    leaked = [s for s in secrets if any(s in text for text in strings)]
    assert leaked == []


def test_files_holding_a_secret_are_marked_and_0600(rendered):
    config, _, _ = render.offline_config(rendered.evaluation.stack)
    secrets = secret_values(rendered.evaluation, config)
    for f in rendered.files:
        content = (rendered.out / f.path).read_text(errors="replace")
        if any(s in content for s in secrets):
            assert f.secret, f"{f.path} holds a secret but its content was not a secret Output"
        if f.secret:
            assert mode(rendered.out / f.path) & 0o077 == 0, f.path


def test_two_renders_have_different_secrets(tmp_path):
    first = render.render_stack("dev", tmp_path / "a")
    second = render.render_stack("dev", tmp_path / "b")
    first_secrets, second_secrets = secret_values(first.evaluation), secret_values(second.evaluation)
    assert first_secrets and second_secrets and not first_secrets & second_secrets
    assert [f.path for f in first.files] == [f.path for f in second.files]
    assert any((first.out / f.path).read_bytes() != (second.out / f.path).read_bytes() for f in first.secret_files)


# -- the command ---------------------------------------------------------------------------


def test_command_prints_a_summary_and_no_secret(tmp_path, capsys, monkeypatch):
    evaluations = []
    real_evaluate = offline.evaluate

    def spy(*args, **kwargs):
        evaluations.append(real_evaluate(*args, **kwargs))
        return evaluations[-1]

    monkeypatch.setattr(offline, "evaluate", spy)
    assert cli(["render", "--stack", "prod", "--out", str(tmp_path / "prod"), "--set", "registration=closed"]) == 0
    out, err = capsys.readouterr()
    evaluation, = evaluations
    config, _, standins = render.offline_config("prod")
    secrets = secret_values(evaluation, config)
    assert secrets and not [s for s in secrets if s in out or s in err]
    assert f"{len(evaluation.registrations)} resources" in out
    assert "commstack:cloudflareApiToken" in err and "commstack:telegramApiHash" in err
    assert standins == ["commstack:cloudflareApiToken", "commstack:signalTwilioApiKeySecret", "commstack:telegramApiHash"]
    assert (tmp_path / "prod" / render.RESOURCES_FILE).is_file()


def test_command_reports_bad_settings_without_a_traceback(tmp_path, capsys):
    assert cli(["render", "--stack", "dev", "--out", str(tmp_path / "x"), "--set", "publicIp=not-an-ip"]) == 2
    _, err = capsys.readouterr()
    assert "commstack:publicIp" in err and "Traceback" not in err


def test_command_for_an_unknown_stack_fails_clearly(tmp_path, capsys):
    assert cli(["render", "--stack", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "Pulumi.nope.yaml" in capsys.readouterr().err


def test_settings_errors_propagate_from_render_stack(tmp_path):
    with pytest.raises(SettingsError):
        render.render_stack("dev", tmp_path, {**offline.stack_config("dev"), "commstack:tls": "bogus"})


# -- redacted renders (review and pull-request diffs) --------------------------------------


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_redacted_renders_are_identical_and_hold_no_secret_value(tmp_path, capsys):
    assert cli(["render", "--stack", "prod", "--out", str(tmp_path / "a"), "--redact"]) == 0
    assert "is redacted" in capsys.readouterr().out
    second = render.render_stack("prod", tmp_path / "b", redacted=True)
    first_files, second_files = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert len(first_files) > 20 and first_files == second_files

    config, _, _ = render.offline_config("prod")
    secrets = secret_values(second.evaluation, config)
    assert secrets
    leaked = [path for path, data in second_files.items() for s in secrets if s.encode() in data]
    assert leaked == []
    assert not [path for path, data in second_files.items() if str(offline.ROOT).encode() in data]

    homeserver = yaml.safe_load(second_files["synapse/data/homeserver.yaml"])
    assert homeserver["registration_shared_secret"] == "<secret:matrix-synapse-registration-shared-secret.result>"
    bridge = yaml.safe_load(second_files["bridge-telegram/data/config.yaml"])
    assert "<secret:commstack:telegramApiHash>" in json.dumps(bridge)


def test_an_unredacted_render_still_writes_fresh_real_values_0600(tmp_path):
    result = render.render_stack("dev", tmp_path / "real")
    path = tmp_path / "real/synapse/data/homeserver.yaml"
    shared = yaml.safe_load(path.read_text())["registration_shared_secret"]
    generated = offline.unwrap(result.evaluation.named("matrix-synapse-registration-shared-secret").outputs["result"])
    assert shared == generated and len(shared) >= 32 and "<secret:" not in path.read_text()
    assert mode(path) == 0o600


def test_redaction_replaces_longest_values_first_and_json_escaped_forms():
    markers = {"abcdefgh": "[secret:short]", "abcdefgh-and-more": "[secret:long]", "line1\\nline2": "[secret:pem]"}
    assert render.redact(b"x abcdefgh-and-more y abcdefgh line1\\nline2", markers) == (
        b"x [secret:long] y [secret:short] [secret:pem]")


def test_render_diff_shows_only_what_the_change_does(tmp_path, capsys):
    """A throwaway repository with the project's program: committed as the base, then one setting changed."""
    import shutil
    import subprocess

    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("__main__.py", "Pulumi.yaml", "Pulumi.dev.yaml"):
        shutil.copy(offline.ROOT / name, repo / name)
    for name in ("commstack", "components", "configs"):
        shutil.copytree(offline.ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-C", str(repo), "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "base"], check=True)

    from commstack.devtools import render_diff

    assert render_diff.render_diff("HEAD", ["dev"], repo) == ""
    stack_file = repo / "Pulumi.dev.yaml"
    stack_file.write_text(stack_file.read_text().replace("commstack:registration: closed", "commstack:registration: token"))
    diff = render_diff.render_diff("HEAD", ["dev"], repo)
    changed_files = [line.split()[-1] for line in diff.splitlines() if line.startswith("diff --git")]
    assert changed_files == ["b/head/dev/synapse/data/homeserver.yaml"]
    changes = sorted(line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---"))
    assert changes == ["+enable_registration: true", "+registration_requires_token: true",
                       "-enable_registration: false", "-registration_requires_token: false"]

    assert cli(["render-diff", "--base", "no-such-ref", "--stack", "dev"]) == 2
    assert "no-such-ref" in capsys.readouterr().err
