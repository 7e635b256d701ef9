"""The README stays true: quick start, config reference and test command."""

import json
import re
from pathlib import Path

from components.settings import CONFIG_KEYS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def config_reference_rows() -> dict[str, str]:
    rows = {}
    for line in README.splitlines():
        match = re.match(r"^\| `([a-z]+:[A-Za-z0-9]+)`(?: \(secret\))? \| `(.*?)` \|", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def test_config_reference_lists_every_key_with_its_default():
    rows = config_reference_rows()
    assert set(rows) == set(CONFIG_KEYS)
    for name, key in CONFIG_KEYS.items():
        if key.default is None:
            continue
        expected = (json.dumps(key.default) if isinstance(key.default, list)
                    else str(key.default).lower() if isinstance(key.default, bool)
                    else '""' if key.default == "" else str(key.default))
        assert rows[name] == expected, name


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


def test_readme_shows_how_to_set_every_secret():
    for key in CONFIG_KEYS.values():
        if key.secret:
            assert f"pulumi config set --secret {key.full_name}" in README, key.full_name


def test_every_stack_output_is_documented():
    from tests.conftest import evaluate

    outputs = set(evaluate("prod").stack_outputs)
    table = README.split("### Stack outputs", 1)[1].split("###", 1)[0]
    documented = set(re.findall(r"`([a-zA-Z]+)`", table))
    assert outputs <= documented, outputs - documented
