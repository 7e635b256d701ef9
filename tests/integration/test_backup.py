"""The backup job's own scripts (configs/backup, with the rendered env.sh) run for real, with the pinned
restic built from the Go module proxy, against the harness's PostgreSQL and Synapse: a backup to a local
repository, to restic's rest-server in --append-only mode (the pinned one, built from the Go module proxy)
and to moto's S3 server with IAM enforced and the program's own job policy; a wipe, a restore from each, and
Synapse back with the same signing key, users, history and media. Also: the host's credentials cannot delete
or replace a snapshot in either off-host repository, while the admin's prune works; a wrong password or a
damaged repository changes nothing; the drill catches a damaged snapshot; a restore refuses while the stack
runs and over live data unless told; a failed backup leaves no dump behind.

What moto proves and what it does not: moto (pinned in requirements.txt) enforces the IAM user's own policy
documents once authentication is on, Allow and explicit Deny by action and resource, and maps a DELETE with a
versionId to s3:DeleteObjectVersion; it takes condition operators it does not know (IpAddress, Bool) as met,
and evaluates a bucket policy without its principals or conditions (so the program's bucket policy is not
stored here). The conditions (aws:SourceIp, aws:SecureTransport) and the bucket policy's denies are proven by
a real policy evaluator in tests/policy/test_bucket_policies.py.

This module boots a harness of its own: it stops, wipes and restarts Synapse.
"""

from __future__ import annotations

import hashlib
import json
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
from botocore.exceptions import ClientError

from commstack.checks import doctor
from commstack.operations import backup as backup_cli
from commstack.operations.admin import register_user
from components.matrix import backup as component
from components.matrix.backup_bucket import job_policy, lifecycle_rules
from tests.certificates import self_signed
from tests.integration import gobuild, loopback
from tests.integration.harness import PG_BIN, SYNAPSE_AFTER_GATE, free_port, start, tcp_open, wait_until
from tests.integration.loopback import LOOPBACK, host_path

ROOM_TEXTS = [f"before the disk died {i} {secrets.token_hex(3)}" for i in range(3)]
BUCKET = "matrix-backups"
REST_USER = "commstack"  # rest-server --private-repos: this user reaches /commstack/ only


@pytest.fixture(scope="module")
def stack():
    restic = gobuild.binary("restic")
    rest_server = gobuild.binary("rest-server")
    booted = start()
    try:
        # The postgres image's entrypoint gives the superuser the password of POSTGRES_PASSWORD_FILE at initdb;
        # the harness's initdb leaves it to the socket, and the backup job logs in over TCP.
        password = booted.rendered.text("postgres", "/run/secrets/postgres-password")
        done = booted.psql_superuser("-c", f"alter role postgres password '{password}'")
        assert done.returncode == 0, done.stderr
        yield SimpleNamespace(harness=booted, restic=restic, rest_server=rest_server, jobs={}, off_host=None)
    finally:
        booted.stop()


def job(stack, name: str, repository: str | None = None, credentials: dict[str, str] | None = None,
        extra: dict[str, str] | None = None) -> Path:
    """The backup container's files for loopback in DIR/<name>/commstack; returns that scripts dir. With
    `credentials` (environment variables), the off-host repository's secret file, as the program renders it."""
    if name in stack.jobs:
        return stack.jobs[name]
    harness = stack.harness
    rendered = harness.rendered.files[component.CONTAINER]
    root = harness.root / f"backup-{name}"
    scripts = root / "commstack"
    scripts.mkdir(parents=True)
    for script in component.SCRIPTS:
        (scripts / script).write_text(rendered[f"{component.SCRIPTS_DIR}/{script}"])
    secret_file = None
    if credentials:
        secret_file = root / "repository-credentials.sh"
        secret_file.write_text(component.render_credentials(credentials))
        secret_file.chmod(0o600)
    (scripts / "env.sh").write_text(loopback.backup_env(
        rendered[component.ENV_PATH], root=harness.root, job_root=root, ports=harness.ports, tools=[str(stack.restic.parent), str(PG_BIN)],
        repository=repository, credentials=str(secret_file) if secret_file else None, extra=extra))
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


def restic_as(stack, scripts: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """restic with a job's repository, password and credentials (what the host holds), plus `env`."""
    script = '. "$0/env.sh" && if [ -n "$CREDENTIALS_FILE" ]; then . "$CREDENTIALS_FILE"; fi && exec restic "$@"'
    return subprocess.run(["sh", "-c", script, str(scripts), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


# -- off-host repositories -----------------------------------------------------------------------


def _start_rest_server(stack) -> SimpleNamespace:
    """The pinned rest-server as docs/operations.md runs it on the backup machine: --append-only,
    --private-repos, TLS, bcrypt htpasswd."""
    import bcrypt

    harness = stack.harness
    root = harness.root / "rest-server"
    data = root / "data"
    data.mkdir(parents=True)
    cert, key = self_signed(root, "commstack backup server (test)", ips=(LOOPBACK,), stem="rest-server")
    password = secrets.token_urlsafe(24)
    htpasswd = root / "htpasswd"
    htpasswd.write_text(f"{REST_USER}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}\n")
    port = free_port()
    service = harness.spawn("rest-server", [
        str(stack.rest_server), "--path", str(data), "--listen", f"{LOOPBACK}:{port}", "--append-only",
        "--private-repos", "--tls", "--tls-cert", str(cert), "--tls-key", str(key), "--htpasswd-file", str(htpasswd)])
    wait_until("rest-server", lambda: tcp_open(port), service.process, service.log)
    url = f"https://{LOOPBACK}:{port}/{REST_USER}/"
    return SimpleNamespace(url=url, repository=component.rest_repository_url(url), data=data / REST_USER, cert=cert,
                           credentials=component.rest_credentials(REST_USER, password), password=password)


def _start_iam_moto(stack) -> SimpleNamespace:
    """moto's S3 with IAM enforced: the bucket as the program makes it (versioned, its policy, its lifecycle
    rule), the job's IAM user with the program's job policy, and an admin user; then authentication on."""
    harness = stack.harness
    port = free_port()
    service = harness.spawn("moto-iam", [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)])
    wait_until("moto", lambda: tcp_open(port), service.process, service.log)
    endpoint = f"http://{LOOPBACK}:{port}"
    setup = dict(endpoint_url=endpoint, aws_access_key_id="setup", aws_secret_access_key="setup",
                 region_name="us-east-1")
    s3, iam = boto3.client("s3", **setup), boto3.client("iam", **setup)
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    arn = f"arn:aws:s3:::{BUCKET}"
    keys = {}
    for user in ("job", "admin"):
        iam.create_user(UserName=user, Path="/commstack/")
        policy = (job_policy(arn, LOOPBACK) if user == "job" else
                  {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*",
                                                           "Resource": [arn, f"{arn}/*"]}]})
        iam.put_user_policy(UserName=user, PolicyName=f"{user}-policy", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        keys[user] = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    # No bucket policy here: moto evaluates one without its principals and conditions, so the program's (TLS only,
    # the job's denies) would refuse every request; tests/policy/test_bucket_policies.py evaluates it for real.
    rules = [{"ID": r["id"], "Status": r["status"], "Filter": {"Prefix": ""},
              "NoncurrentVersionExpiration": {"NoncurrentDays": r["noncurrent_version_expiration"]["noncurrent_days"]},
              "AbortIncompleteMultipartUpload": {
                  "DaysAfterInitiation": r["abort_incomplete_multipart_upload"]["days_after_initiation"]}}
             for r in lifecycle_rules()]
    s3.put_bucket_lifecycle_configuration(Bucket=BUCKET, LifecycleConfiguration={"Rules": rules})
    # From here on every request needs a user's key and that user's policy must allow it.
    assert requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10).ok
    with pytest.raises(ClientError, match="InvalidAccessKeyId|AccessDenied|InvalidClientTokenId"):
        s3.list_objects_v2(Bucket=BUCKET)

    def client(user: str):
        return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                            aws_access_key_id=keys[user]["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=keys[user]["AWS_SECRET_ACCESS_KEY"])

    return SimpleNamespace(repository=component.s3_repository_url(endpoint, BUCKET), job=keys["job"],
                           admin=keys["admin"], client=client)


def off_host(stack) -> SimpleNamespace:
    """The two off-host repositories and a job for each, started once per module."""
    if stack.off_host is None:
        rest, s3 = _start_rest_server(stack), _start_iam_moto(stack)
        # What the render of backupTarget rest / aws sets: credentials from a secret file, no pruning on the host.
        rest_job = job(stack, "rest", repository=rest.repository, credentials=rest.credentials,
                       extra={"HOST_PRUNES": "0", "RESTIC_CACERT": str(rest.cert)})
        s3_job = job(stack, "s3", repository=s3.repository, credentials=s3.job,
                     extra={"HOST_PRUNES": "0", "AWS_DEFAULT_REGION": "us-east-1"})
        stack.off_host = SimpleNamespace(rest=rest, s3=s3, rest_job=rest_job, s3_job=s3_job)
    return stack.off_host


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
                                        str(config)], cwd=str(config.parent), env=harness._synapse_env("synapse"))
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
    remote = off_host(stack)
    for scripts in (local, remote.rest_job, remote.s3_job):
        done = run(scripts, "backup.sh")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "created the backup repository" in done.stdout
        assert run(scripts, "health.sh").returncode == 0
        assert not (scripts.parent / "backup" / component.STAGING_DIR.lstrip("/") / "postgres").exists()
    repository = Path(local.parent / "backup" / component.LOCAL_REPOSITORY.lstrip("/"))
    assert (repository / "config").is_file()
    assert (remote.rest.data / "config").is_file()
    objects = remote.s3.client("admin").list_objects_v2(Bucket=BUCKET, Prefix="restic/")
    assert any(o["Key"] == "restic/config" for o in objects["Contents"])

    # The snapshot holds the dumps, the media and the key (and nothing in plaintext off the host).
    listing = subprocess.run([str(stack.restic), "ls", "latest", "--host", component.BACKUP_HOST],
                             env={**os.environ, "RESTIC_REPOSITORY": str(repository),
                                  "RESTIC_PASSWORD_FILE": str(local.parent / "backup/run/secrets/restic-password")},
                             capture_output=True, text=True, check=True).stdout
    for db in databases(harness):
        assert f"/postgres/{db}.dump" in listing
    assert "/local_content/" in listing and "/signing.key" in listing
    for pack in remote.rest.data.rglob("*"):
        if pack.is_file():
            assert ROOM_TEXTS[0].encode() not in pack.read_bytes() and signing_key not in pack.read_bytes()

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
    # Nothing read back stays behind after a refused or failed restore.
    assert not (local.parent / "backup" / component.STAGING_DIR.lstrip("/") / "restore").exists()

    # The dead disk, then the restore from each repository, the host reading with its own credentials.
    for scripts in (remote.s3_job, remote.rest_job, local):
        wipe(harness)
        done = run(scripts, "restore.sh")
        assert done.returncode == 0, done.stdout + done.stderr
        assert host_path(harness.root, "synapse", "/data/signing.key").read_bytes() == signing_key
        start_synapse(harness, bridges)
        assert_everything_is_back(stack, seeded, keys_before)
        stop_synapse(harness)
    start_synapse(harness, bridges)


def _snapshot_ids(stack, scripts: Path) -> list[str]:
    done = restic_as(stack, scripts, "snapshots", "--no-lock", "--no-cache", "--json", "--tag", "commstack")
    assert done.returncode == 0, done.stderr
    return [s["id"] for s in json.loads(done.stdout or "[]")]


def test_the_hosts_credentials_cannot_erase_history_but_the_admin_can_prune(stack, monkeypatch):
    remote = off_host(stack)
    for scripts in (remote.rest_job, remote.s3_job):
        # Two snapshots at least, so the retention policy below has one to forget.
        while len(_snapshot_ids(stack, scripts)) < 2:
            assert run(scripts, "backup.sh").returncode == 0

    # rest-server --append-only: restic's forget, a raw DELETE and an overwrite are all refused.
    rest, scripts = remote.rest, remote.rest_job
    ids = _snapshot_ids(stack, scripts)
    # (restic reports the refusal and still exits 0: what counts is that the snapshot is there.)
    forget = restic_as(stack, scripts, "forget", ids[0])
    assert "unable to remove snapshot" in forget.stderr, forget.stdout + forget.stderr
    assert _snapshot_ids(stack, scripts) == ids
    snapshot_file = rest.data / "snapshots" / ids[0]
    original = snapshot_file.read_bytes()
    auth, verify = (REST_USER, rest.password), str(rest.cert)
    assert requests.delete(f"{rest.url}snapshots/{ids[0]}", auth=auth, verify=verify, timeout=10).status_code == 403
    assert requests.post(f"{rest.url}snapshots/{ids[0]}", data=b"garbage", auth=auth, verify=verify,
                         timeout=10).status_code >= 400
    assert requests.delete(f"{rest.url}config", auth=auth, verify=verify, timeout=10).status_code == 403
    assert snapshot_file.read_bytes() == original and (rest.data / "config").is_file()

    # S3 with the program's job policy, IAM enforced: no delete but of a lock, no version delete, no rule change.
    s3, scripts = remote.s3, remote.s3_job
    ids = _snapshot_ids(stack, scripts)
    host, admin = s3.client("job"), s3.client("admin")
    key = f"restic/snapshots/{ids[0]}"
    forget = restic_as(stack, scripts, "forget", ids[0])
    assert "unable to remove snapshot" in forget.stderr and "Access Denied" in forget.stderr, forget.stderr
    assert _snapshot_ids(stack, scripts) == ids
    version, = admin.list_object_versions(Bucket=BUCKET, Prefix=key)["Versions"]
    for attempt in (lambda: host.delete_object(Bucket=BUCKET, Key=key),
                    lambda: host.delete_object(Bucket=BUCKET, Key=key, VersionId=version["VersionId"]),
                    lambda: host.put_bucket_versioning(Bucket=BUCKET,
                                                       VersioningConfiguration={"Status": "Suspended"}),
                    lambda: host.delete_bucket_lifecycle(Bucket=BUCKET),
                    lambda: host.delete_bucket_policy(Bucket=BUCKET)):
        with pytest.raises(ClientError, match="AccessDenied"):
            attempt()
    # Overwriting only adds a version: the replaced one stays, and the admin brings it back.
    original = admin.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    host.put_object(Bucket=BUCKET, Key=key, Body=b"garbage")
    garbled = restic_as(stack, scripts, "snapshots", "--no-lock", "--no-cache", "--json")
    assert garbled.returncode != 0 or f'"id":"{ids[0]}"' not in garbled.stdout, garbled.stdout
    versions = admin.list_object_versions(Bucket=BUCKET, Prefix=key)["Versions"]
    kept = [v for v in versions if not v["IsLatest"]]
    assert len(versions) == 2 and admin.get_object(Bucket=BUCKET, Key=key, VersionId=kept[0]["VersionId"])[
        "Body"].read() == original
    admin.copy_object(Bucket=BUCKET, Key=key, CopySource={"Bucket": BUCKET, "Key": key,
                                                          "VersionId": kept[0]["VersionId"]})
    assert _snapshot_ids(stack, scripts) == ids

    # The admin prunes: with the admin's own key (S3), on the backup server's own directory (rest-server);
    # through the host's credentials the same prune is refused.
    password = str(scripts.parent / "backup" / component.PASSWORD_FILE.lstrip("/"))
    prune = dict(stack=None, password_file=password, keep_daily=1, keep_weekly=0, keep_monthly=0,
                 keep_drills=1, dry_run=False, restic=str(stack.restic))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name, value in s3.job.items():
        monkeypatch.setenv(name, value)
    assert backup_cli.prune_main(SimpleNamespace(**prune, repository=s3.repository)) == 1
    assert _snapshot_ids(stack, scripts) == ids
    for name, value in s3.admin.items():
        monkeypatch.setenv(name, value)
    assert backup_cli.prune_main(SimpleNamespace(**prune, repository=s3.repository)) == 0
    for name, value in {**rest.credentials, "RESTIC_CACERT": str(rest.cert)}.items():
        monkeypatch.setenv(name, value)
    assert backup_cli.prune_main(SimpleNamespace(**prune, repository=rest.repository)) == 1
    assert backup_cli.prune_main(SimpleNamespace(**prune, repository=str(rest.data))) == 0
    for scripts in (remote.rest_job, remote.s3_job):
        assert len(_snapshot_ids(stack, scripts)) == 1  # one daily kept
        # ... and the host still reads what is left: the drill restores the newest snapshot's dumps.
        drill = run(scripts, "drill.sh")
        assert drill.returncode == 0 and "passed" in drill.stdout, drill.stdout + drill.stderr


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
