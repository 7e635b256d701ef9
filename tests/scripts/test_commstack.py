"""./scripts/commstack: our CLI, always run by the project's virtualenv, from any directory."""

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "commstack"


def run(*args: str, cwd: Path, script: Path = SCRIPT) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_runs_the_cli_from_another_directory(tmp_path):
    done = run("--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ./scripts/commstack")
    assert "render-diff" in done.stdout and "registration-token" in done.stdout


def test_uses_the_projects_virtualenv(tmp_path):
    # A command that refuses its input before any traffic: it ran our code, with .venv's requests.
    done = run("doctor", "--server-name", "not a name", cwd=tmp_path)
    assert done.returncode == 2
    assert "--server-name 'not a name' is not a host name" in done.stderr


def test_without_a_virtualenv_it_says_how_to_make_one(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy2(SCRIPT, tmp_path / "scripts" / "commstack")
    done = run("--help", cwd=tmp_path, script=tmp_path / "scripts" / "commstack")
    assert done.returncode == 1
    assert f"the project's virtualenv {tmp_path}/.venv does not exist yet" in done.stderr
    assert "./scripts/up makes it" in done.stderr
