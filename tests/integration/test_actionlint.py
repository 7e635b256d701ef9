"""The workflows pass actionlint (built from its Go module at the pinned version), and their
actions are at the current major releases."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from commstack.devtools import offline
from tests.integration import gobuild

WORKFLOWS = sorted((offline.ROOT / ".github" / "workflows").glob("*.yml"))
# The newest major release of each action the workflows use (checked against each project's
# releases: actions/checkout v7, setup-python v7, setup-go v7, upload-artifact v7, github-script v9,
# pulumi/actions v7.0.0 of 2026-05-01). A new major is a deliberate bump of this table.
CURRENT_MAJORS = {
    "actions/checkout": 7,
    "actions/setup-python": 7,
    "actions/setup-go": 7,
    "actions/upload-artifact": 7,
    "actions/github-script": 9,
    "pulumi/actions": 7,
}


def test_there_are_workflows():
    assert WORKFLOWS


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[w.name for w in WORKFLOWS])
def test_workflow_passes_actionlint(workflow):
    actionlint = gobuild.binary("actionlint")
    done = subprocess.run([str(actionlint), "-no-color", str(workflow)], capture_output=True, text=True,
                          cwd=offline.ROOT, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_actionlint_finds_a_broken_workflow(tmp_path):
    # The check can fail: an expression naming a context property that does not exist is reported.
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n"
                      "      - run: echo ${{ github.no_such_thing }}\n")
    done = subprocess.run([str(gobuild.binary("actionlint")), "-no-color", str(broken)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and "no_such_thing" in done.stdout, done.stdout


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[w.name for w in WORKFLOWS])
def test_actions_are_at_their_current_major(workflow):
    document = yaml.safe_load(workflow.read_text())
    uses = [step["uses"] for job in document["jobs"].values() for step in job.get("steps", []) if "uses" in step]
    for use in uses:
        action, _, ref = use.partition("@")
        assert action in CURRENT_MAJORS, f"{use}: add its current major to CURRENT_MAJORS"
        major = re.match(r"v(\d+)", ref)
        assert major and int(major.group(1)) == CURRENT_MAJORS[action], f"{use}: current is v{CURRENT_MAJORS[action]}"
