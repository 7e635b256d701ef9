"""`python -m commstack backup | backups | restore`: the Matrix backups, by hand.

Each command runs one of the backup job's own scripts (configs/backup/*.sh, placed in the `backup`
container at /commstack), so a manual backup or restore is exactly the scheduled one:

* on the stack's Docker host: `docker exec backup /commstack/<script>` (`--docker-host`, or
  DOCKER_HOST, or the local socket);
* or from a directory holding the scripts and their env.sh (`--scripts-dir`): a machine that
  runs the services without Docker, and the loopback test harness.

`restore` refuses while Synapse or a bridge holds the databases open, and over existing data,
unless told: `--stop-services` stops them first (and starts them again after), `--overwrite`
replaces live data. Nothing here prints the repository password; the scripts read it from a file.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

CONTAINER = "backup"
SCRIPTS_DIR = "/commstack"
STOP_LABEL = "commstack.backup.stop-before-restore"
DRILL_TAG_PREFIX = "drill-"
# A daily schedule: older than this means the last run (or more) failed.
MAX_BACKUP_AGE_HOURS = 36
# A weekly drill: older than this means the last drill did not run.
MAX_DRILL_AGE_DAYS = 8


class BackupCommandError(RuntimeError):
    """A failure the user can act on; the message says how."""


Run = Callable[..., subprocess.CompletedProcess]


@dataclass
class Runner:
    """Runs the job's scripts: in the backup container, or from a local scripts directory."""

    scripts_dir: Optional[str] = None
    docker_host: Optional[str] = None
    run: Run = subprocess.run

    def _docker(self, *args: str) -> list[str]:
        return ["docker", *(["--host", self.docker_host] if self.docker_host else []), *args]

    def script(self, name: str, *args: str, env: Optional[dict[str, str]] = None,
               capture: bool = False) -> subprocess.CompletedProcess:
        env = env or {}
        if self.scripts_dir:
            path = Path(self.scripts_dir) / name
            if not path.is_file():
                raise BackupCommandError(f"{path} does not exist: --scripts-dir must hold the backup job's scripts "
                                         "(a render's backup/commstack directory)")
            command = ["sh", str(path), *args]
            full_env = {**os.environ, **env}
        else:
            flags = [part for key, value in sorted(env.items()) for part in ("-e", f"{key}={value}")]
            command = self._docker("exec", *flags, CONTAINER, "sh", f"{SCRIPTS_DIR}/{name}", *args)
            full_env = None
        try:
            return self.run(command, env=full_env, text=True, capture_output=capture, check=False)
        except FileNotFoundError as exc:
            raise BackupCommandError(f"cannot run {command[0]!r}: install the Docker CLI, or give --scripts-dir") from exc

    def services_to_stop(self) -> list[str]:
        """Synapse and the bridges, as the program labelled the backup container."""
        if self.scripts_dir:
            raise BackupCommandError("--stop-services needs the Docker host (without --scripts-dir, stop the "
                                     "services yourself, then run restore again)")
        done = self.run(self._docker("inspect", "--format", f'{{{{index .Config.Labels "{STOP_LABEL}"}}}}', CONTAINER),
                        text=True, capture_output=True, check=False)
        if done.returncode != 0:
            raise BackupCommandError(f"cannot inspect the {CONTAINER} container: {done.stderr.strip()[:300]}")
        return [name for name in done.stdout.strip().split(",") if name]

    def docker(self, *args: str) -> None:
        done = self.run(self._docker(*args), text=True, capture_output=True, check=False)
        if done.returncode != 0:
            raise BackupCommandError(f"`docker {' '.join(args)}` failed: {done.stderr.strip()[:300]}")


# -- snapshots ---------------------------------------------------------------------------


def _parse_time(value: str) -> datetime:
    """restic's RFC 3339 times with nanoseconds -> an aware datetime."""
    head, _, rest = value.partition(".")
    zone = ""
    if rest:
        digits = "".join(c for c in rest if c.isdigit())
        zone = rest[len(digits):]
        head += "." + digits[:6]
    else:
        head, zone = value[:19], value[19:]
    zone = "+00:00" if zone in ("Z", "") else zone
    return datetime.fromisoformat(head + zone).astimezone(timezone.utc)


@dataclass(frozen=True)
class Snapshot:
    short_id: str
    time: datetime
    size: Optional[int]  # bytes the snapshot holds (restic's summary.total_bytes_processed)
    added: Optional[int]  # bytes it added to the repository
    tags: tuple[str, ...]

    @property
    def drills(self) -> list[tuple[str, datetime]]:
        """(pass|fail, when) of each drill recorded on this snapshot."""
        found = []
        for tag in self.tags:
            if tag.startswith(DRILL_TAG_PREFIX):
                result, _, stamp = tag[len(DRILL_TAG_PREFIX):].partition("-")
                try:
                    found.append((result, datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)))
                except ValueError:
                    continue
        return found


def parse_snapshots(text: str) -> list[Snapshot]:
    """`restic snapshots --json`, oldest first."""
    try:
        raw = json.loads(text or "[]")
    except json.JSONDecodeError as exc:
        raise BackupCommandError(f"the snapshot list is not JSON ({exc})") from exc
    raw = raw or []
    # Anything but restic's list of snapshot objects (a wrong container, a proxy's page) is refused
    # as what it is, not misread.
    if not isinstance(raw, list) or not all(isinstance(e, dict) and "time" in e and ("id" in e or "short_id" in e)
                                            for e in raw):
        raise BackupCommandError("the snapshot list is not restic's `snapshots --json` output: is `backup` the "
                                 "commstack backup container on this Docker host?")
    snapshots = []
    for entry in raw:
        summary = entry.get("summary") or {}
        snapshots.append(Snapshot(short_id=entry.get("short_id") or entry["id"][:8], time=_parse_time(entry["time"]),
                                  size=summary.get("total_bytes_processed"), added=summary.get("data_added"),
                                  tags=tuple(entry.get("tags") or ())))
    return sorted(snapshots, key=lambda s: s.time)


def last_drill(snapshots: Sequence[Snapshot]) -> Optional[tuple[str, datetime, Snapshot]]:
    drills = [(result, when, snap) for snap in snapshots for result, when in snap.drills]
    return max(drills, key=lambda d: d[1]) if drills else None


def human_size(size: Optional[int]) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def human_age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def format_snapshots(snapshots: Sequence[Snapshot], now: Optional[datetime] = None) -> str:
    now = now or datetime.now(timezone.utc)
    if not snapshots:
        return "no snapshots yet: take one with `./scripts/commstack backup`"
    lines = [f"{'ID':<8}  {'TIME (UTC)':<19}  {'AGE':>10}  {'SIZE':>10}  {'ADDED':>10}  DRILL"]
    for snap in reversed(snapshots):
        drill = max(snap.drills, key=lambda d: d[1])[0] if snap.drills else ""
        lines.append(f"{snap.short_id:<8}  {snap.time:%Y-%m-%d %H:%M:%S}  {human_age((now - snap.time).total_seconds()):>10}  "
                     f"{human_size(snap.size):>10}  {human_size(snap.added):>10}  {drill}".rstrip())
    lines.append(f"{len(snapshots)} snapshot(s); restore one with `./scripts/commstack restore --snapshot ID`")
    return "\n".join(lines)


def list_snapshots(runner: Runner) -> list[Snapshot]:
    done = runner.script("snapshots.sh", capture=True)
    if done.returncode != 0:
        raise BackupCommandError((done.stderr or done.stdout).strip().splitlines()[-1] if (done.stderr or done.stdout).strip()
                                 else f"snapshots.sh exited with {done.returncode}")
    return parse_snapshots(done.stdout)


# -- the commands ------------------------------------------------------------------------


def add_runner_arguments(parser) -> None:
    parser.add_argument("--docker-host", help="the stack's Docker engine (default: DOCKER_HOST or the local socket), "
                                              "e.g. ssh://deploy@home.example.org")
    parser.add_argument("--scripts-dir", metavar="DIR", help="run the backup job's scripts from DIR on this machine "
                                                             "instead of in the backup container")


def runner_from_args(args: Any) -> Runner:
    return Runner(scripts_dir=getattr(args, "scripts_dir", None), docker_host=getattr(args, "docker_host", None))


def add_arguments(parser) -> None:
    """`backup`: take one snapshot now."""
    add_runner_arguments(parser)
    parser.add_argument("--drill", action="store_true", help="run the restore drill after the backup")


def _report(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 1


def main(args: Any, runner: Optional[Runner] = None) -> int:
    runner = runner or runner_from_args(args)
    try:
        done = runner.script("backup.sh")
        if done.returncode != 0:
            print(f"error: the backup failed (exit {done.returncode}); see the messages above", file=sys.stderr)
            return 1
        if getattr(args, "drill", False):
            drill = runner.script("drill.sh")
            if drill.returncode != 0:
                print("error: the restore drill failed; see the messages above", file=sys.stderr)
                return 1
    except BackupCommandError as exc:
        return _report(exc)
    return 0


def snapshots_main(args: Any, runner: Optional[Runner] = None, now: Optional[datetime] = None) -> int:
    runner = runner or runner_from_args(args)
    try:
        snapshots = list_snapshots(runner)
    except BackupCommandError as exc:
        return _report(exc)
    if getattr(args, "json", False):
        print(json.dumps([{"id": s.short_id, "time": s.time.isoformat(), "size": s.size, "added": s.added,
                           "tags": list(s.tags)} for s in snapshots], indent=2))
    else:
        print(format_snapshots(snapshots, now))
    return 0


def restore_main(args: Any, runner: Optional[Runner] = None) -> int:
    runner = runner or runner_from_args(args)
    env = {"RESTORE_OVERWRITE": "1"} if getattr(args, "overwrite", False) else {}
    script_args = [args.snapshot] if getattr(args, "snapshot", None) else []
    stopped: list[str] = []
    try:
        if getattr(args, "stop_services", False):
            stopped = runner.services_to_stop()
            if stopped:
                print(f"stopping {' '.join(stopped)}", file=sys.stderr)
                runner.docker("stop", *stopped)
        done = runner.script("restore.sh", *script_args, env=env)
        if done.returncode != 0:
            hint = (f"; {' '.join(stopped)} stay stopped: fix the cause and run restore again, or start them with "
                    f"`docker start {' '.join(stopped)}`") if stopped else ""
            print(f"error: the restore did not run to the end (exit {done.returncode}){hint}", file=sys.stderr)
            return 1
        if stopped:
            print(f"starting {' '.join(stopped)}", file=sys.stderr)
            runner.docker("start", *stopped)
    except BackupCommandError as exc:
        return _report(exc)
    return 0


def backups_arguments(parser) -> None:
    add_runner_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the snapshots as JSON")


def restore_arguments(parser) -> None:
    add_runner_arguments(parser)
    parser.add_argument("--snapshot", help="snapshot ID to restore (default: the newest)")
    parser.add_argument("--stop-services", action="store_true",
                        help="stop Synapse and the bridges first and start them again after (Docker host only)")
    parser.add_argument("--overwrite", action="store_true", help="replace the live databases and media")


# -- doctor ------------------------------------------------------------------------------


def backup_status(snapshots: Sequence[Snapshot], now: Optional[datetime] = None) -> list[tuple[str, bool, str, str]]:
    """(check name, ok, detail, hint) for the newest snapshot's age and the last drill."""
    now = now or datetime.now(timezone.utc)
    if not snapshots:
        return [("backup newest", False, "no snapshot in the repository",
                 "take one: ./scripts/commstack backup (and check `docker logs backup`)")]
    newest = snapshots[-1]
    age = (now - newest.time).total_seconds()
    rows = [("backup newest", age <= MAX_BACKUP_AGE_HOURS * 3600,
             f"{newest.short_id}, {human_age(age)} old, {human_size(newest.size)}",
             "the daily backup has not run: see `docker logs backup`, then ./scripts/commstack backup")]
    drill = last_drill(snapshots)
    if drill is None:
        rows.append(("backup drill", False, "no restore drill recorded yet",
                     "run one: ./scripts/commstack backup --drill"))
    else:
        result, when, snap = drill
        drill_age = (now - when).total_seconds()
        ok = result == "pass" and drill_age <= MAX_DRILL_AGE_DAYS * 86400
        rows.append(("backup drill", ok, f"{result} on {snap.short_id}, {human_age(drill_age)} ago",
                     "see `docker logs backup`; run ./scripts/commstack backup --drill" if result != "pass"
                     else "the weekly drill has not run: see `docker logs backup`"))
    return rows
