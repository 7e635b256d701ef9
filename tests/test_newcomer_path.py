"""The smaller dead ends a newcomer met (issue 11), each pinned by a test: the stack outputs our
tools read, what the help texts and the README say about TLS, and render-diff's summary."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from commstack.checks import doctor
from commstack.devtools import render_diff
from commstack.operations.admin import MIN_PASSWORD_LENGTH
from tests.test_readme_commands import documentation, readme_commands

ROOT = Path(__file__).resolve().parent.parent
DOCS = documentation()


@pytest.mark.parametrize("stack, logs, certificate", [
    ("dev", "docker logs signal-local-server (on the Docker host)", True),
    ("prod", "journalctl -u signal-server (on the instance)", False),
])
def test_outputs_give_doctor_the_stacks_certificate_and_log_command(stack, logs, certificate, request):
    outputs = request.getfixturevalue(f"{stack}_evaluation").plain_stack_outputs
    assert outputs["signalLogsCommand"] == logs
    assert outputs["signalTarget"] == {"dev": "docker", "prod": "aws"}[stack]
    assert ("tlsCertificate" in outputs) is certificate
    if certificate:
        assert outputs["tlsCertificate"].startswith("-----BEGIN CERTIFICATE-----")


def test_the_create_admin_output_needs_no_tls_flag(dev_evaluation, prod_evaluation):
    for evaluation in (dev_evaluation, prod_evaluation):
        command = evaluation.plain_stack_outputs["createAdminCommand"]
        assert "--insecure-tls" not in command and command.startswith("./scripts/commstack create-admin")


def test_help_and_readme_agree_about_tls_flags():
    parser = argparse.ArgumentParser()
    doctor.add_arguments(parser)
    helps = {a.dest: a.help for a in parser._actions}
    assert "test harness only" not in helps["insecure_tls"]
    assert "tlsCertificate" in helps["ca_file"]
    # The docs recommend no command with --insecure-tls, and name the certificate one can pass.
    assert not [c for c in readme_commands(DOCS) if "--insecure-tls" in c]
    assert "pulumi stack output tlsCertificate > dev.pem" in DOCS
    assert "the one `render` writes" not in DOCS


def test_readme_states_the_password_rule():
    assert f"at least {MIN_PASSWORD_LENGTH} characters" in (ROOT / "README.md").read_text()


def test_readme_commands_have_no_optional_brackets():
    # `[--set …]` pasted into a shell is a glob, not an optional flag.
    assert not [c for c in readme_commands(DOCS) if re.search(r"\[--", c)]


@pytest.mark.parametrize("diff, summary", [
    ("", "no differences: the redacted renders of dev at HEAD and in the working tree are identical"),
    ("diff --git a/x b/x\n--- a/x\n+++ b/x\n", "1 rendered file(s) differ between HEAD and the working tree (dev)"),
])
def test_render_diff_always_says_what_it_found(monkeypatch, capsys, diff, summary):
    monkeypatch.setattr(render_diff, "render_diff", lambda base, stacks: diff)
    assert render_diff.main(argparse.Namespace(base="HEAD", stack=["dev"])) == 0
    out, err = capsys.readouterr()
    assert out == diff  # stdout stays exactly the diff: the pull-request workflow posts it
    assert err.strip() == summary


def test_render_diff_refuses_a_stack_neither_side_has():
    with pytest.raises(render_diff.RenderError, match="no stack 'nosuch'"):
        render_diff.render_diff("HEAD", ["nosuch"])
