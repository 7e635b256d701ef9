"""The backup job's own scripts (configs/backup, with the rendered env.sh) run for real, with the pinned
restic built from the Go module proxy, against the harness's PostgreSQL and Synapse: a backup to a local
repository and to moto's S3 server, a wipe, a restore, and Synapse back with the same signing key, users,
history and media. Also: a wrong password or a damaged repository changes nothing; the drill catches a
damaged snapshot; a restore refuses while the stack runs and over live data unless told.

This module boots a harness of its own: it stops, wipes and restarts Synapse.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
import requests

from commstack.checks import doctor
from commstack.operations import backup as backup_cli
from commstack.operations.admin import register_user
from components.matrix import backup as component
from tests.integration import gobuild, loopback
from tests.integration.harness import PG_BIN, SYNAPSE_AFTER_GATE, start, wait_until
from tests.integration.loopback import LOOPBACK, host_path

ROOM_TEXTS = [f"before the disk died {i} {secrets.token_hex(3)}" for i in range(3)]


@pytest.fixture(scope="module")
def stack():
    restic = gobuild.binary("restic")
    booted = start()
    try:
        # The postgres image's entrypoint gives the superuser the password of POSTGRES_PASSWORD_FILE at initdb;
        # the harness's initdb leaves it to the socket, and the backup job logs in over TCP.
        password = booted.rendered.text("postgres", "/run/secrets/postgres-password")
        done = booted.psql_superuser("-c", f"alter role postgres password '{password}'")
        assert done.returncode == 0, done.stderr
        yield SimpleNamespace(harness=booted, restic=restic, jobs={})
    finally:
        booted.stop()


def job(stack, name: str, repository: str | None = None, s3: bool = False) -> Path:
    """The backup container's files for loopback in DIR/<name>/commstack; returns that scripts dir."""
    if name in stack.jobs:
        return stack.jobs[name]
    harness = stack.harness
    rendered = harness.rendered.files[component.CONTAINER]
    root = harness.root / f"backup-{name}"
    scripts = root / "commstack"
    scripts.mkdir(parents=True)
    for script in component.SCRIPTS:
        (scripts / script).write_text(rendered[f"{component.SCRIPTS_DIR}/{script}"])
    credentials = None
    if s3:
        credentials = root / "s3-credentials.sh"
        # moto takes any key pair; the file has the shape the program renders.
        credentials.write_text(component.render_s3_credentials("testing-key-id", "testing-secret-key"))
    (scripts / "env.sh").write_text(loopback.backup_env(
        rendered[component.ENV_PATH], root=harness.root, job_root=root, ports=harness.ports, tools=[str(stack.restic.parent), str(PG_BIN)],
        repository=repository, s3_credentials=str(credentials) if credentials else None))
    for path in (component.PASSWORD_FILE, component.PGPASS_PATH):
        target = host_path(root, "backup", path)
        target.parent.mkdir(parents=True, exist_ok=True)
        content = rendered[path]
        target.write_text(loopback.backup_pgpass(content, ports=harness.ports) if path == component.PGPASS_PATH else content)
        target.chmod(0o600)
    stack.jobs[name] = scripts
    return scripts


def run(scripts: Path, script: str, *args: str, **settings: str) -> subprocess.CompletedProcess:
    """Runs one of the job's scripts; `settings` override env.sh's (in a copy of the scripts dir)
    except RESTORE_OVERWRITE, which the CLI passes in the environment."""
    env = {**os.environ}
    if "RESTORE_OVERWRITE" in settings:
        env["RESTORE_OVERWRITE"] = settings.pop("RESTORE_OVERWRITE")
    if settings:
        variant = scripts.parent / f"commstack-{secrets.token_hex(4)}"
        shutil.copytree(scripts, variant)
        with (variant / "env.sh").open("a") as env_sh:
            env_sh.writelines(f"export {key}={shlex.quote(value)}\n" for key, value in settings.items())
        scripts = variant
    return subprocess.run(["sh", str(scripts / script), *args], capture_output=True, text=True, env=env, timeout=240)


def s3_repository(stack) -> str:
    host, port = stack.harness.moto.get_host_and_port()
    return component.s3_repository_url(f"http://{host}:{port}", "matrix-backups")


# -- Matrix client calls -------------------------------------------------------------------------


def login(base: str, user_id: str, password: str) -> str:
    response = requests.post(f"{base}/_matrix/client/v3/login", timeout=10, json={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user_id}, "password": password})
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def authed(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def seed_history(stack) -> SimpleNamespace:
    harness = stack.harness
    base = harness.synapse_url
    secret = harness.rendered.yaml("synapse", "/data/homeserver.yaml")["registration_shared_secret"]
    password = secrets.token_urlsafe(18)
    user_id = register_user(base, secret, f"alice-{secrets.token_hex(3)}", password, admin=False)
    register_user(base, secret, f"bob-{secrets.token_hex(3)}", secrets.token_urlsafe(18), admin=False)
    token = login(base, user_id, password)
    room = requests.post(f"{base}/_matrix/client/v3/createRoom", headers=authed(token), timeout=10,
                         json={"name": "before the backup"}).json()["room_id"]
    for i, text in enumerate(ROOM_TEXTS):
        sent = requests.put(f"{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/t{i}", headers=authed(token),
                            timeout=10, json={"msgtype": "m.text", "body": text})
        assert sent.status_code == 200, sent.text
    image = b"\x89PNG\r\n\x1a\n" + secrets.token_bytes(40_000)
    uploaded = requests.post(f"{base}/_matrix/media/v3/upload?filename=photo.png", data=image, timeout=20,
                             headers={**authed(token), "Content-Type": "image/png"})
    assert uploaded.status_code == 200, uploaded.text
    mxc = uploaded.json()["content_uri"]
    requests.put(f"{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/img", headers=authed(token), timeout=10,
                 json={"msgtype": "m.image", "body": "photo.png", "url": mxc}).raise_for_status()
    return SimpleNamespace(user_id=user_id, password=password, room=room, mxc=mxc,
                           image_sha256=hashlib.sha256(image).hexdigest())


def server_keys(base: str) -> dict:
    return requests.get(f"{base}/_matrix/key/v2/server", timeout=10).json()["verify_keys"]


def assert_everything_is_back(stack, seeded: SimpleNamespace, keys_before: dict) -> None:
    base = stack.harness.synapse_url
    assert server_keys(base) == keys_before  # same signing key: other servers still trust us
    token = login(base, seeded.user_id, seeded.password)  # the same password works
    messages = requests.get(f"{base}/_matrix/client/v3/rooms/{seeded.room}/messages?dir=b&limit=50",
                            headers=authed(token), timeout=10).json()["chunk"]
    bodies = [e["content"].get("body") for e in messages if e["type"] == "m.room.message"]
    assert set(ROOM_TEXTS) <= set(bodies) and "photo.png" in bodies
    server, media_id = seeded.mxc[len("mxc://"):].split("/")
    image = requests.get(f"{base}/_matrix/client/v1/media/download/{server}/{media_id}", headers=authed(token),
                         timeout=20)
    assert image.status_code == 200, image.text[:300]
    assert hashlib.sha256(image.content).hexdigest() == seeded.image_sha256


# -- Synapse and the data ------------------------------------------------------------------------


def synapse_service(harness):
    return next(s for s in reversed(harness.services) if s.name == "synapse")


def stop_synapse(harness) -> list[str]:
    """What `restore --stop-services` does: the bridges and Synapse stopped (SIGTERM); returns the bridges."""
    bridges = sorted(harness.bridges)
    for kind in bridges:
        harness.stop_bridge(kind)
    service = synapse_service(harness)
    service.process.terminate()
    service.process.wait(timeout=30)
    listed = ",".join(f"'{db}'" for db in databases(harness))
    # Their connections close a moment after the processes exit.
    wait_until("the connections to close", lambda: harness.psql_superuser(
        "-At", "-c", f"select count(*) from pg_stat_activity where datname in ({listed})").stdout.strip() == "0")
    return bridges


def start_synapse(harness, bridges: list[str] = ()) -> None:
    """Synapse again from the files on disk as they are now (the restored signing key included), then the bridges."""
    config = host_path(harness.root, "synapse", "/data/homeserver.yaml")
    service = harness.spawn("synapse", [sys.executable, "-c", SYNAPSE_AFTER_GATE, str(harness.synapse_gate),
                                        str(config)], cwd=str(config.parent))
    wait_until("synapse", lambda: requests.get(f"{harness.synapse_url}/_matrix/client/versions", timeout=1).ok,
               service.process, service.log, timeout=120)
    for kind in bridges:
        harness.start_bridge(kind)


def databases(harness) -> list[str]:
    return harness.rendered.text(component.CONTAINER, component.ENV_PATH).split("DATABASES='", 1)[1].split("'", 1)[0].split()


def fingerprint(harness) -> tuple:
    """What a restore would change: every table's row count, and the media files."""
    counts = []
    for db in databases(harness):
        done = harness.psql_superuser("-At", "-d", db, "-c", (
            "select relname, (xpath('/row/c/text()', query_to_xml(format('select count(*) as c from %I.%I', "
            "schemaname, relname), false, true, '')))[1]::text from pg_stat_user_tables order by 1"))
        assert done.returncode == 0, done.stderr
        counts.append((db, done.stdout))
    media = host_path(harness.root, "synapse", "/data/media_store")
    files = sorted((str(p.relative_to(media)), hashlib.sha256(p.read_bytes()).hexdigest())
                   for p in media.rglob("*") if p.is_file())
    return tuple(counts), tuple(files)


def wipe(harness) -> None:
    """The dead disk: no databases, no media, no signing key."""
    for db in databases(harness):
        done = harness.psql_superuser("-c", f"drop database {db}")
        assert done.returncode == 0, done.stderr
    shutil.rmtree(host_path(harness.root, "synapse", "/data/media_store"))
    host_path(harness.root, "synapse", "/data/media_store").mkdir()
    host_path(harness.root, "synapse", "/data/signing.key").unlink()


def damaged_copy(stack, source: Path, name: str) -> Path:
    copy = source.parent / name
    shutil.copytree(source, copy)
    for pack in (copy / "data").rglob("*"):
        if pack.is_file():
            data = bytearray(pack.read_bytes())
            for at in range(0, len(data), 97):
                data[at] ^= 0xFF
            pack.write_bytes(bytes(data))
    return copy


# -- the proof ------------------------------------------------------------------------------------


def test_backup_wipe_restore_brings_everything_back(stack):
    harness = stack.harness
    seeded = seed_history(stack)
    keys_before = server_keys(harness.synapse_url)
    signing_key = host_path(harness.root, "synapse", "/data/signing.key").read_bytes()

    local = job(stack, "local")
    s3 = job(stack, "s3", repository=s3_repository(stack), s3=True)
    # The bucket exists before the first backup: the program creates it on AWS, and an S3-compatible one is named.
    bucket = boto3.client("s3", endpoint_url=f"http://{LOOPBACK}:{harness.moto.get_host_and_port()[1]}",
                          aws_access_key_id="testing-key-id", aws_secret_access_key="testing-secret-key",
                          region_name="us-east-1")
    bucket.create_bucket(Bucket="matrix-backups")
    for scripts in (local, s3):
        done = run(scripts, "backup.sh")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "created the backup repository" in done.stdout
        assert run(scripts, "health.sh").returncode == 0
    repository = Path(local.parent / "backup" / component.LOCAL_REPOSITORY.lstrip("/"))
    assert (repository / "config").is_file()
    objects = bucket.list_objects_v2(Bucket="matrix-backups", Prefix="restic/")
    assert any(o["Key"] == "restic/config" for o in objects["Contents"])

    # The snapshot holds the dumps, the media and the key (and nothing in plaintext in S3).
    listing = subprocess.run([str(stack.restic), "ls", "latest", "--host", component.BACKUP_HOST],
                             env={**os.environ, "RESTIC_REPOSITORY": str(repository),
                                  "RESTIC_PASSWORD_FILE": str(local.parent / "backup/run/secrets/restic-password")},
                             capture_output=True, text=True, check=True).stdout
    for db in databases(harness):
        assert f"/postgres/{db}.dump" in listing
    assert "/local_content/" in listing and "/signing.key" in listing

    # A restore refuses while Synapse holds the database open.
    refused = run(local, "restore.sh")
    assert refused.returncode == 1 and "the stack is running" in refused.stderr, refused.stderr
    bridges = stop_synapse(harness)
    before = fingerprint(harness)
    # ... and over live data unless told.
    refused = run(local, "restore.sh")
    assert refused.returncode == 1 and "holds live data" in refused.stderr, refused.stderr
    # A wrong password or a damaged repository: a clear error, nothing changed (even with overwrite).
    wrong = local.parent / "wrong-password"
    wrong.write_text("not-the-password\n")
    refused = run(local, "restore.sh", RESTORE_OVERWRITE="1", RESTIC_PASSWORD_FILE=str(wrong))
    assert refused.returncode == 1 and "wrong password for the backup repository" in refused.stderr, refused.stderr
    damaged = damaged_copy(stack, repository, "repository-damaged")
    refused = run(local, "restore.sh", RESTORE_OVERWRITE="1", RESTIC_REPOSITORY=str(damaged))
    assert refused.returncode == 1 and "could not be read back" in refused.stderr, refused.stderr
    (damaged / "config").write_bytes(b"garbage")
    refused = run(local, "restore.sh", RESTORE_OVERWRITE="1", RESTIC_REPOSITORY=str(damaged))
    assert refused.returncode == 1 and "cannot open the backup repository" in refused.stderr, refused.stderr
    assert fingerprint(harness) == before

    # The dead disk, then the restore from S3 and from the local volume.
    for scripts in (s3, local):
        wipe(harness)
        done = run(scripts, "restore.sh")
        assert done.returncode == 0, done.stdout + done.stderr
        assert host_path(harness.root, "synapse", "/data/signing.key").read_bytes() == signing_key
        start_synapse(harness, bridges)
        assert_everything_is_back(stack, seeded, keys_before)
        stop_synapse(harness)
    start_synapse(harness, bridges)


def test_drill_passes_on_a_good_snapshot_and_catches_a_damaged_one(stack):
    local = job(stack, "local")
    if not (local.parent / "backup" / "repository" / "config").exists():
        assert run(local, "backup.sh").returncode == 0
    done = run(local, "drill.sh")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "restore drill of snapshot" in done.stdout and "passed" in done.stdout
    assert "drill synapse:" in done.stdout
    # The scratch databases are gone again.
    listed = stack.harness.psql_superuser("-At", "-c", "select datname from pg_database where datname like 'drill_%'")
    assert listed.stdout.strip() == ""

    repository = local.parent / "backup" / "repository"
    damaged = damaged_copy(stack, repository, "repository-drill-damaged")
    failed = run(local, "drill.sh", RESTIC_REPOSITORY=str(damaged))
    assert failed.returncode == 1 and "restore drill of snapshot" in failed.stderr and "failed" in failed.stderr

    # Both results are recorded in the repositories, where `backups` and `doctor` read them.
    runner = backup_cli.Runner(scripts_dir=str(local))
    snapshots = backup_cli.list_snapshots(runner)
    result, _, _ = backup_cli.last_drill(snapshots)
    assert result == "pass"
    rows = {name: ok for name, ok, _, _ in backup_cli.backup_status(snapshots)}
    assert rows == {"backup newest": True, "backup drill": True}
    listed = run(local, "snapshots.sh", RESTIC_REPOSITORY=str(damaged))
    assert listed.returncode == 0
    assert backup_cli.last_drill(backup_cli.parse_snapshots(listed.stdout))[0] == "fail"


def test_cli_backup_backups_and_restore_against_the_harness(stack, capsys):
    local = job(stack, "local")
    args = SimpleNamespace(scripts_dir=str(local), docker_host=None, drill=True, json=False)
    assert backup_cli.main(args) == 0  # a backup, then the drill
    assert backup_cli.snapshots_main(args) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["ID", "TIME", "(UTC)", "AGE", "SIZE", "ADDED", "DRILL"]
    newest = table.splitlines()[1].split()
    assert newest[3:5] == ["0", "min"] and newest[-1] == "pass" and newest[6] in ("KiB", "MiB")
    # doctor reads the same repository: a fresh backup and a passed drill.
    rows = doctor.check_backups(SimpleNamespace(backup_scripts_dir=str(local), backup_docker_host=None))
    assert [(c.name, c.status) for c in rows] == [("backup newest", "PASS"), ("backup drill", "PASS")]
    # A restore into the running stack refuses, and says how to stop it.
    restore = SimpleNamespace(scripts_dir=str(local), docker_host=None, snapshot=None, overwrite=True,
                              stop_services=False)
    assert backup_cli.restore_main(restore) == 1
    restore.stop_services = True
    assert backup_cli.restore_main(restore) == 1
    assert "--stop-services needs the Docker host" in capsys.readouterr().err
