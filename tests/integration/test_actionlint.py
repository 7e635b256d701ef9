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
# The release each action is pinned at, and that release's commit (a `uses:` names the commit; the tag in its
# comment is what a reader checks). The newest major of each project when pinned: actions/checkout v7, setup-python
# v7, setup-go v7, upload-artifact v7, github-script v9, pulumi/actions v7.0.0 of 2026-05-01. Each commit is the
# tag's commit in the project's repository (`git rev-parse <tag>^{commit}` on a snapshot of it), except
# github-script v9.0.0, whose snapshot ends at v8: its annotated tag object 373c709c... names commit 3a2844b7...,
# as the pins of several public workflows record. A bump is a deliberate change of this table and the workflow.
PINNED = {
    "actions/checkout": ("v7.0.1", "3d3c42e5aac5ba805825da76410c181273ba90b1"),
    "actions/setup-python": ("v7.0.0", "5fda3b95a4ea91299a34e894583c3862153e4b97"),
    "actions/setup-go": ("v7.0.0", "b7ad1dad31e06c5925ef5d2fc7ad053ef454303e"),
    "actions/upload-artifact": ("v7.0.0", "bbbca2ddaa5d8feaa63e36b76fdaad77386f024f"),
    "actions/github-script": ("v9.0.0", "3a2844b7e9c422d3c10d287c895573f7108da1b3"),
    "pulumi/actions": ("v7.0.0", "8e5e406f4007fca908480587cb9893c07090f58d"),
}
USES = re.compile(r"^\s*(?:-\s+)?uses:\s*(\S+?)@(\S+)(?:\s+#\s*(\S+))?\s*$", re.M)


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
def test_actions_are_pinned_by_commit_at_their_current_release(workflow):
    text = workflow.read_text()
    document = yaml.safe_load(text)
    parsed = [step["uses"] for job in document["jobs"].values() for step in job.get("steps", []) if "uses" in step]
    found = USES.findall(text)
    assert [f"{action}@{ref}" for action, ref, _ in found] == parsed  # every `uses:` line is seen
    for action, ref, comment in found:
        assert action in PINNED, f"{action}: add its release and commit to PINNED"
        tag, commit = PINNED[action]
        assert re.fullmatch(r"[0-9a-f]{40}", ref), f"{action}@{ref}: pin the full commit SHA, not a tag"
        assert (ref, comment) == (commit, tag), f"{action}@{ref} # {comment}: {tag} is {commit}"


def test_a_tag_pin_or_a_mislabelled_commit_is_caught():
    for line in ("      - uses: actions/checkout@v7\n",
                 "      - uses: actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1 # v6.0.0\n"):
        (action, ref, comment), = USES.findall(line)
        tag, commit = PINNED[action]
        assert (ref, comment) != (commit, tag)
