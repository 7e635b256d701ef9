"""`backup`, `backups` and `restore` drive the backup container through the Docker CLI; the snapshot
table and doctor's backup rows come from restic's JSON."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from commstack.operations import backup
from commstack.__main__ import build_parser

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def _snapshot(short_id: str, at: datetime, tags=("commstack",), size=5 * 1024 ** 2) -> dict:
    return {"id": short_id * 8, "short_id": short_id, "time": at.strftime("%Y-%m-%dT%H:%M:%S.123456789Z"),
            "tags": list(tags), "summary": {"total_bytes_processed": size, "data_added": 1024}}


class FakeDocker:
    """Records every command; answers `docker inspect` with the program's label and snapshots.sh with JSON."""

    def __init__(self, exit_codes=None, snapshots=()):
        self.calls: list[list[str]] = []
        self.exit_codes = exit_codes or {}
        self.snapshots = list(snapshots)

    def __call__(self, command, **kwargs):
        self.calls.append(command)
        if "inspect" in command:
            return subprocess.CompletedProcess(command, 0, "synapse,bridge-whatsapp\n", "")
        script = next((word.rsplit("/", 1)[1] for word in command if word.startswith("/commstack/")), None)
        stdout = json.dumps(self.snapshots) if script == "snapshots.sh" else ""
        return subprocess.CompletedProcess(command, self.exit_codes.get(script, 0), stdout, "")


def test_each_command_is_documented_in_the_cli():
    parser = build_parser()
    help_text = parser.format_help()
    for command in ("backup", "backups", "restore"):
        assert command in help_text
    args = build_parser("restore").parse_args(["restore", "--stop-services", "--overwrite", "--snapshot", "abc"])
    assert (args.stop_services, args.overwrite, args.snapshot) == (True, True, "abc")


def test_backup_runs_the_job_script_in_the_container():
    docker = FakeDocker()
    runner = backup.Runner(docker_host="ssh://deploy@home.example.org", run=docker)
    assert backup.main(SimpleNamespace(drill=True), runner) == 0
    assert docker.calls == [
        ["docker", "--host", "ssh://deploy@home.example.org", "exec", "backup", "sh", "/commstack/backup.sh"],
        ["docker", "--host", "ssh://deploy@home.example.org", "exec", "backup", "sh", "/commstack/drill.sh"],
    ]


def test_a_failed_backup_exits_non_zero(capsys):
    runner = backup.Runner(run=FakeDocker(exit_codes={"backup.sh": 1}))
    assert backup.main(SimpleNamespace(drill=False), runner) == 1
    assert "the backup failed" in capsys.readouterr().err


def test_restore_with_stop_services_stops_restores_and_starts_in_that_order():
    docker = FakeDocker()
    runner = backup.Runner(run=docker)
    args = SimpleNamespace(snapshot="1a2b3c4d", overwrite=True, stop_services=True)
    assert backup.restore_main(args, runner) == 0
    assert [c[1:3] for c in docker.calls] == [["inspect", "--format"], ["stop", "synapse"], ["exec", "-e"],
                                              ["start", "synapse"]]
    assert docker.calls[1] == ["docker", "stop", "synapse", "bridge-whatsapp"]
    assert docker.calls[2] == ["docker", "exec", "-e", "RESTORE_OVERWRITE=1", "backup", "sh", "/commstack/restore.sh",
                               "1a2b3c4d"]


def test_a_refused_restore_leaves_the_stopped_services_stopped_and_says_so(capsys):
    docker = FakeDocker(exit_codes={"restore.sh": 1})
    args = SimpleNamespace(snapshot=None, overwrite=False, stop_services=True)
    assert backup.restore_main(args, backup.Runner(run=docker)) == 1
    assert not any(c[1] == "start" for c in docker.calls)
    assert "docker start synapse bridge-whatsapp" in capsys.readouterr().err


def test_no_docker_cli_is_a_clear_error_not_a_traceback(capsys):
    def missing(command, **kwargs):
        raise FileNotFoundError(command[0])

    assert backup.snapshots_main(SimpleNamespace(json=False), backup.Runner(run=missing)) == 1
    assert "install the Docker CLI, or give --scripts-dir" in capsys.readouterr().err


def test_backups_lists_newest_first_with_age_size_and_drill(capsys):
    snapshots = [_snapshot("aaaaaaaa", NOW - timedelta(days=2, hours=1)),
                 _snapshot("bbbbbbbb", NOW - timedelta(hours=3), tags=("commstack", "drill-pass-20261201T093000Z"))]
    assert backup.snapshots_main(SimpleNamespace(json=False), backup.Runner(run=FakeDocker(snapshots=snapshots)),
                                 now=NOW) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:6] == ["bbbbbbbb", "2026-12-01", "09:00:00", "3.0", "h", "5.0"]
    assert lines[1].endswith("pass")
    assert lines[2].split()[0] == "aaaaaaaa" and "2.0 days" in lines[2]


def test_doctor_rows_for_a_fresh_backup_and_a_failed_or_missing_drill():
    fresh = backup.parse_snapshots(json.dumps([_snapshot("cccccccc", NOW - timedelta(hours=5),
                                                         tags=("commstack", "drill-fail-20261130T040000Z"))]))
    rows = {name: (ok, detail) for name, ok, detail, _ in backup.backup_status(fresh, NOW)}
    assert rows["backup newest"][0] is True and "5.0 h old" in rows["backup newest"][1]
    assert rows["backup drill"] == (False, "fail on cccccccc, 32.0 h ago")
    stale = backup.parse_snapshots(json.dumps([_snapshot("dddddddd", NOW - timedelta(days=3))]))
    rows = {name: ok for name, ok, _, _ in backup.backup_status(stale, NOW)}
    assert rows == {"backup newest": False, "backup drill": False}
    assert backup.backup_status([], NOW)[0][1] is False


@pytest.mark.parametrize("answer", ['{"token": "abc"}', '["a", "b"]', '[{"id": "abcdef12"}]', '3'])
def test_an_answer_that_is_not_a_restic_snapshot_list_is_refused_clearly(answer):
    with pytest.raises(backup.BackupCommandError, match="not restic's `snapshots --json` output"):
        backup.parse_snapshots(answer)


def test_a_drill_record_folds_into_the_snapshot_it_drilled():
    # drill.sh adds a small snapshot per drill (an append-only repository cannot retag the drilled one).
    record = _snapshot("eeeeeeee", NOW - timedelta(hours=1),
                       tags=("commstack-drill", "drill-pass-20261201T110000Z", "drilled-bbbbbbbb"), size=120)
    snapshots = backup.parse_snapshots(json.dumps([
        _snapshot("aaaaaaaa", NOW - timedelta(days=1)), _snapshot("bbbbbbbb", NOW - timedelta(hours=2)), record]))
    assert [s.short_id for s in snapshots] == ["aaaaaaaa", "bbbbbbbb"]  # the record is no snapshot of the stack
    result, when, drilled = backup.last_drill(snapshots)
    assert (result, drilled.short_id) == ("pass", "bbbbbbbb") and when == datetime(2026, 12, 1, 11, tzinfo=timezone.utc)
    rows = {name: ok for name, ok, _, _ in backup.backup_status(snapshots, NOW)}
    assert rows == {"backup newest": True, "backup drill": True}


class FakeRestic:
    def __init__(self, fail: str = "", refuse: bool = False):
        self.calls: list[tuple[list[str], dict]] = []
        self.fail = fail
        self.refuse = refuse

    def __call__(self, command, env=None, **kwargs):
        self.calls.append((command, env))
        # restic forget says so, and exits 0, when the repository refuses a delete.
        stderr = "unable to remove snapshot/5b2e... from the repository\n" if self.refuse and command[1] == "forget" else ""
        return subprocess.CompletedProcess(command, 1 if command[1] == self.fail else 0, "", stderr)


def prune_args(**given):
    defaults = dict(stack=None, repository="s3:s3.eu-central-1.amazonaws.com/b/restic", password_file=None,
                    keep_daily=None, keep_weekly=None, keep_monthly=None, keep_drills=backup.KEEP_DRILLS,
                    dry_run=False, restic="restic")
    return SimpleNamespace(**{**defaults, **given})


def test_prune_checks_first_then_forgets_by_host_and_prunes(tmp_path):
    password = tmp_path / "password"
    password.write_text("pw")
    restic = FakeRestic()
    assert backup.prune_main(prune_args(password_file=str(password), keep_daily=14), restic) == 0
    commands = [c for c, _ in restic.calls]
    assert [c[1] for c in commands] == ["check", "forget", "forget", "prune"]
    assert commands[1] == ["restic", "forget", "--host", "commstack", "--tag", "commstack", "--group-by", "host",
                           "--keep-daily", "14", "--keep-weekly", "4", "--keep-monthly", "6"]
    assert commands[2][-4:] == ["--group-by", "host", "--keep-last", "52"] and "commstack-drill" in commands[2]
    env = restic.calls[0][1]
    assert env["RESTIC_REPOSITORY"] == "s3:s3.eu-central-1.amazonaws.com/b/restic"
    assert env["RESTIC_PASSWORD_FILE"] == str(password)
    assert all("pw" not in word for c in commands for word in c)  # the password never on a command line


def test_prune_deletes_nothing_when_the_repository_does_not_check_out(tmp_path, capsys):
    password = tmp_path / "password"
    password.write_text("pw")
    restic = FakeRestic(fail="check")
    assert backup.prune_main(prune_args(password_file=str(password)), restic) == 1
    assert [c[1] for c, _ in restic.calls] == ["check"]
    assert "nothing was deleted" in capsys.readouterr().err


def test_prune_dry_run_forgets_nothing_and_an_append_only_refusal_says_where_to_prune(tmp_path, capsys):
    password = tmp_path / "password"
    password.write_text("pw")
    restic = FakeRestic()
    assert backup.prune_main(prune_args(password_file=str(password), dry_run=True), restic) == 0
    assert [c[1] for c, _ in restic.calls] == ["check", "forget", "forget"]
    assert all("--dry-run" in c for c, _ in restic.calls[1:])
    refused = FakeRestic(refuse=True)  # exit 0, as restic does
    assert backup.prune_main(prune_args(password_file=str(password), repository="rest:https://b.example.org:8000/c/"),
                             refused) == 1
    assert [c[1] for c, _ in refused.calls] == ["check", "forget"]
    assert "prune on the backup server itself" in capsys.readouterr().err


def test_prune_from_a_stack_reads_its_outputs_and_keeps_the_password_in_a_private_file(monkeypatch):
    from commstack.operations import admin

    seen = {}

    def outputs(stack, show_secrets=False):
        seen["call"] = (stack, show_secrets)
        return {"backupRepository": "s3:s3.eu-central-1.amazonaws.com/b/restic", "backupRepositoryPassword": "s3cr3t",
                "backupRetention": {"daily": 3, "weekly": 2, "monthly": 1}}

    monkeypatch.setattr(admin, "stack_outputs", outputs)

    def restic(command, env=None, **kwargs):
        import os  # noqa: F811
        import stat
        seen.setdefault("mode", stat.S_IMODE(os.stat(env["RESTIC_PASSWORD_FILE"]).st_mode))
        seen.setdefault("password", open(env["RESTIC_PASSWORD_FILE"]).read())
        seen.setdefault("commands", []).append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    assert backup.prune_main(prune_args(stack="prod", repository=None), restic) == 0
    assert seen["call"] == ("prod", True) and seen["mode"] == 0o600 and seen["password"] == "s3cr3t"
    assert seen["commands"][1][-6:] == ["--keep-daily", "3", "--keep-weekly", "2", "--keep-monthly", "1"]


def test_prune_refuses_the_local_volume_which_the_job_prunes_itself(monkeypatch, capsys):
    from commstack.operations import admin

    monkeypatch.setattr(admin, "stack_outputs", lambda stack, show_secrets=False: {
        "backupRepository": "/repository", "backupRepositoryPassword": "x"})
    assert backup.prune_main(prune_args(stack="dev", repository=None), FakeRestic()) == 1
    assert "prunes it itself" in capsys.readouterr().err
