"""The settings at the program's edges: what the engine hands the program (secrets trimmed, plaintext
secrets warned about) and what `render` makes of odd input (never exit 70, "this is a bug")."""

from __future__ import annotations

import logging

import pytest
import yaml

from commstack.devtools import offline
from commstack.__main__ import main as cli
from tests.conftest import TEST_SECRETS, evaluate, stack_config


def test_a_secret_reaches_the_program_trimmed():
    evaluation = evaluate("prod", telegramApiHash="  0123456789abcdef0123456789abcdef \n")
    upload = next(u for u in evaluation.container("bridge-telegram").plain_inputs["uploads"]
                  if u["file"].endswith("config.yaml"))
    assert yaml.safe_load(upload["content"])["network"]["api_hash"] == "0123456789abcdef0123456789abcdef"


def test_a_plaintext_secret_in_the_stack_config_is_warned_about(caplog):
    config = stack_config("prod")
    secret_keys = [k for k in TEST_SECRETS if k != "commstack:telegramApiHash"]
    with caplog.at_level(logging.WARNING):
        offline.evaluate("prod", config=config, secret_keys=secret_keys)
    warned = [r.getMessage() for r in caplog.records if "stored in plaintext" in r.getMessage()]
    assert warned and warned[0].startswith("commstack:telegramApiHash is stored in plaintext"), warned
    assert config["commstack:telegramApiHash"] not in warned[0]


# (case, --set values): each refused with exit 2 and the key named, never exit 70.
ODD_RENDERS = [
    ("nested-list", ["bridges=" + "[" * 4000]),
    ("nested-object", ["backupRetention=" + '{"a":' * 700]),
    ("huge-number", ["telegramApiId=" + "9" * 4000, "bridges=[\"telegram\"]"]),
    ("nul-byte", ["domain=commstack\x00.localhost"]),
    ("non-ascii-digits", ["backupSchedule=٠٣:٣٠"]),
    ("provider-typo", ["aws:regin=eu-central-1"]),
    ("huge-value", ["acmeEmail=" + "a" * 100000]),
]


@pytest.mark.parametrize("case,sets", ODD_RENDERS, ids=[c[0] for c in ODD_RENDERS])
def test_render_refuses_odd_input_with_exit_2(case, sets, tmp_path, capsys):
    argv = ["render", "--stack", "dev", "--out", str(tmp_path / "r")]
    for pair in sets:
        argv += ["--set", pair]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    key = sets[0].partition("=")[0]
    assert f"{key if ':' in key else 'commstack:' + key}:" in err, err
    assert not (tmp_path / "r").exists()


def test_a_stack_file_nested_too_deeply_is_a_clear_error(tmp_path):
    (tmp_path / "Pulumi.deep.yaml").write_text("config:\n  commstack:bridges: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ValueError, match="nested too deeply"):
        offline.stack_config("deep", tmp_path)
    (tmp_path / "Pulumi.deeper.yaml").write_text(
        "config:\n  commstack:containerMemory:\n" + "".join("  " * (i + 2) + "a:\n" for i in range(3000)))
    with pytest.raises(ValueError, match="nested too deeply"):
        offline.stack_config("deeper", tmp_path)
