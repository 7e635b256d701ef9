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
