"""configs/signal/signal_secrets.py: first boot generates only what is missing, never twice;
assemble writes a complete bundle and fills the config patches."""

import json
import os
import stat
import subprocess
import sys

import yaml

from components.signal.host import secrets_manifest
from components.signal.version import SIGNAL_CONFIGS, load_version

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


def _setup(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    java = bin_dir / "java"
    java.write_text(FAKE_JAVA)
    java.chmod(java.stat().st_mode | stat.S_IEXEC)
    paths = {"jar": "/opt/x.jar", "generic_zk_source": "GenericZkParams.java", "bundle": str(tmp_path / "bundle.yml"),
             "config_in": str(tmp_path / "config.base.yml"), "config_out": str(tmp_path / "config.yml"),
             "tls_key": str(tmp_path / "key.pem")}
    program = {f"bundle/{e.key}": f"program-{e.key}" for e in VERSION.bundle_from("program")}
    program["tls/registration-key"] = "PEM"
    (tmp_path / "program.json").write_text(json.dumps(program))
    manifest = secrets_manifest(VERSION, store=f"dir:{tmp_path / 'store'}", prefix="", paths=paths,
                                program_values=str(tmp_path / "program.json"))
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "config.base.yml").write_text(yaml.safe_dump({"zkConfig": {"serverPublic": None}, "logging": {}}))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(tmp_path / "calls")}
    return paths, env


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
