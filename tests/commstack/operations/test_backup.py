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
