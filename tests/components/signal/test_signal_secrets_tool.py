"""configs/signal/signal_secrets.py: first boot generates only what is missing, never twice;
assemble writes a complete bundle and fills the config patches."""

import importlib.util
import json
import os
import stat
import subprocess
import sys

import boto3
import moto
import pytest
import yaml

from components.signal.host import secrets_manifest
from components.signal.version import SIGNAL_CONFIGS, get_dotted, load_version
from tests.components.signal.conftest import missing_key_paths

VERSION = load_version("v9.81.0")

FAKE_JAVA = """#!/bin/sh
# Stands in for the server jar's commands; counts calls so the test sees reuse.
echo "$@" >> "$CALLS"
case "$*" in
  *zkparams*) echo "Public: ZKPUB$$"; echo "Private: ZKPRIV$$" ;;
  *GenericZkParams*) echo "Public: GENPUB$$"; echo "Private: GENPRIV$$" ;;
  *"certificate --ca"*) echo "Public key : UDROOT$$"; echo "Private key: UDCAKEY$$" ;;
  *certificate*) echo "Certificate: UDCERT$$"; echo "Private key: UDKEY$$" ;;
esac
"""


def _program_values() -> dict:
    program = {f"bundle/{e.key}": f"program-{e.key}" for e in VERSION.bundle_from("program")}
    program.update({f"config/{path}": f"program-{path}" for path in VERSION.program_config_values})
    program["tls/registration-key"] = "PEM"
    return program


def _fake_java(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    java = bin_dir / "java"
    java.write_text(FAKE_JAVA)
    java.chmod(java.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(tmp_path / "calls")}


def _paths(tmp_path) -> dict:
    return {"jar": "/opt/x.jar", "generic_zk_source": "GenericZkParams.java", "bundle": str(tmp_path / "bundle.yml"),
            "config_in": str(tmp_path / "config.base.yml"), "config_out": str(tmp_path / "config.yml"),
            "tls_key": str(tmp_path / "key.pem")}


def _setup(tmp_path, base_config=None, program=None):
    paths = _paths(tmp_path)
    (tmp_path / "program.json").write_text(json.dumps(_program_values() if program is None else program))
    manifest = secrets_manifest(VERSION, store=f"dir:{tmp_path / 'store'}", prefix="", paths=paths,
                                program_values=str(tmp_path / "program.json"))
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    base = base_config or yaml.safe_dump({"zkConfig": {"serverPublic": None}, "logging": {}})
    (tmp_path / "config.base.yml").write_text(base)
    return paths, {**os.environ, **_fake_java(tmp_path)}


def _run(tmp_path, env, command):
    subprocess.run([sys.executable, str(SIGNAL_CONFIGS / "signal_secrets.py"), command, str(tmp_path / "manifest.json")],
                   check=True, env=env, capture_output=True, text=True)


def test_first_boot_then_assemble_gives_a_complete_bundle_and_reuses_on_later_boots(tmp_path):
    paths, env = _setup(tmp_path)
    _run(tmp_path, env, "first-boot")
    calls_after_first = (tmp_path / "calls").read_text().splitlines()
    assert len(calls_after_first) == 4  # zkparams, generic, certificate --ca, certificate --key
    _run(tmp_path, env, "first-boot")  # a second boot (or a replacement sharing the store)
    assert (tmp_path / "calls").read_text().splitlines() == calls_after_first
    _run(tmp_path, env, "assemble")
    bundle = yaml.safe_load(open(paths["bundle"]))
    assert set(bundle) == {e.key for e in VERSION.bundle}
    assert bundle["remoteConfig.authorizedTokens"] == ["program-remoteConfig.authorizedTokens"]
    assert bundle["zkConfig.serverSecret"].startswith("ZKPRIV")
    assert bundle["unidentifiedDelivery.certificate"].startswith("UDCERT")
    assert bundle["apn.signingKey"].startswith("-----BEGIN PRIVATE KEY-----")
    assert json.loads(bundle["fcm.credentials"])["type"] == "service_account"
    assert bundle["stripe.apiKey"] == "unset"
    assert stat.S_IMODE(os.stat(paths["bundle"]).st_mode) == 0o600
    config = yaml.safe_load(open(paths["config_out"]))
    public = (tmp_path / "store" / "public" / "zkServerPublic").read_text()
    assert config["zkConfig"]["serverPublic"] == public and public.startswith("ZKPUB")
    assert (tmp_path / "store" / "public" / "udTrustRoot").read_text().startswith("UDROOT")
    assert open(paths["tls_key"]).read() == "PEM"
    assert config["dynamoDbTables"]["issuedReceipts"]["generator"] == "program-dynamoDbTables.issuedReceipts.generator"
    assert stat.S_IMODE(os.stat(paths["config_out"]).st_mode) == 0o600


def test_assembled_dev_config_has_every_sample_key_path_filled(tmp_path, dev_evaluation):
    uploads = {u["file"]: u["content"] for u in dev_evaluation.named("signal-local-server").plain_inputs["uploads"]}
    paths, env = _setup(tmp_path, base_config=uploads["/etc/signal/config.base.yml"])
    _run(tmp_path, env, "first-boot")
    _run(tmp_path, env, "assemble")
    config = yaml.safe_load(open(paths["config_out"]))
    assert missing_key_paths(config, VERSION.required_key_paths) == []
    assert not [p for p in VERSION["config_patches"] if get_dotted(config, p) is None]


def test_assemble_refuses_a_config_patch_it_cannot_fill(tmp_path):
    program = _program_values()
    del program["config/dynamoDbTables.issuedReceipts.generator"]
    paths, env = _setup(tmp_path, program=program)
    _run(tmp_path, env, "first-boot")
    with pytest.raises(subprocess.CalledProcessError) as failed:
        _run(tmp_path, env, "assemble")
    assert "missing config/dynamoDbTables.issuedReceipts.generator" in failed.value.stderr
    assert not os.path.exists(paths["config_out"])


def test_ssm_store_uses_the_manifests_region_when_nothing_else_sets_one(tmp_path, monkeypatch):
    # As on the instance: no region in the environment or in an AWS config file.
    for variable in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    for name, value in _fake_java(tmp_path).items():
        monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location("signal_secrets", SIGNAL_CONFIGS / "signal_secrets.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    prefix = "/commstack/prod/signal"
    manifest = secrets_manifest(VERSION, store="ssm", prefix=prefix, paths=_paths(tmp_path), region="eu-central-1")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with moto.mock_aws():
        tool.main(["signal_secrets.py", "first-boot", str(tmp_path / "manifest.json")])
        written = boto3.client("ssm", region_name="eu-central-1").get_parameter(
            Name=f"{prefix}/public/udTrustRoot")["Parameter"]
        assert written["Value"].startswith("UDROOT") and written["Type"] == "String"
        other = boto3.client("ssm", region_name="us-east-1").get_parameters_by_path(Path=f"{prefix}/public")
        assert other["Parameters"] == []


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to the registration-service user needs root, as on the instance")
def _twilio_setup(tmp_path, **manifest_options):
    """A Twilio stack's manifest (registration-service's secrets file included), first boot and assemble run."""
    from components.signal.host import TWILIO_SECRET_PARAMETER, registration_secret_sources
    from components.signal.registration import TwilioVerify, Verification

    program = {**_program_values(), TWILIO_SECRET_PARAMETER: "twilio-secret-value"}
    paths, env = _setup(tmp_path, program=program)
    paths["registration_secrets"] = str(tmp_path / "registration" / "secrets.yml")
    verification = Verification(twilio=TwilioVerify("AC" + "1" * 32, "SK" + "2" * 32, "VA" + "3" * 32, "AbCdEfGhIjK"))
    manifest = secrets_manifest(VERSION, store=f"dir:{tmp_path / 'store'}", prefix="", paths=paths,
                                program_values=str(tmp_path / "program.json"),
                                registration_secrets=registration_secret_sources(verification), **manifest_options)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    _run(tmp_path, env, "first-boot")
    _run(tmp_path, env, "assemble")
    return paths, env, program


def test_assemble_writes_registration_services_secrets_file_for_its_user_only(tmp_path):
    from components.signal.host import TWILIO_SECRET_PARAMETER
    from components.signal.registration import RUN_UID

    paths, env, program = _twilio_setup(tmp_path)
    written = os.stat(paths["registration_secrets"])
    assert yaml.safe_load(open(paths["registration_secrets"])) == {"twilio": {"api-key-secret": "twilio-secret-value"}}
    assert (stat.S_IMODE(written.st_mode), written.st_uid, written.st_gid) == (0o600, RUN_UID, RUN_UID)
    # Without its SSM parameter the service would start without credentials: assemble refuses instead.
    del program[TWILIO_SECRET_PARAMETER]
    (tmp_path / "program.json").write_text(json.dumps(program))
    with pytest.raises(subprocess.CalledProcessError) as failed:
        _run(tmp_path, env, "assemble")
    assert f"missing {TWILIO_SECRET_PARAMETER}" in failed.value.stderr


def test_recaptcha_gets_a_well_formed_credential_not_the_samples_empty_object(tmp_path, dev_evaluation):
    # Signal-Server refused "{ }" at startup: RecaptchaClient builds GoogleCredentials from it ("'type' field not
    # specified", tests/integration/test_signal_jvm.py). assemble fills both with the stand-in service account.
    uploads = {u["file"]: u["content"] for u in dev_evaluation.named("signal-local-server").plain_inputs["uploads"]}
    paths, env = _setup(tmp_path, base_config=uploads["/etc/signal/config.base.yml"])
    _run(tmp_path, env, "first-boot")
    _run(tmp_path, env, "assemble")
    recaptcha = yaml.safe_load(open(paths["config_out"]))["recaptcha"]
    for key in ("credentialConfigurationJson", "secondaryCredentialConfigurationJson"):
        credential = json.loads(recaptcha[key])
        assert credential["type"] == "service_account" and "BEGIN PRIVATE KEY" in credential["private_key"]


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root (as on the instance)")
def test_assemble_gives_the_server_user_its_two_files_and_nothing_else(tmp_path):
    """What replaced signal-server.service's `chown -R signal:signal /etc/signal`, which re-owned nginx's TLS key
    and registration-service's secrets at every start."""
    import pwd

    from components.signal.registration import RUN_UID

    server = pwd.getpwnam("nobody")
    paths, _, _ = _twilio_setup(tmp_path, server_user="nobody")
    owners = {key: (os.stat(paths[key]).st_uid, stat.S_IMODE(os.stat(paths[key]).st_mode))
              for key in ("bundle", "config_out", "tls_key", "registration_secrets")}
    assert owners == {"bundle": (server.pw_uid, 0o600), "config_out": (server.pw_uid, 0o600),
                      "tls_key": (os.geteuid(), 0o600), "registration_secrets": (RUN_UID, 0o600)}
