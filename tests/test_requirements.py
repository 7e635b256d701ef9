"""The dependency locks: every package pinned with hashes, the program's lock free of the tests'
packages, the test lock the same versions on top, and installs that check the hashes."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCKS = {"requirements.in": "requirements.txt", "requirements-test.in": "requirements-test.txt",
         "policy/requirements.in": "policy/requirements.txt", "requirements-tools.in": "requirements-tools.txt"}


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(path: str) -> dict[str, str]:
    text = (ROOT / path).read_text()
    entries = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)((?:\s*\\\n\s+--hash=sha256:[0-9a-f]{64})+)", text, re.MULTILINE)
    requirement_lines = [line for line in text.splitlines() if re.match(r"[A-Za-z0-9]", line)]
    assert len(entries) == len(requirement_lines), f"{path}: a requirement without == or without a hash"
    return {normal(name): version for name, version, _ in entries}


def direct(path: str) -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9_.-]+)(?:\[[a-z,]+\])?==(\S+)", (ROOT / path).read_text(), re.MULTILINE)
    return {normal(name): version for name, version in pins}


@pytest.mark.parametrize("source,lock", LOCKS.items())
def test_each_lock_pins_every_package_with_hashes_and_holds_its_inputs(source, lock):
    pins = locked(lock)
    for name, version in direct(source).items():
        assert pins.get(name) == version, (lock, name)
    assert f"--output-file={Path(lock).name}" in (ROOT / lock).read_text()


def test_the_programs_lock_has_no_test_package_and_the_tests_lock_agrees_with_it():
    program, tests = locked("requirements.txt"), locked("requirements-test.txt")
    tests_only = set(direct("requirements-test.in")) - set(direct("requirements.in"))
    assert {"pytest", "moto", "matrix-synapse", "hypothesis", "livekit"} <= tests_only
    assert not tests_only & set(program), tests_only & set(program)
    assert {name: tests[name] for name in program} == program
    policy = locked("policy/requirements.txt")
    assert {name: tests[name] for name in policy} == policy


def test_installs_check_the_hashes():
    assert "--require-hashes -r requirements-test.txt" in (ROOT / "scripts" / "test").read_text()
    assert "--require-hashes -r requirements.txt" in (ROOT / "scripts" / "up").read_text()
    workflow = (ROOT / ".github" / "workflows" / "preview.yml").read_text()
    assert not re.findall(r"pip install(?![^\n]*--require-hashes)[^\n]*-r ", workflow)
    # Pulumi's pip toolchain installs requirements.txt, the program's lock, into .venv.
    assert "toolchain: pip" in (ROOT / "Pulumi.yaml").read_text()
