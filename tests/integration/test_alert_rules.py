"""The alert rules, read by the real promtool (built from the Go module proxy at the pinned Prometheus).

For the dev and prod stacks' rendered rule files (and dev with Synapse workers, which adds Redis's) (as `commstack render` writes them into the
prometheus container): `promtool check rules` accepts them, and `promtool test rules` runs
tests/integration/alert_rules_test.yaml against each, which must hold a firing case for every rule.
The expected annotations are the rule's own templates with the expected labels filled in, so a
changed summary or runbook hint needs no second edit, while a rule that fires with other labels, at
another time or not at all fails.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from components.matrix import monitoring
from tests.conftest import evaluate
from tests.integration import gobuild

CASES = Path(__file__).with_name("alert_rules_test.yaml")


@pytest.fixture(scope="module")
def promtool() -> str:
    try:
        return str(gobuild.binary("promtool"))
    except gobuild.GoBuildError as err:
        pytest.fail(str(err))


def rendered_rules(stack: str) -> dict:
    """The rule file the stack uploads into the prometheus container (`workers`: dev with Synapse workers)."""
    evaluation = evaluate("dev", synapseWorkers="balanced") if stack == "workers" else evaluate(stack)
    container = next(reg for reg in evaluation.of_type("docker:index/container:Container")
                     if reg.plain_inputs["name"] == monitoring.PROMETHEUS)
    upload = next(u for u in container.plain_inputs["uploads"] if u["file"] == monitoring.RULES_PATH)
    return yaml.safe_load(upload["content"])


def fill(template: str, labels: dict) -> str:
    """A rule annotation as Prometheus expands it for these labels (the rules use `$labels.x` only)."""
    def label(match: re.Match) -> str:
        return str(labels.get(match.group(1), ""))
    return re.sub(r"\{\{ \$labels\.([a-z_]+) \}\}", label, template)


def promtool_test_file(rules: dict, tmp_path: Path) -> Path:
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump(rules, sort_keys=False))
    by_name = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    cases = yaml.safe_load(CASES.read_text())
    kept = []
    for case in cases["tests"]:
        # A case for a rule this stack does not have is left out (prod has no bridges, say).
        checks = [check for check in case["alert_rule_test"] if check["alertname"] in by_name]
        for check in checks:
            rule = by_name[check["alertname"]]
            for expected in check["exp_alerts"]:
                expected["exp_annotations"] = {key: fill(value, expected["exp_labels"])
                                               for key, value in rule["annotations"].items()}
        if checks:
            kept.append({**case, "alert_rule_test": checks})
    test_file = tmp_path / "rules_test.yml"
    test_file.write_text(yaml.safe_dump({**cases, "rule_files": [str(rules_file)], "tests": kept}, sort_keys=False))
    return test_file


def firing_cases() -> set[str]:
    cases = yaml.safe_load(CASES.read_text())
    return {check["alertname"] for case in cases["tests"] for check in case["alert_rule_test"] if check["exp_alerts"]}


@pytest.mark.parametrize("stack", ["dev", "prod", "workers"])
def test_promtool_accepts_and_every_rule_fires_in_its_test(stack, promtool, tmp_path):
    rules = rendered_rules(stack)
    names = [rule["alert"] for group in rules["groups"] for rule in group["rules"]]
    assert len(names) == len(set(names))
    # Every rule has a one-line runbook hint and a summary.
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["annotations"]["summary"] and "\n" not in rule["annotations"]["runbook"], rule["alert"]
    assert set(names) <= firing_cases(), f"rules without a firing promtool case: {set(names) - firing_cases()}"
    test_file = promtool_test_file(rules, tmp_path)
    checked = subprocess.run([promtool, "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(names)} rules found" in checked.stdout + checked.stderr
    tested = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_a_broken_rule_fails_its_case(promtool, tmp_path):
    """The cases are real: a rule with the wrong threshold makes promtool fail."""
    rules = monitoring.render_alert_rules(jobs=["synapse", "node", "traefik", "postgres", "livekit", "turn"],
                                          probe_jobs=["bridges", "signal"], backup=True, backup_max_age_hours=40)
    tested = subprocess.run([promtool, "test", "rules", str(promtool_test_file(rules, tmp_path))],
                            capture_output=True, text=True)
    assert tested.returncode != 0
    assert "BackupTooOld" in tested.stdout + tested.stderr


def test_all_rules_of_a_full_stack_have_cases():
    rules = monitoring.render_alert_rules(jobs=["synapse", "node", "traefik", "postgres", "livekit", "turn", "redis"],
                                          probe_jobs=["bridges", "signal"], backup=True)
    names = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert names == firing_cases()
