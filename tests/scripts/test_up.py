"""The quick-start script stops with a clear message when a prerequisite is missing."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ["bash", "sed", "tr", "dirname", "cat", "mkdir", "env"]


def fake_bin(tmp_path: Path, scripts: dict[str, str]) -> Path:
    """A PATH with only basic tools plus the given fake commands."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        os.symlink(shutil.which(tool), bin_dir / tool)
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/bash\n{body}\n")
        path.chmod(0o755)
    return bin_dir


def run_up(tmp_path: Path, scripts: dict[str, str]) -> subprocess.CompletedProcess:
    bin_dir = fake_bin(tmp_path, scripts)
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": str(bin_dir), "HOME": str(home)}
    return subprocess.run(["bash", str(ROOT / "scripts" / "up"), "dev"], env=env, capture_output=True, text=True,
                          timeout=60)


def test_missing_pulumi_cli_that_cannot_be_installed_stops_with_install_hint(tmp_path):
    result = run_up(tmp_path, {"curl": "exit 6"})
    assert result.returncode == 1
    assert "could not install the Pulumi CLI" in result.stderr
    assert "pulumi.com/docs/iac/download-install" in result.stderr


def test_missing_docker_engine_stops_with_install_hint(tmp_path):
    result = run_up(tmp_path, {"pulumi": "exit 0", "docker": '[ "$1" = info ] && exit 1; exit 0'})
    assert result.returncode == 1
    assert "no Docker engine answers" in result.stderr
    assert "Start Docker" in result.stderr


def test_missing_docker_client_stops_with_install_hint(tmp_path):
    result = run_up(tmp_path, {"pulumi": "exit 0"})
    assert result.returncode == 1
    assert "no Docker client found" in result.stderr
    assert "docs.docker.com/engine/install" in result.stderr


@pytest.mark.parametrize("script", ["up", "test"])
def test_scripts_are_valid_bash(script):
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)]).returncode == 0
