"""docs/configuration.md is generated from the schema, and says what the schema says."""

import re
import subprocess
import sys

from components.paths import ROOT
from components.settings import CONFIG_KEYS, SCHEMA
from components.settings.reference import OUTPUT, render

DOCS = ROOT / OUTPUT


def reference_rows() -> dict[str, list[str]]:
    rows = {}
    for line in DOCS.read_text().splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        matched = re.fullmatch(r"`([a-z]+:[A-Za-z0-9]+)`", cells[0]) if cells else None
        if matched:
            rows[matched.group(1)] = cells
    return rows


def test_the_committed_reference_is_what_the_schema_generates():
    assert DOCS.read_text() == render(), (
        f"{OUTPUT} is out of date: .venv/bin/python -m commstack config-reference > {OUTPUT}")


def test_every_setting_has_a_row_with_its_type_default_secrecy_and_fix():
    rows = reference_rows()
    assert set(rows) == set(CONFIG_KEYS)
    for setting in SCHEMA:
        key, type_name, default, allowed, applies, secret, doc, example = rows[setting.key]
        assert type_name == setting.kind.type_name
        if setting.default is None:
            assert default.startswith("—"), setting.key
        else:
            assert default.startswith(f"`{setting.default}`" if setting.default else '`""`'), setting.key
        assert ("required" in default) == setting.required, setting.key
        assert (secret == "yes") == setting.secret
        assert example == f"`{setting.fix()}`"
        assert ("pulumi config set --secret" in example) == setting.secret
        assert applies == setting.applies.text.replace("|", "\\|")


def test_the_command_prints_the_reference_and_checks_it():
    printed = subprocess.run([sys.executable, "-m", "commstack", "config-reference"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout
    assert printed == render()
    checked = subprocess.run([sys.executable, "-m", "commstack", "config-reference", "--check"], cwd=ROOT,
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
