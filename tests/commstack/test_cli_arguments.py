"""No command answers any argument with a traceback: each bad one gets a one-line error that
names what is wrong, and a non-zero exit status. (Table-driven; nothing here reaches a network:
each case fails before any traffic, and `pulumi` is a stand-in that knows no stacks.)"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from commstack import __main__ as cli

# Knows one deployed stack, prod (its outputs); any other is "not found".
FAKE_PULUMI = """#!/bin/sh
for a in "$@"; do [ "$prev" = --stack ] && stack="$a"; prev="$a"; done
if [ "$stack" = prod ]; then echo '{"dockerHost": "", "serverName": "example.org"}'; exit 0; fi
echo "error: no stack named '$stack' found" >&2
exit 255
"""


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """PATH with a `pulumi` that knows no stack and no `docker`; a file, a non-empty dir."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pulumi").write_text(FAKE_PULUMI)
    (bin_dir / "pulumi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("COMMSTACK_ACCESS_TOKEN", "COMMSTACK_SHARED_SECRET", "COMMSTACK_TRACEBACK"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "a-file").write_text("not a directory\n")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me\n")
    return tmp_path


# (case id, argv with {tmp} for the sandbox, stdin, exit status, what stderr says)
CASES = [
    ("no-command", [], "", "usage", "the following arguments are required: COMMAND"),
    ("unknown-command", ["deploy"], "", "usage", "invalid choice"),
    ("render-no-flags", ["render"], "", "usage", "--stack"),
    ("render-unknown-stack", ["render", "--stack", "nosuch", "--out", "{tmp}/r"], "", 2,
     "no stack file Pulumi.nosuch.yaml; committed stacks: dev, prod"),
    ("render-stack-path", ["render", "--stack", "../../etc/passwd", "--out", "{tmp}/r"], "", 2, "is not a stack name"),
    ("render-out-is-a-file", ["render", "--stack", "dev", "--out", "{tmp}/a-file"], "", 2,
     "a-file is a file; give a directory"),
    ("render-out-not-empty", ["render", "--stack", "dev", "--out", "{tmp}/notes"], "", 2,
     "is not empty and is not an earlier render"),
    ("render-out-under-a-file", ["render", "--stack", "dev", "--out", "{tmp}/a-file/r"], "", 2,
     "cannot write the render into"),
    ("render-set-no-equals", ["render", "--stack", "dev", "--out", "{tmp}/r", "--set", "registration"], "", 2,
     "is not key=value"),
    ("render-set-empty-domain", ["render", "--stack", "dev", "--out", "{tmp}/r", "--set", "domain="], "", 2,
     "commstack:domain: is required"),
    ("render-set-typo", ["render", "--stack", "dev", "--out", "{tmp}/r", "--set", "domian=example.org"], "", 2,
     "did you mean commstack:domain?"),
    ("render-set-odd-value", ["render", "--stack", "dev", "--out", "{tmp}/r", "--set", "telegramApiId=²"], "", 2,
     "contains a character that is not ASCII"),
    ("render-diff-no-base", ["render-diff"], "", "usage", "--base"),
    ("render-diff-bad-ref", ["render-diff", "--base", "no-such-ref-anywhere", "--stack", "dev"], "", 2,
     "no-such-ref-anywhere"),
    ("render-diff-unknown-stack", ["render-diff", "--base", "HEAD", "--stack", "nosuch"], "", 2,
     "no stack 'nosuch': neither HEAD nor the working tree has Pulumi.nosuch.yaml"),
    ("render-diff-stack-path", ["render-diff", "--base", "HEAD", "--stack", "../x"], "", 2, "is not a stack name"),
    ("doctor-nothing", ["doctor"], "", 2, "give --stack NAME or --server-name DOMAIN"),
    ("doctor-unknown-stack", ["doctor", "--stack", "nosuch"], "", 2, "no stack named 'nosuch' found"),
    ("doctor-bad-name", ["doctor", "--server-name", "a..b"], "", 2, "is not a host name"),
    ("doctor-bad-via", ["doctor", "--server-name", "example.org", "--via", "junk"], "", 2, "--via takes KEY=VALUE"),
    ("doctor-bad-ca-file", ["doctor", "--server-name", "example.org", "--ca-file", "{tmp}/a-file"], "", 2,
     "--ca-file"),
    ("create-admin-no-stack", ["create-admin"], "", "usage", "--stack"),
    ("create-admin-unknown-stack", ["create-admin", "--stack", "nosuch", "--password-stdin"], "x" * 20 + "\n", None,
     "error:"),
    ("token-unknown-stack", ["registration-token", "--stack", "nosuch"], "", 1, "no stack file Pulumi.nosuch.yaml"),
    ("token-closed-stack", ["registration-token", "--stack", "dev"], "", 1,
     "has registration 'closed', where tokens let nobody in; first: pulumi config set commstack:registration token"),
    ("token-zero-uses", ["registration-token", "--stack", "prod", "--uses", "0"], "", "usage", "must be at least 1"),
    ("token-odd-expiry", ["registration-token", "--stack", "prod", "--expires-in", "soon"], "", "usage",
     "'soon' is not a number of days"),
    ("token-no-password", ["registration-token", "--stack", "prod", "--password-stdin"], "\n", 1, "no password given"),
    ("token-no-docker", ["registration-token", "--stack", "prod", "--password-stdin"], "pw\n", 1,
     "the Docker CLI (docker) is not installed"),
    ("bench-zero-repeat", ["bench", "--repeat", "0"], "", 2, "--repeat must be at least 1"),
    ("bench-odd-repeat", ["bench", "--repeat", "many"], "", "usage", "invalid int value"),
    ("bench-unknown-stack", ["bench", "--stack", "nosuch"], "", 2, "no stack file for nosuch"),
    # The backup commands reach the backup container with `docker exec`; here there is no Docker CLI.
    ("backup-no-docker", ["backup"], "", None, "error"),
    ("backup-missing-scripts", ["backup", "--scripts-dir", "{tmp}/no-such-dir"], "", None, "error"),
    ("backups-no-docker", ["backups", "--json"], "", None, "error"),
    ("restore-no-docker", ["restore", "--snapshot", "zzz"], "", None, "error"),
    # backup-prune runs restic on this machine; each of these fails before it does.
    ("backup-prune-nothing", ["backup-prune"], "", 1, "give --repository"),
    ("backup-prune-negative", ["backup-prune", "--keep-daily", "-1"], "", "usage", "must be 0 or more"),
    ("backup-prune-unknown-stack", ["backup-prune", "--stack", "nosuch"], "", 1, "no stack named 'nosuch' found"),
    ("backup-prune-no-password", ["backup-prune", "--repository", "s3:x/y/restic"], "", 1, "give --password-file"),
    ("backup-prune-password-dir", ["backup-prune", "--repository", "s3:x/y/restic", "--password-file", "{tmp}/notes"],
     "", 1, "is not a file"),
    # signal-restore refuses each of these before it sends anything to AWS.
    ("signal-restore-no-what", ["signal-restore"], "", "usage", "the following arguments are required: WHAT"),
    ("signal-restore-unknown-stack", ["signal-restore", "tables", "--stack", "nosuch", "--latest"], "", 2,
     "no stack file Pulumi.nosuch.yaml"),
    ("signal-restore-docker-stack", ["signal-restore", "tables", "--stack", "dev", "--latest"], "", 2, "runs on Docker"),
    ("signal-restore-no-zone", ["signal-restore", "tables", "--stack", "prod", "--to", "2026-12-01T09:30"], "", 2,
     "has no time zone"),
    ("signal-restore-bad-suffix", ["signal-restore", "tables", "--stack", "prod", "--latest", "--suffix", "R_1"], "", 2,
     "is not a table suffix"),
    ("signal-restore-version-without-name", ["signal-restore", "secrets", "--stack", "prod", "--version", "1"], "", 2,
     "--version needs --name"),
]


@pytest.mark.parametrize("case,argv,stdin,status,message", CASES, ids=[c[0] for c in CASES])
def test_bad_arguments_get_a_clear_error_not_a_traceback(sandbox, monkeypatch, capsys, case, argv, stdin, status,
                                                         message):
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    argv = [a.replace("{tmp}", str(sandbox)) for a in argv]
    try:
        code = cli.main(argv)
    except SystemExit as exit_info:  # argparse's usage errors
        code = "usage" if exit_info.code == 2 else exit_info.code
    err = capsys.readouterr().err
    assert "Traceback" not in err and "failed unexpectedly" not in err, err
    assert message in err, err
    if status is None:
        assert code not in (0, cli.INTERNAL_ERROR), code
    else:
        assert code == status, (code, err)
    assert (sandbox / "notes" / "todo.txt").read_text() == "keep me\n"


def test_an_unexpected_failure_is_one_line_unless_asked(monkeypatch, capsys):
    from commstack.devtools import bench

    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr(bench, "main", broken)
    monkeypatch.delenv("COMMSTACK_TRACEBACK", raising=False)
    assert cli.main(["bench"]) == cli.INTERNAL_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bench failed unexpectedly (KeyError)" in err and "COMMSTACK_TRACEBACK=1" in err
    monkeypatch.setenv("COMMSTACK_TRACEBACK", "1")
    with pytest.raises(KeyError):
        cli.main(["bench"])


def test_pulumi_subprocesses_find_the_passphrase_scripts_up_keeps(tmp_path, monkeypatch):
    from commstack.operations import admin

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    for name in ("PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE"):
        monkeypatch.delenv(name, raising=False)
    assert "PULUMI_CONFIG_PASSPHRASE_FILE" not in admin.pulumi_env()  # nothing there yet
    passfile = Path(tmp_path, ".config", "commstack", "passphrase")
    passfile.parent.mkdir(parents=True)
    passfile.write_text("generated\n")
    assert admin.pulumi_env()["PULUMI_CONFIG_PASSPHRASE_FILE"] == str(passfile)
    # The caller's own passphrase wins.
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "mine")
    assert "PULUMI_CONFIG_PASSPHRASE_FILE" not in admin.pulumi_env()
    assert os.environ["PULUMI_CONFIG_PASSPHRASE"] == "mine"
