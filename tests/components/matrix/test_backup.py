"""The backup job as the program renders it: on by default in dev and prod, its scripts and env.sh, its
repository (a protected volume, an AWS bucket, or an S3-compatible endpoint) and its schedule."""

from __future__ import annotations

import json
import shlex
import subprocess

import pytest

from commstack.devtools import offline
from components.matrix import backup
from components.matrix.backup_bucket import job_policy
from components.settings import SettingsError
from tests.conftest import evaluate, stack_config


def _env(evaluation) -> dict[str, str]:
    text = _files(evaluation)[backup.ENV_PATH]
    values = {}
    for line in text.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            values[key] = shlex.split(value)[0] if value else ""
    return values


def _files(evaluation) -> dict[str, str]:
    container = evaluation.container(backup.CONTAINER)
    uploads = offline.unwrap(container.inputs["uploads"])
    return {u["file"]: offline.unwrap(u["content"]) for u in uploads}


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_dev_and_prod_render_the_job_its_repository_and_schedule(stack, dev_evaluation, prod_evaluation):
    evaluation = dev_evaluation if stack == "dev" else prod_evaluation
    env = _env(evaluation)
    files = _files(evaluation)
    assert {f"{backup.SCRIPTS_DIR}/{s}" for s in backup.SCRIPTS} <= set(files)
    for name in backup.SCRIPTS:
        assert files[f"{backup.SCRIPTS_DIR}/{name}"] == (backup.BACKUP_CONFIGS / name).read_text()
    assert env["SCHEDULE_AT"] == "03:30" and env["DRILL_WEEKDAY"] == "7"
    assert (env["KEEP_DAILY"], env["KEEP_WEEKLY"], env["KEEP_MONTHLY"]) == ("7", "4", "6")
    bridges = ["mautrix_whatsapp"] if stack == "dev" else ["mautrix_whatsapp", "mautrix_telegram"]
    assert env["DATABASES"].split() == ["synapse", *bridges]
    assert env["EXCLUDE_TABLE_DATA"] == "e2e_one_time_keys_json"
    container = evaluation.container(backup.CONTAINER)
    assert container.plain_inputs["restart"] == "unless-stopped"
    assert container.plain_inputs["entrypoints"] == ["/bin/sh", "/commstack/schedule.sh"]
    mounts = {v["containerPath"]: v["volumeName"] for v in container.plain_inputs["volumes"]}
    assert mounts[backup.MEDIA_DIR] == "synapse-media"
    outputs = evaluation.plain_stack_outputs
    password = evaluation.named("matrix-backup-repository-password")
    assert password.protect is True
    assert offline.is_secret(evaluation.stack_outputs["backupRepositoryPassword"])
    # The stop list for `restore --stop-services`: Synapse and each bridge.
    label, = container.plain_inputs["labels"]
    assert label["value"].split(",") == ["synapse", *[f"bridge-{b.split('_')[1]}" for b in bridges]]
    if stack == "dev":
        assert env["RESTIC_REPOSITORY"] == backup.LOCAL_REPOSITORY == outputs["backupRepository"]
        volume = evaluation.named("matrix-backup-repository")
        assert volume.protect is True and volume.retain_on_delete is True
        assert mounts[backup.LOCAL_REPOSITORY] == "backup-repository"
        assert env["ACME_DIR"] == "" and env["CREDENTIALS_FILE"] == ""
        # The local volume is the host's own: its job applies the retention policy.
        assert env["HOST_PRUNES"] == "1"
    else:
        bucket = evaluation.named("matrix-backup-bucket-bucket")
        assert env["RESTIC_REPOSITORY"] == f"s3:s3.eu-central-1.amazonaws.com/{bucket.plain_outputs['bucket']}/restic"
        assert outputs["backupRepository"] == env["RESTIC_REPOSITORY"]
        assert backup.LOCAL_REPOSITORY not in mounts
        # Let's Encrypt's store is kept.
        assert env["ACME_DIR"] == backup.ACME_DIR and mounts[backup.ACME_DIR] == "matrix-proxy-acme"
        assert env["CREDENTIALS_FILE"] == backup.CREDENTIALS_FILE and env["AWS_DEFAULT_REGION"] == "eu-central-1"
        # Off the host, the job only adds: the admin prunes (python -m commstack backup-prune).
        assert env["HOST_PRUNES"] == "0"


def test_secret_files_are_secret_and_private(prod_evaluation):
    container = prod_evaluation.container(backup.CONTAINER)
    uploads = {u["file"]: u for u in offline.unwrap(container.inputs["uploads"])}
    for path in (backup.PASSWORD_FILE, backup.PGPASS_PATH, backup.CREDENTIALS_FILE, backup.SIGNING_KEY_FILE):
        assert uploads[path]["permissions"] in ("0400", "0600") and uploads[path]["owner"] == "0", path
    assert offline.is_secret(container.inputs["uploads"])
    # Never in the environment or the command line.
    assert not container.plain_inputs.get("envs")
    key_id = prod_evaluation.named("matrix-backup-bucket-job-key")
    assert key_id.plain_outputs["id"] in offline.unwrap(uploads[backup.CREDENTIALS_FILE]["content"])


def test_the_aws_bucket_is_private_versioned_encrypted_protected_with_a_lifecycle(prod_evaluation):
    bucket = prod_evaluation.named("matrix-backup-bucket-bucket")
    assert bucket.protect is True and bucket.retain_on_delete is True and bucket.plain_inputs["forceDestroy"] is False
    children = {r.type.split(":")[-1]: r for r in prod_evaluation.children_of(bucket.parent)}
    block = children["BucketPublicAccessBlock"].plain_inputs
    assert all(block[k] is True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls",
                                           "restrictPublicBuckets"))
    assert children["BucketVersioning"].plain_inputs["versioningConfiguration"]["status"] == "Enabled"
    sse = children["BucketServerSideEncryptionConfiguration"].plain_inputs["rules"][0]
    assert sse["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "AES256"
    rule, = children["BucketLifecycleConfiguration"].plain_inputs["rules"]
    assert rule["status"] == "Enabled" and rule["noncurrentVersionExpiration"]["noncurrentDays"] == 30
    assert children["BucketOwnershipControls"].plain_inputs["rule"]["objectOwnership"] == "BucketOwnerEnforced"
    assert rule["expiration"]["expiredObjectDeleteMarker"] is True
    # The job's credential: this bucket's repository, from the Docker host's address only (prod's publicIp).
    policy = json.loads(children["UserPolicy"].plain_inputs["policy"])
    arn = bucket.plain_outputs["arn"]
    assert policy == job_policy(arn, "203.0.113.10")
    allowed = {a for s in policy["Statement"] if s["Effect"] == "Allow" for a in s["Action"]}
    assert allowed == {"s3:ListBucket", "s3:GetBucketLocation", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"}
    for statement in policy["Statement"]:
        if statement["Effect"] == "Allow":
            assert statement["Condition"] == {"IpAddress": {"aws:SourceIp": ["203.0.113.10/32"]}}
            assert set(statement["Resource"]) <= {arn, f"{arn}/restic/*", f"{arn}/restic/locks/*"}
    # Deleting is granted for restic's lock files only (the bucket policy denies the rest); every other
    # history-losing action is denied outright.
    delete, = [s for s in policy["Statement"] if s["Effect"] == "Allow" and "s3:DeleteObject" in s["Action"]]
    assert delete["Action"] == ["s3:DeleteObject"] and delete["Resource"] == [f"{arn}/restic/locks/*"]
    denied = {a for s in policy["Statement"] if s["Effect"] == "Deny" for a in s["Action"]}
    assert {"s3:DeleteObjectVersion", "s3:PutLifecycleConfiguration", "s3:PutBucketVersioning",
            "s3:PutBucketPolicy", "s3:DeleteBucketPolicy"} <= denied
    # The bucket policy: TLS only for everyone; the same limits on the job's user, whatever it is granted later.
    bucket_policy = json.loads(children["BucketPolicy"].plain_inputs["policy"])
    user_arn = prod_evaluation.named("matrix-backup-bucket-job").plain_outputs["arn"]
    by_sid = {s["Sid"]: s for s in bucket_policy["Statement"]}
    assert by_sid["TlsOnly"]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert by_sid["TlsOnly"]["Principal"] == "*" and by_sid["TlsOnly"]["Effect"] == "Deny"
    for sid in ("JobDeletesLocksOnly", "JobKeepsHistory", "JobFromItsHostOnly"):
        assert by_sid[sid]["Effect"] == "Deny" and by_sid[sid]["Principal"] == {"AWS": user_arn}, sid
    assert by_sid["JobFromItsHostOnly"]["Condition"] == {"NotIpAddress": {"aws:SourceIp": ["203.0.113.10/32"]}}


def test_an_s3_compatible_endpoint_takes_the_named_bucket_and_keys():
    evaluation = evaluate("dev", backupTarget="s3", backupS3Endpoint="https://s3.eu-central-003.backblazeb2.com",
                          backupS3Bucket="my-matrix-backups", backupS3AccessKeyId="key-id-123",
                          backupS3SecretAccessKey="secret-456")
    env = _env(evaluation)
    assert env["RESTIC_REPOSITORY"] == "s3:https://s3.eu-central-003.backblazeb2.com/my-matrix-backups/restic"
    credentials = _files(evaluation)[backup.CREDENTIALS_FILE]
    assert "export AWS_ACCESS_KEY_ID=key-id-123\n" in credentials
    assert not evaluation.of_type("aws:s3/bucket:Bucket") or all(
        "matrix-backups" not in r.name for r in evaluation.of_type("aws:s3/bucket:Bucket"))


def test_backups_can_be_turned_off_and_then_nothing_is_rendered():
    evaluation = evaluate("dev", backup="false")
    assert backup.CONTAINER not in {c.plain_inputs["name"] for c in evaluation.of_type("docker:index/container:Container")}
    assert "backupRepository" not in evaluation.plain_stack_outputs


@pytest.mark.parametrize("overrides, key, message", [
    ({"backupSchedule": "25:00"}, "commstack:backupSchedule", "is not a time of day HH:MM"),
    ({"backupRetention": '{"daily": -1}'}, "commstack:backupRetention", "daily, weekly and monthly counts"),
    ({"backupRetention": '{"daily": 0, "weekly": 0, "monthly": 0}'}, "commstack:backupRetention", "keeps no snapshot"),
    ({"backupRetention": '{"yearly": 3}'}, "commstack:backupRetention", "daily, weekly and monthly counts"),
    ({"backupTarget": "tape"}, "commstack:backupTarget", "must be one of local, aws, s3, rest"),
    ({"backupTarget": "rest"}, "commstack:backupRestUrl", "is required when backup is true and backupTarget is rest"),
    ({"backupTarget": "rest", "backupRestUrl": "http://backup.example.org:8000/commstack/"}, "commstack:backupRestUrl",
     "plain http is refused"),
    ({"backupTarget": "rest", "backupRestUrl": "https://backup.example.org:8000/com stack/"},
     "commstack:backupRestUrl", "is not an https://host[:port]/path/ URL"),
    ({"backupTarget": "rest"}, "commstack:backupRestUsername", "is required when backup is true and backupTarget is rest"),
    ({"backupTarget": "rest", "backupRestUsername": "com stack"}, "commstack:backupRestUsername",
     "is not a rest-server user name"),
    ({"backupTarget": "rest"}, "commstack:backupRestPassword", "is required when backup is true and backupTarget is rest"),
    ({"backupTarget": "rest", "backupRestCaCertificate": "not a pem"}, "commstack:backupRestCaCertificate",
     "is not a PEM certificate"),
    ({"backupTarget": "s3"}, "commstack:backupS3Endpoint", "is required when backup is true and backupTarget is s3"),
    ({"backupTarget": "s3", "backupS3Endpoint": "s3.example.org"}, "commstack:backupS3Endpoint",
     "is not a https/http://host[:port] URL"),
    ({"backupTarget": "s3"}, "commstack:backupS3AccessKeyId", "is required when backup is true and backupTarget is s3"),
    ({"backupTarget": "aws", "signal": "false", "aws__region": None}, "aws:region",
     "is required when backup is true and backupTarget is aws"),
])
def test_bad_backup_settings_name_the_key_and_the_fix(overrides, key, message):
    with pytest.raises(SettingsError) as raised:
        evaluate("dev", config=stack_config("dev", **overrides))
    problems = [p for p in raised.value.problems if p.startswith(key + ":")]
    assert problems and message in problems[0] and "Fix: pulumi config " in problems[0], raised.value.problems


def test_env_sh_quotes_every_value_for_the_shell(tmp_path):
    from components.settings import BackupSettings

    settings = BackupSettings(enabled=True, schedule="03:30", keep_daily=7, keep_weekly=4, keep_monthly=6,
                              target="s3")
    tricky = "s3:https://example.org/bucket/it's $(touch pwned) `x`"
    text = backup.render_env(repository=tricky, databases=["synapse"], settings=settings, postgres_host="postgres",
                             postgres_port=5432, superuser="postgres", acme=False, credentials=True, host_prunes=False)
    (tmp_path / "env.sh").write_text(text)
    done = subprocess.run(["sh", "-c", '. ./env.sh && printf %s "$RESTIC_REPOSITORY"'], cwd=tmp_path,
                          capture_output=True, text=True, check=True)
    assert done.stdout == tricky and not (tmp_path / "pwned").exists()
    with pytest.raises(ValueError, match="plain lowercase identifier"):
        backup.render_env(repository="/r", databases=["synapse; rm -rf /"], settings=settings, postgres_host="p",
                          postgres_port=1, superuser="postgres", acme=False, credentials=False, host_prunes=True)


def test_seconds_until_the_next_run_wraps_to_tomorrow(tmp_path):
    lib = (backup.BACKUP_CONFIGS / "lib.sh").read_text()
    (tmp_path / "env.sh").write_text("")
    (tmp_path / "lib.sh").write_text(lib)
    (tmp_path / "probe.sh").write_text('. "$(dirname "$0")/lib.sh"\nseconds_until "$1"\n')
    import datetime

    now = datetime.datetime.now(datetime.timezone.utc)
    soon = (now + datetime.timedelta(minutes=10)).strftime("%H:%M")
    past = (now - datetime.timedelta(minutes=10)).strftime("%H:%M")
    ahead = int(subprocess.run(["sh", str(tmp_path / "probe.sh"), soon], capture_output=True, text=True,
                               check=True).stdout)
    behind = int(subprocess.run(["sh", str(tmp_path / "probe.sh"), past], capture_output=True, text=True,
                                check=True).stdout)
    assert 9 * 60 - 60 <= ahead <= 10 * 60
    assert 86400 - 11 * 60 <= behind <= 86400 - 9 * 60 + 60


def test_health_is_bad_without_a_recent_backup_or_scheduler_start(tmp_path):
    import time

    staging = tmp_path / "staging"
    staging.mkdir()
    (tmp_path / "env.sh").write_text(f"export STAGING_DIR={shlex.quote(str(staging))}\n")
    for name in ("lib.sh", "health.sh"):
        (tmp_path / name).write_text((backup.BACKUP_CONFIGS / name).read_text())

    def healthy() -> bool:
        return subprocess.run(["sh", str(tmp_path / "health.sh")], capture_output=True).returncode == 0

    assert not healthy()
    (staging / "scheduler-started").write_text(f"{int(time.time())}\n")
    assert healthy()
    (staging / "last-backup").write_text(f"{int(time.time()) - 37 * 3600}\n")
    assert not healthy()
    (staging / "last-backup").write_text(f"{int(time.time()) - 3600}\n")
    assert healthy()


FAKE_LIB = r'''
fail() { echo "error: $*" >&2; exit 1; }
open_repository() { :; }
restic() { echo "$*" >>"$STAGING_DIR/restic-calls"; [ -z "${RESTIC_FAILS:-}" ]; }
# Fails the first $FAILURES calls, as a pg_dump that met a dropped _temp_* table does.
dump_with_counts() {
  n=$(cat "$STAGING_DIR/calls" 2>/dev/null || echo 0); n=$((n + 1)); echo "$n" >"$STAGING_DIR/calls"
  [ "$n" -gt "$FAILURES" ] && : >"$2"
}
'''


@pytest.mark.parametrize("failures, ok, calls", [(0, True, 1), (2, True, 3), (3, False, 3)])
def test_a_failed_dump_is_taken_again_before_the_backup_gives_up(tmp_path, failures, ok, calls):
    # Synapse drops its background updates' _temp_* tables at any time; the real harness run met one
    # dropped between the dump's snapshot and its locks.
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "backup.sh").write_text((offline.ROOT / "configs" / "backup" / "backup.sh").read_text())
    (scripts / "lib.sh").write_text(FAKE_LIB)
    env = {"PATH": "/usr/bin:/bin", "STAGING_DIR": str(tmp_path), "DATABASES": "synapse", "FAILURES": str(failures),
           "MEDIA_DIR": str(tmp_path / "media"), "SIGNING_KEY_FILE": str(tmp_path / "none"), "BACKUP_HOST": "h",
           "KEEP_DAILY": "7", "KEEP_WEEKLY": "4", "KEEP_MONTHLY": "6"}
    done = subprocess.run(["sh", str(scripts / "backup.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode == 0) is ok, done.stderr
    assert int((tmp_path / "calls").read_text()) == calls
    if not ok:
        assert "pg_dump of synapse failed 3 times; no snapshot was taken" in done.stderr
    # The dumps (every message in plaintext) are gone, whichever way the run ended.
    assert not (tmp_path / "postgres").exists()


def _run_fake_backup(tmp_path, **env_overrides) -> subprocess.CompletedProcess:
    scripts = tmp_path / "scripts"
    scripts.mkdir(exist_ok=True)
    (scripts / "backup.sh").write_text((offline.ROOT / "configs" / "backup" / "backup.sh").read_text())
    (scripts / "lib.sh").write_text(FAKE_LIB)
    env = {"PATH": "/usr/bin:/bin", "STAGING_DIR": str(tmp_path), "DATABASES": "synapse", "FAILURES": "0",
           "MEDIA_DIR": str(tmp_path / "media"), "SIGNING_KEY_FILE": str(tmp_path / "none"), "BACKUP_HOST": "h",
           "KEEP_DAILY": "7", "KEEP_WEEKLY": "4", "KEEP_MONTHLY": "6", **env_overrides}
    return subprocess.run(["sh", str(scripts / "backup.sh")], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("host_prunes, forgets", [("1", True), ("0", False)])
def test_only_the_local_volume_is_pruned_by_the_job(tmp_path, host_prunes, forgets):
    done = _run_fake_backup(tmp_path, HOST_PRUNES=host_prunes)
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "restic-calls").read_text().splitlines()
    assert calls[0].startswith("backup --host h --tag commstack ")
    forget = [c for c in calls if c.startswith("forget")]
    assert bool(forget) is forgets
    if forgets:
        # By host only: drill tags of older versions on a snapshot must not put it in a group of its own.
        assert forget == ["forget --quiet --host h --tag commstack --group-by host --prune --keep-daily 7 "
                          "--keep-weekly 4 --keep-monthly 6"]


def test_a_failed_upload_leaves_no_dump_behind(tmp_path):
    done = _run_fake_backup(tmp_path, RESTIC_FAILS="1")
    assert done.returncode != 0
    assert (tmp_path / "restic-calls").read_text().startswith("backup ")
    assert not (tmp_path / "postgres").exists() and not (tmp_path / "last-backup").exists()


def _same_host_warnings(caplog, **overrides) -> list[str]:
    import logging

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        evaluate("dev", **overrides)
    return [r.getMessage() for r in caplog.records
            if r.getMessage().startswith("backups: this stack serves the internet")]


PUBLIC = dict(tls="letsencrypt", acmeEmail="admin@example.org", publicIp="198.51.100.20", domain="example.org",
              signal="false")


def test_a_stack_that_serves_the_internet_is_warned_about_a_same_host_repository(caplog):
    # A public certificate and address with the default local volume: warned (a warning, not a refusal: see
    # components/matrix/backup.py SAME_HOST_WARNING).
    warned, = _same_host_warnings(caplog, **PUBLIC)
    assert "pulumi config set commstack:backupTarget aws" in warned and "backupTarget rest" in warned
    # Off the host, or a stack on loopback only (dev): nothing to say.
    assert _same_host_warnings(caplog) == []
    assert _same_host_warnings(caplog, **PUBLIC, backupTarget="s3", backupS3Endpoint="https://s3.example.org",
                               backupS3Bucket="my-matrix-backups", backupS3AccessKeyId="key-id-123",
                               backupS3SecretAccessKey="secret-456") == []


REST_CA = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQk9HVVM=\n-----END CERTIFICATE-----"


def test_a_rest_server_target_is_append_only_to_the_host_and_keeps_its_password_secret():
    evaluation = evaluate("dev", backupTarget="rest", backupRestUrl="https://backup.example.org:8000/commstack",
                          backupRestUsername="commstack", backupRestPassword="rest-pass-123",
                          backupRestCaCertificate=REST_CA)
    env = _env(evaluation)
    assert env["RESTIC_REPOSITORY"] == "rest:https://backup.example.org:8000/commstack/"
    assert env["HOST_PRUNES"] == "0" and env["RESTIC_CACERT"] == backup.REPOSITORY_CA_FILE
    files = _files(evaluation)
    # restic reads the user and password from the environment the secret file sets: never in the URL.
    assert files[backup.CREDENTIALS_FILE] == ("export RESTIC_REST_USERNAME=commstack\n"
                                              "export RESTIC_REST_PASSWORD=rest-pass-123\n")
    assert files[backup.REPOSITORY_CA_FILE] == REST_CA + "\n"
    assert "rest-pass-123" not in env["RESTIC_REPOSITORY"]
    container = evaluation.container(backup.CONTAINER)
    uploads = {u["file"]: u for u in offline.unwrap(container.inputs["uploads"])}
    assert (uploads[backup.CREDENTIALS_FILE]["permissions"], uploads[backup.CREDENTIALS_FILE]["owner"]) == ("0400", "0")
    assert offline.is_secret(container.inputs["uploads"])
    assert "backup-repository" not in {v["volumeName"] for v in container.plain_inputs["volumes"]}
