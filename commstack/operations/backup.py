"""`python -m commstack backup | backups | restore | backup-prune`: the Matrix backups, by hand.

Each command runs one of the backup job's own scripts (configs/backup/*.sh, placed in the `backup`
container at /commstack), so a manual backup or restore is exactly the scheduled one:

* on the stack's Docker host: `docker exec backup /commstack/<script>` (`--docker-host`, or
  DOCKER_HOST, or the local socket);
* or from a directory holding the scripts and their env.sh (`--scripts-dir`): a machine that
  runs the services without Docker, and the loopback test harness.

`restore` refuses while Synapse or a bridge holds the databases open, and over existing data,
unless told: `--stop-services` stops them first (and starts them again after), `--overwrite`
replaces live data. Nothing here prints the repository password; the scripts read it from a file.

`backup-prune` is the one that deletes: it applies the retention policy to an off-host repository
from the admin's machine, with the admin's own credentials, which the host's job does not have
(components/matrix/backup.py); it runs restic itself, after `restic check`.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

CONTAINER = "backup"
SCRIPTS_DIR = "/commstack"
# The job's restic --host and --tag (components/matrix/backup.py BACKUP_HOST; configs/backup/backup.sh).
BACKUP_HOST = "commstack"
BACKUP_TAG = "commstack"
STOP_LABEL = "commstack.backup.stop-before-restore"
DRILL_TAG_PREFIX = "drill-"
# drill.sh records each drill as a small snapshot of its own (an append-only repository refuses rewriting
# the drilled one's tags): tagged DRILL_RECORD_TAG, drill-<result>-<time> and DRILLED_TAG_PREFIX<snapshot>.
DRILL_RECORD_TAG = "commstack-drill"
DRILLED_TAG_PREFIX = "drilled-"
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
    """`restic snapshots --json`, oldest first; the drills' records (drill.sh) fold into the snapshots they drilled."""
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
    snapshots, drills = [], {}
    for entry in raw:
        tags = tuple(entry.get("tags") or ())
        if DRILL_RECORD_TAG in tags:
            # A drill's record: its result belongs to the snapshot it drilled.
            for tag in tags:
                if tag.startswith(DRILLED_TAG_PREFIX):
                    drills.setdefault(tag[len(DRILLED_TAG_PREFIX):], []).extend(
                        t for t in tags if t.startswith(DRILL_TAG_PREFIX))
            continue
        summary = entry.get("summary") or {}
        snapshots.append(Snapshot(short_id=entry.get("short_id") or entry["id"][:8], time=_parse_time(entry["time"]),
                                  size=summary.get("total_bytes_processed"), added=summary.get("data_added"),
                                  tags=tags))
    snapshots = [replace(snap, tags=snap.tags + tuple(drills.get(snap.short_id, ()))) for snap in snapshots]
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


# -- prune, from the admin's machine -------------------------------------------------------

# What restic forget says, exiting 0 all the same, when the repository refuses to delete a snapshot.
REFUSED_REMOVAL = "unable to remove"
# Drill records kept by a prune: a year of weekly drills.
KEEP_DRILLS = 52
# The schema's default retention (components/settings.py commstack:backupRetention), when neither the stack
# nor the command line says otherwise.
DEFAULT_RETENTION = {"daily": 7, "weekly": 4, "monthly": 6}


@dataclass
class PrunePlan:
    repository: str
    password_file: str
    retention: dict[str, int]
    keep_drills: int = KEEP_DRILLS
    dry_run: bool = False
    restic: str = "restic"


def prune_commands(plan: PrunePlan) -> list[list[str]]:
    """What a prune runs, in order: `restic check` first (a repository that does not check out is left
    alone: damaged, or tampered with by the host), then the retention policy on the stack's snapshots
    (grouped by host only, see configs/backup/backup.sh), a year of drill records, and the prune."""
    base = [plan.restic]
    dry = ["--dry-run"] if plan.dry_run else []
    commands = [
        [*base, "check"],
        [*base, "forget", "--host", BACKUP_HOST, "--tag", BACKUP_TAG, "--group-by", "host",
         "--keep-daily", str(plan.retention["daily"]), "--keep-weekly", str(plan.retention["weekly"]),
         "--keep-monthly", str(plan.retention["monthly"]), *dry],
        [*base, "forget", "--host", BACKUP_HOST, "--tag", DRILL_RECORD_TAG, "--group-by", "host",
         "--keep-last", str(plan.keep_drills), *dry],
    ]
    if not plan.dry_run:
        commands.append([*base, "prune"])
    return commands


def run_prune(plan: PrunePlan, run: Run = subprocess.run) -> int:
    env = {**os.environ, "RESTIC_REPOSITORY": plan.repository, "RESTIC_PASSWORD_FILE": plan.password_file}
    for command in prune_commands(plan):
        try:
            done = run(command, env=env, check=False, text=True, capture_output=True)
        except FileNotFoundError as exc:
            raise BackupCommandError(f"cannot run {plan.restic!r}: install restic (the stack pins "
                                     f"{_pinned_restic()}) or give --restic PATH") from exc
        sys.stdout.write(done.stdout or "")
        sys.stderr.write(done.stderr or "")
        # restic forget reports a snapshot it could not delete and still exits 0 (an append-only repository,
        # a key without delete rights): that is a failure here.
        if done.returncode != 0 or REFUSED_REMOVAL in (done.stderr or ""):
            step = command[1]
            if step == "check":
                raise BackupCommandError(
                    "`restic check` failed, so nothing was deleted: the repository is damaged, or was changed by "
                    "something other than restic (a compromised host?). Find the cause before pruning; see "
                    "docs/operations.md, Backups")
            hint = ""
            if plan.repository.startswith("rest:"):
                hint = (": a rest-server in --append-only mode refuses every delete, by design; prune on the backup "
                        "server itself, against its data directory (--repository /srv/restic/<repository>)")
            elif plan.repository.startswith("s3:"):
                hint = (": the stack's own backup key may not delete; run this with the admin's AWS credentials "
                        "(AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)")
            raise BackupCommandError(f"`restic {step}` failed (exit {done.returncode}){hint}")
    return 0


def _pinned_restic() -> str:
    from components.common import image

    return image("restic")


def _retention_from(args: Any, outputs: dict) -> dict[str, int]:
    retention = dict(DEFAULT_RETENTION)
    stacked = outputs.get("backupRetention")
    if isinstance(stacked, dict):
        retention.update({k: int(v) for k, v in stacked.items() if k in retention})
    for key in retention:
        given = getattr(args, f"keep_{key}", None)
        if given is not None:
            retention[key] = given
    return retention


def prune_main(args: Any, run: Run = subprocess.run) -> int:
    """`backup-prune`: the retention policy on an off-host repository, from the admin's machine."""
    import tempfile

    from commstack.operations.admin import AdminError, stack_outputs

    outputs: dict = {}
    try:
        if getattr(args, "stack", None):
            outputs = stack_outputs(args.stack, show_secrets=not args.password_file)
        repository = args.repository or outputs.get("backupRepository")
        if not repository:
            raise BackupCommandError("give --repository (restic's repository URL or path) or --stack NAME")
        if repository.startswith("/") and not args.repository:
            raise BackupCommandError(f"stack {args.stack} keeps its backups in a volume on the Docker host, whose job "
                                     "prunes it itself; backup-prune is for an off-host repository")
        retention = _retention_from(args, outputs)
        with tempfile.TemporaryDirectory(prefix="commstack-prune-") as scratch:
            password_file = args.password_file
            if not password_file:
                password = outputs.get("backupRepositoryPassword")
                if not password:
                    raise BackupCommandError("give --password-file (the stack's backupRepositoryPassword output) "
                                             "or --stack NAME")
                password_file = os.path.join(scratch, "password")
                descriptor = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(descriptor, "w") as handle:
                    handle.write(password)
            elif not os.path.isfile(password_file):
                raise BackupCommandError(f"--password-file {password_file} is not a file")
            plan = PrunePlan(repository=repository, password_file=password_file, retention=retention,
                             keep_drills=args.keep_drills, dry_run=args.dry_run, restic=args.restic)
            return run_prune(plan, run)
    except (BackupCommandError, AdminError) as exc:
        return _report(exc)


def _at_least_zero(value: str) -> int:
    import argparse

    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return number


def prune_arguments(parser) -> None:
    parser.add_argument("--stack", help="read the repository, its password and the retention from this stack's "
                                        "outputs (the Pulumi CLI)")
    parser.add_argument("--repository", help="restic's repository: s3:..., or the rest-server's data directory on "
                                             "the backup server (default: the stack's backupRepository)")
    parser.add_argument("--password-file", help="a file holding the repository password (default: the stack's "
                                                "backupRepositoryPassword)")
    for key in DEFAULT_RETENTION:
        parser.add_argument(f"--keep-{key}", type=_at_least_zero, metavar="N",
                            help=f"{key} snapshots to keep (default: the stack's backupRetention, else "
                                 f"{DEFAULT_RETENTION[key]})")
    parser.add_argument("--keep-drills", type=_at_least_zero, default=KEEP_DRILLS, metavar="N",
                        help=f"restore-drill records to keep (default {KEEP_DRILLS})")
    parser.add_argument("--dry-run", action="store_true", help="say what would be forgotten; delete nothing")
    parser.add_argument("--restic", default="restic", help="the restic program (default: restic on PATH)")
