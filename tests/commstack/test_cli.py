"""`python -m commstack`: dispatches to one subcommand module, imported only when it runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from commstack import __main__ as cli
from commstack.devtools import offline


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(command in out for command in ("render", "bench", "doctor", "create-admin"))


def test_subcommand_options_come_from_its_module(capsys):
    with pytest.raises(SystemExit):
        cli.main(["render", "--help"])
    out = capsys.readouterr().out
    assert "--stack" in out and "--out" in out and "--set" in out


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["deploy"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_only_the_selected_module_is_imported():
    probe = ("import json, sys; from commstack.__main__ import build_parser; build_parser('bench'); "
             "print(json.dumps([m for m in sys.modules if m.startswith(('commstack.', 'pulumi_'))]))")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=offline.ROOT, capture_output=True, text=True, check=True)
    imported = json.loads(proc.stdout)
    assert "commstack.devtools.bench" in imported
    assert not {"commstack.devtools.render", "commstack.checks.doctor", "commstack.operations.admin"} & set(imported)
    assert not [m for m in imported if m.startswith("pulumi_")]


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> str:
    """A Python 3.11 with no third-party packages: what `python3` is on a fresh machine."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    return str(venv / "bin" / "python")


def test_another_python_is_told_the_command_that_runs(bare_python):
    done = subprocess.run([bare_python, "-m", "commstack", "render", "--stack", "dev", "--out", "my render"],
                          cwd=offline.ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == cli.MISSING_MODULE, done.stderr
    assert "this is a bug" not in done.stderr and "Traceback" not in done.stderr
    assert f"error: this Python ({bare_python}) has no module 'yaml'" in done.stderr
    assert done.stderr.rstrip().endswith("Run instead: ./scripts/commstack render --stack dev --out 'my render'")


def test_from_another_directory_the_command_names_the_wrapper_by_its_path(bare_python, tmp_path):
    done = subprocess.run([bare_python, "-m", "commstack", "doctor", "--stack", "dev"], cwd=tmp_path,
                          env={"PYTHONPATH": str(offline.ROOT), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == cli.MISSING_MODULE
    assert done.stderr.rstrip().endswith(f"Run instead: {offline.ROOT}/scripts/commstack doctor --stack dev")


def test_the_top_level_help_needs_no_third_party_module(bare_python):
    done = subprocess.run([bare_python, "-m", "commstack", "--help"], cwd=offline.ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("usage: ./scripts/commstack")


def test_a_virtualenv_without_its_requirements_is_told_to_install_them(monkeypatch, capsys):
    def missing(command):
        raise ModuleNotFoundError("No module named 'yaml'", name="yaml")

    monkeypatch.setattr(cli, "_module", missing)
    monkeypatch.setattr(cli, "in_project_venv", lambda: True)
    monkeypatch.delenv("COMMSTACK_TRACEBACK", raising=False)
    assert cli.main(["render", "--stack", "dev"]) == cli.MISSING_MODULE
    err = capsys.readouterr().err
    assert "the project's virtualenv has no module 'yaml'; install its requirements again:" in err
    assert f"-m pip install -r {offline.ROOT / 'requirements.txt'}" in err


def test_a_missing_module_of_our_own_is_a_bug(monkeypatch, capsys):
    def missing(command):
        raise ModuleNotFoundError("No module named 'components.nosuch'", name="components.nosuch")

    monkeypatch.setattr(cli, "_module", missing)
    monkeypatch.delenv("COMMSTACK_TRACEBACK", raising=False)
    assert cli.main(["render", "--stack", "dev"]) == cli.INTERNAL_ERROR
    assert "render failed unexpectedly (ModuleNotFoundError); this is a bug" in capsys.readouterr().err
