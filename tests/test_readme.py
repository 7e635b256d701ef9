"""The README and docs/ stay true: a short README, the quick start, the config reference, the code
layout, links that lead somewhere, and the test command."""

import re
from pathlib import Path

import pytest

from components.settings import CONFIG_KEYS
from tests.test_readme_commands import documentation, documents

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOCS = documentation()
MAX_README_LINES = 150


def test_readme_is_short():
    assert len(README.splitlines()) <= MAX_README_LINES


def test_config_reference_is_linked():
    # docs/configuration.md itself is generated from the schema (tests/components/settings/test_reference.py).
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
        assert f"Pulumi.{stack}.yaml" in DOCS or f"`{stack}`" in DOCS


def test_docs_show_how_to_set_every_secret():
    for key in CONFIG_KEYS.values():
        if key.secret:
            assert f"pulumi config set --secret {key.full_name}" in DOCS, key.full_name


def test_every_stack_output_is_documented():
    from tests.conftest import evaluate

    outputs = set(evaluate("prod").stack_outputs)
    operations = (ROOT / "docs" / "operations.md").read_text()
    table = operations.split("## Stack outputs", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([a-zA-Z]+)`", table))
    assert outputs <= documented, outputs - documented


def test_code_layout_names_every_cli_module_and_command():
    from commstack.__main__ import COMMANDS

    layout = README.split("## Code layout", 1)[1].split("\n## ", 1)[0]
    modules = sorted(p.name for p in (ROOT / "commstack").rglob("*.py") if p.name != "__init__.py")
    assert [m for m in modules if f"`{m}`" not in layout] == []
    assert [c for c in COMMANDS if f"`{c}`" not in layout] == []
    groups = sorted(p.parent.name for p in (ROOT / "commstack").glob("*/__init__.py"))
    assert [g for g in groups if f"`{g}/`" not in layout] == []


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_slug_is_githubs():
    assert slug("Check a deployed stack: `doctor`") == "check-a-deployed-stack-doctor"
    assert slug("The `dev` stack's Signal half") == "the-dev-stacks-signal-half"
    assert slug("Restore during an outage, step by step") == "restore-during-an-outage-step-by-step"


@pytest.mark.parametrize("page", documents(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_lead_somewhere(page):
    """Every relative link names a file that exists, and every #anchor a heading in it."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(target)
    assert broken == []


def test_readme_links_every_docs_topic():
    for topic in ("configuration", "operations", "calls", "bridges", "signal", "security", "testing", "troubleshooting"):
        assert f"(docs/{topic}.md)" in README, topic
        assert (ROOT / "docs" / f"{topic}.md").is_file(), topic


def test_doctor_help_and_docs_agree_about_signal_health():
    """The code accepts 2xx, or Signal-Server's own JSON 401 (a proxy's error page fails)."""
    import argparse

    from commstack.checks import doctor

    parser = argparse.ArgumentParser()
    doctor.add_arguments(parser)
    help_text = next(a.help for a in parser._actions if a.dest == "signal_health_url")
    assert "2xx" in help_text and "401" in help_text
    assert "Signal-Server's own JSON 401" in (ROOT / "docs" / "operations.md").read_text()
