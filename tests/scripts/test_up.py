"""The quick-start script: the virtualenv first, then every missing prerequisite in one run; the Pulumi
login, the passphrase and the hosts-file line as a newcomer needs them (each run in a sandbox copy of
the project, tests/sandbox.py, so no real virtualenv is made or changed)."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.sandbox import Sandbox

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ["bash", "sh", "sed", "tr", "dirname", "cat", "mkdir", "env", "head", "chmod"]


def fake_bin(tmp_path: Path, box: Sandbox, scripts: dict[str, str]) -> Path:
    """A PATH with only basic tools, the sandbox's python3 (whose `-m venv` makes a stand-in venv),
    plus the given fake commands."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        os.symlink(shutil.which(tool), bin_dir / tool)
    os.symlink(box.bin / "python3", bin_dir / "python3")
    for name, body in scripts.items():
        path = bin_dir / name
        if path.is_symlink():
            path.unlink()
        path.write_text(f"#!/bin/bash\n{body}\n")
        path.chmod(0o755)
    return bin_dir


def run_up(tmp_path: Path, scripts: dict[str, str]) -> tuple[Sandbox, dict, subprocess.CompletedProcess]:
    """./scripts/up dev on a fresh clone (no .venv yet) with only the given commands on PATH."""
    (tmp_path / "box").mkdir()
    box = Sandbox(tmp_path / "box")
    shutil.rmtree(box.root / ".venv")
    env = {"PATH": str(fake_bin(tmp_path, box, scripts)), "HOME": str(box.home), "SANDBOX_LOG": str(box.log)}
    return box, env, subprocess.run(["bash", "scripts/up", "dev"], cwd=box.root, env=env, capture_output=True,
                                    text=True, timeout=60)


def test_missing_pulumi_cli_that_cannot_be_installed_stops_with_install_hint(tmp_path):
    _, _, result = run_up(tmp_path, {"curl": "exit 6", "docker": "exit 0"})
    assert result.returncode == 1
    assert "could not install the Pulumi CLI" in result.stderr
    assert "pulumi.com/docs/iac/download-install" in result.stderr
    assert "error: 1 prerequisite(s) missing" in result.stderr


def test_every_missing_prerequisite_is_reported_in_one_run(tmp_path):
    _, _, result = run_up(tmp_path, {"curl": "exit 6"})  # neither the Pulumi CLI nor Docker
    assert result.returncode == 1
    assert "error: 2 prerequisite(s) missing" in result.stderr
    assert "could not install the Pulumi CLI" in result.stderr and "no Docker client found" in result.stderr
    assert "Then run ./scripts/up dev again." in result.stderr


def test_an_old_python_is_reported_with_the_rest(tmp_path):
    _, _, result = run_up(tmp_path, {"curl": "exit 6", "python3": '[ "$1" = -V ] && echo "Python 3.9.2"; exit 1'})
    assert "error: 3 prerequisite(s) missing" in result.stderr
    assert "Python 3.11+ is needed, Python 3.9.2 is installed" in result.stderr


def sandbox_up(tmp_path, *args: str, **env: str):
    box = Sandbox(tmp_path)
    return box, subprocess.run(["bash", "scripts/up", "dev", *args], cwd=box.root, env=box.env(**env),
                               capture_output=True, text=True, timeout=120)


def test_a_fresh_machine_gets_the_local_backend_and_a_passphrase_every_pulumi_call_finds(tmp_path):
    box, result = sandbox_up(tmp_path)
    assert result.returncode == 0, result.stderr
    pulumi = box.calls("pulumi")
    assert ["login", "--local"] in pulumi
    assert ["stack", "init", "dev"] in pulumi and ["up", "--stack", "dev"] in pulumi
    # A stack this creates names its volumes after itself (commstack:volumeNames).
    assert ["config", "set", "--stack", "dev", "commstack:volumeNames", "stack"] in pulumi
    assert "commstack:volumeNames: stack" in (box.root / "Pulumi.dev.yaml").read_text()
    passfile = box.home / ".config" / "commstack" / "passphrase"
    assert passfile.stat().st_mode & 0o777 == 0o600 and len(passfile.read_text().strip()) >= 32
    assert passfile.read_text().strip() not in result.stdout + result.stderr
    up = [e for e in box.entries() if e["cmd"] == "pulumi" and e["args"][:1] == ["up"]]
    assert up[0]["passphrase_file"] == str(passfile)
    # What a plain pulumi command in another shell needs, said once at the end.
    assert result.stdout.strip().splitlines()[-1] == f"For plain pulumi commands in another shell: export PULUMI_CONFIG_PASSPHRASE_FILE={passfile}"
    assert "warning: you are logged in" not in result.stdout


def test_an_existing_stack_keeps_its_volume_names(tmp_path):
    """A stack deployed before commstack:volumeNames existed keeps the unscoped names its volumes have."""
    from tests.sandbox import Sandbox

    box = Sandbox(tmp_path)
    box.set_pulumi_state(backend="file://~", stacks=["dev"], current="dev")
    result = subprocess.run(["bash", "scripts/up", "dev"], cwd=box.root, env=box.env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    pulumi = box.calls("pulumi")
    assert ["stack", "select", "dev"] in pulumi and ["up", "--stack", "dev"] in pulumi
    assert not [c for c in pulumi if c[:2] in (["stack", "init"], ["config", "set"])], pulumi
    assert "volumeNames" not in (box.root / "Pulumi.dev.yaml").read_text()


def test_an_existing_login_elsewhere_is_kept_and_said_clearly(tmp_path):
    box = Sandbox(tmp_path)
    box.set_pulumi_state(backend="https://api.pulumi.com")
    result = subprocess.run(["bash", "scripts/up", "dev"], cwd=box.root, env=box.env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert ["login", "--local"] not in box.calls("pulumi")
    assert "warning: you are logged in to the Pulumi backend https://api.pulumi.com, not the local one" in result.stdout
    assert "pulumi logout && pulumi login --local" in result.stdout


def test_a_passphrase_of_your_own_is_used_and_none_is_generated(tmp_path):
    box, result = sandbox_up(tmp_path, PULUMI_CONFIG_PASSPHRASE="my own passphrase")
    assert result.returncode == 0, result.stderr
    assert not (box.home / ".config" / "commstack" / "passphrase").exists()
    assert "export PULUMI_CONFIG_PASSPHRASE_FILE" not in result.stdout


def test_the_hosts_file_line_appears_exactly_when_localhost_names_do_not_resolve(tmp_path):
    from commstack.devtools import localnames, offline

    box, result = sandbox_up(tmp_path)
    names = localnames.stack_hostnames(offline.stack_config("dev"))
    line = localnames.hosts_line(names)
    if line is None:
        assert "/etc/hosts" not in result.stdout
    else:
        assert f"  {line}\n" in result.stdout and "sudo tee -a /etc/hosts" in result.stdout


def test_hosts_line_lists_every_unresolved_local_name():
    from commstack.devtools import localnames

    names = localnames.stack_hostnames({"commstack:domain": "commstack.localhost", "commstack:signal": "true",
                                        "commstack:elementSubdomain": "web"})
    assert names[:4] == ["commstack.localhost", "matrix.commstack.localhost", "web.commstack.localhost",
                         "turn.commstack.localhost"]
    assert "chat.commstack.localhost" in names
    assert localnames.hosts_line(names, resolve=lambda host: False) == "127.0.0.1 " + " ".join(names)
    assert localnames.hosts_line(names, resolve=lambda host: True) is None
    assert localnames.hosts_line(["example.org", "matrix.example.org"], resolve=lambda host: False) is None


def test_missing_docker_engine_stops_with_install_hint(tmp_path):
    _, _, result = run_up(tmp_path, {"pulumi": "exit 0", "docker": '[ "$1" = info ] && exit 1; exit 0'})
    assert result.returncode == 1
    assert "no Docker engine answers" in result.stderr
    assert "Start Docker" in result.stderr


def test_missing_docker_client_stops_with_install_hint(tmp_path):
    _, _, result = run_up(tmp_path, {"pulumi": "exit 0"})
    assert result.returncode == 1
    assert "no Docker client found" in result.stderr
    assert "docs.docker.com/engine/install" in result.stderr


def test_the_virtualenv_is_made_before_a_missing_prerequisite_stops_it(tmp_path):
    box, env, result = run_up(tmp_path, {"curl": "exit 6"})  # neither the Pulumi CLI nor Docker
    assert result.returncode == 1 and "error: 2 prerequisite(s) missing" in result.stderr
    assert (box.root / ".venv" / "bin" / "python").is_file()
    pip = [json.loads(line)["args"] for line in box.log.read_text().splitlines() if '"cmd": "pip"' in line]
    assert pip == ["-m pip install -q --disable-pip-version-check --require-hashes -r requirements.txt"]
    # What works meanwhile, said with the exact commands, which run as printed.
    assert "Meanwhile .venv is ready" in result.stderr
    commands = [line.split("#")[0].strip() for line in result.stderr.splitlines() if line.startswith("  ./scripts/")]
    assert commands == ["./scripts/commstack render --stack dev --out render",
                        "./scripts/commstack doctor --server-name commstack.localhost"]
    doctor = subprocess.run(commands[1].split(), cwd=box.root, env=env, capture_output=True, text=True,
                            timeout=300)
    assert doctor.returncode == 1 and "checks:" in doctor.stdout, doctor.stderr  # nothing deployed here
    help_text = subprocess.run(["./scripts/commstack", "render", "--help"], cwd=box.root, env=env,
                               capture_output=True, text=True, timeout=120)
    assert help_text.returncode == 0 and "--out" in help_text.stdout, help_text.stderr


def test_without_python_no_virtualenv_is_attempted(tmp_path):
    box, _, result = run_up(tmp_path, {"curl": "exit 6", "python3": '[ "$1" = -V ] && echo "Python 3.9.2"; exit 1'})
    assert result.returncode == 1
    assert not (box.root / ".venv").exists()
    assert "Meanwhile" not in result.stderr


@pytest.mark.parametrize("script", ["up", "test", "commstack"])
def test_scripts_are_valid_bash(script):
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)]).returncode == 0
