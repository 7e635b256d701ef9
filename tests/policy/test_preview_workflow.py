""".github/workflows/preview.yml: the jobs, pinned actions, and no secret in any script."""

from __future__ import annotations

import re

import pytest
import yaml

from commstack.devtools import offline

WORKFLOW = offline.ROOT / ".github/workflows/preview.yml"
# A full commit SHA (tests/integration/test_actionlint.py checks each is its release's commit).
PINNED_ACTION = re.compile(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}")


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def steps(workflow: dict, job: str) -> list[dict]:
    return workflow["jobs"][job]["steps"]


def step_using(workflow: dict, job: str, action: str) -> dict:
    """The one step of `job` that uses `action` (pinned by commit: `action@<sha>`)."""
    found, = [s for s in steps(workflow, job) if s.get("uses", "").startswith(f"{action}@")]
    return found


def scripts(workflow: dict, job: str) -> str:
    return "\n".join(s.get("run", "") for s in steps(workflow, job))


def test_runs_on_pull_requests_with_least_permissions(workflow):
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` key as true
    assert set(triggers) == {"pull_request"}
    assert workflow["permissions"] == {"contents": "read", "pull-requests": "write"}
    assert {"test", "render-diff", "preview"} <= set(workflow["jobs"])


def test_every_action_is_pinned_by_commit(workflow):
    uses = [s["uses"] for job in workflow["jobs"].values() for s in job["steps"] if "uses" in s]
    assert uses and all(PINNED_ACTION.fullmatch(u) for u in uses), uses
    assert "pulumi/actions@8e5e406f4007fca908480587cb9893c07090f58d" in uses  # v7.0.0


def test_the_pulumi_cli_is_a_pinned_release_checked_before_it_runs(workflow):
    preview = steps(workflow, "preview")
    install = next(s for s in preview if "sha256sum -c" in s.get("run", ""))
    pulumi = step_using(workflow, "preview", "pulumi/actions")
    assert preview.index(install) < preview.index(pulumi)
    version, digest = install["env"]["PULUMI_VERSION"], install["env"]["PULUMI_SHA256"]
    assert re.fullmatch(r"3\.\d+\.\d+", version) and re.fullmatch(r"[0-9a-f]{64}", digest)
    # The action finds that very version installed and downloads nothing of its own.
    assert pulumi["with"]["pulumi-version"] == version
    script = install["run"]
    assert script.index("curl ") < script.index("sha256sum -c") < script.index("tar -x")
    piped_to_a_shell = re.compile(r"\|\s*(sudo\s+)?(sh|bash)\b")
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            assert not piped_to_a_shell.search(step.get("run", "")), step
    assert piped_to_a_shell.search("curl -fsSL https://get.pulumi.com | sh")  # the check can fail


def test_test_job_runs_the_test_command(workflow):
    assert scripts(workflow, "test").strip().splitlines()[-1] == "./scripts/test"


def test_render_diff_job_needs_no_credentials_and_publishes_the_diff(workflow):
    job = workflow["jobs"]["render-diff"]
    assert "secrets." not in yaml.safe_dump(job)
    checkout = step_using(workflow, "render-diff", "actions/checkout")
    assert checkout["with"]["fetch-depth"] == 0
    assert 'python -m commstack render-diff --base "origin/$BASE_REF" > render.diff' in scripts(workflow, "render-diff")
    assert step_using(workflow, "render-diff", "actions/upload-artifact")["with"]["path"] == "render.diff"
    assert "render.diff" in step_using(workflow, "render-diff", "actions/github-script")["with"]["script"]


def test_preview_job_runs_the_policy_pack_on_the_self_managed_backend(workflow):
    job = workflow["jobs"]["preview"]
    assert job["needs"] == "preview-gate" and job["if"] == "needs.preview-gate.outputs.enabled == 'true'"
    pulumi = step_using(workflow, "preview", "pulumi/actions")
    assert pulumi["with"]["command"] == "preview"
    assert pulumi["with"]["comment-on-pr"] is True and pulumi["with"]["diff"] is True
    assert pulumi["with"]["policyPacks"] == "policy"
    assert pulumi["with"]["cloud-url"] == "${{ vars.PULUMI_BACKEND_URL }}"
    assert pulumi["env"] == {"PULUMI_CONFIG_PASSPHRASE": "${{ secrets.PULUMI_CONFIG_PASSPHRASE }}"}
    # The action installs no Python packages: the program's and the pack's come first.
    install = scripts(workflow, "preview")
    assert "-r requirements.txt" in install and "-r policy/requirements.txt" in install
    assert steps(workflow, "preview").index(pulumi) == len(steps(workflow, "preview")) - 1


def test_the_gate_sees_only_whether_the_secret_is_set(workflow):
    gate, = steps(workflow, "preview-gate")
    assert gate["env"]["HAS_PASSPHRASE"] == "${{ secrets.PULUMI_CONFIG_PASSPHRASE != '' }}"
    assert "HAS_PASSPHRASE" in gate["run"] and "BACKEND_URL" in gate["run"]


def test_no_secret_is_echoed(workflow):
    for name, job in workflow["jobs"].items():
        for step in job["steps"]:
            script = step.get("run", "") + step.get("with", {}).get("script", "")
            assert "secrets." not in script, f"{name}: a secret is expanded into a script"
            assert not re.search(r"\bset -[a-z]*x", script), f"{name}: shell tracing would print values"
            for var, value in (step.get("env") or {}).items():
                if "secrets." in str(value) and "!= ''" not in str(value):
                    assert var not in script, f"{name}: the script reads the secret {var}"
