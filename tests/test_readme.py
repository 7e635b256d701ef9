"""The README stays true: quick start, the link to the config reference, and the test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_config_reference_links_to_the_generated_reference():
    # The reference itself is generated from the schema (tests/components/settings/test_reference.py).
    assert "(docs/configuration.md)" in README


def test_quick_start_is_two_commands_that_exist():
    block = README.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["./scripts/up dev", "./scripts/test"]
    for command in commands:
        assert (ROOT / command.split()[0]).is_file()


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./scripts/test" in ci
    assert "./scripts/test" in README.split("## Tests", 1)[1]


def test_every_committed_stack_file_is_mentioned():
    for stack in ("dev", "prod"):
        assert f"Pulumi.{stack}.yaml" in README or f"`{stack}`" in README


def test_every_stack_output_is_documented():
    from tests.conftest import evaluate

    outputs = set(evaluate("prod").stack_outputs)
    table = README.split("### Stack outputs", 1)[1].split("###", 1)[0]
    documented = set(re.findall(r"`([a-zA-Z]+)`", table))
    assert outputs <= documented, outputs - documented
