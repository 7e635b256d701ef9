"""`python -m commstack signal-restore`: the real command against moto's DynamoDB, S3 and SSM (in-process).

The tables are made from the program's own table specs (names, keys, GSIs, LSIs, TTL from the data
file) the way components/signal/storage.py declares them. moto copies a table's items as they are when
asked (it ignores RestoreDateTime), so what these tests prove is everything around that: which tables,
into which names, the window check, what the restored tables carry, that nothing else changes, and
every refusal before any change. The point-in-time semantics are AWS's own.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import boto3
import pytest
from moto import mock_aws

from commstack import __main__ as cli
from commstack.devtools import offline
from commstack.operations import signal_restore
from components.settings import stack_tags
from components.signal.storage import create_table_request, table_name
from components.signal.version import load_version

VERSION = load_version("v9.81.0")
STACK = "prod"
REGION = offline.stack_config(STACK)["aws:region"]
PREFIX = f"{STACK}-signal"
PARAMETERS = f"/commstack/{STACK}/signal"
BY_CONFIG = {t.config: t for t in VERSION.tables}
ACCOUNTS = BY_CONFIG["accounts.tableName"]
MESSAGES = BY_CONFIG["messages.tableName"]
KEYS = BY_CONFIG["ecKeys.tableName"]


@pytest.fixture
def aws(monkeypatch):
    for variable in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield {service: boto3.client(service, region_name=REGION) for service in ("dynamodb", "s3", "ssm")}


def make_tables(dynamodb, suffix=None, skip=()):
    """Every table of the version as the program declares it: on-demand, encrypted, PITR, deletion protection, TTL."""
    names = {}
    for spec in VERSION.tables:
        if spec.config in skip:
            continue
        name = table_name(PREFIX, spec, suffix)
        dynamodb.create_table(**create_table_request(spec, name), SSESpecification={"Enabled": True},
                              DeletionProtectionEnabled=True)
        dynamodb.update_continuous_backups(TableName=name, PointInTimeRecoverySpecification={
            "PointInTimeRecoveryEnabled": True})
        if spec.ttl:
            dynamodb.update_time_to_live(TableName=name, TimeToLiveSpecification={"Enabled": True,
                                                                                   "AttributeName": spec.ttl})
        names[spec.config] = name
    return names


def items(dynamodb, name):
    return sorted(dynamodb.scan(TableName=name)["Items"], key=repr)


def write_account_and_messages(dynamodb, names):
    """What Signal-Server writes for one account: the account (with its username link for the GSI),
    a signed pre-key and two queued messages (sort key and the LSI's U)."""
    uuid, link = b"\x01" * 16, b"\x02" * 16
    dynamodb.put_item(TableName=names[ACCOUNTS.config], Item={
        "U": {"B": uuid}, "UL": {"B": link}, "D": {"B": b'{"number":"+15551234567"}'}, "V": {"N": "3"}})
    dynamodb.put_item(TableName=names[KEYS.config], Item={"U": {"B": uuid}, "DK": {"B": b"\x00\x01"},
                                                          "K": {"B": b"pre-key"}})
    for n in (1, 2):
        dynamodb.put_item(TableName=names[MESSAGES.config], Item={
            "H": {"B": uuid + b"\x01"}, "S": {"B": bytes([n])}, "U": {"B": bytes([n]) * 16},
            "E": {"N": "1893456000"}, "M": {"B": f"envelope {n}".encode()}})


def run(*argv):
    return cli.main(["signal-restore", *argv, "--stack", STACK])


def pitr_window(dynamodb, name):
    pitr = dynamodb.describe_continuous_backups(TableName=name)["ContinuousBackupsDescription"][
        "PointInTimeRecoveryDescription"]
    return pitr["EarliestRestorableDateTime"], pitr["LatestRestorableDateTime"]


# -- DynamoDB -----------------------------------------------------------------------------------------


def test_restore_brings_every_table_back_under_the_suffix_with_the_programs_settings(aws, capsys):
    dynamodb = aws["dynamodb"]
    originals = make_tables(dynamodb)
    write_account_and_messages(dynamodb, originals)
    before = {name: items(dynamodb, name) for name in originals.values()}

    assert run("tables", "--latest", "--suffix", "r1") == 0
    out = capsys.readouterr().out

    listed = set(dynamodb.list_tables()["TableNames"])
    assert len(listed) == 2 * len(VERSION.tables) == 44
    tags = sorted(({"Key": k, "Value": v} for k, v in stack_tags(STACK).items()), key=lambda t: t["Key"])
    for spec in VERSION.tables:
        source, target = originals[spec.config], table_name(PREFIX, spec, "r1")
        assert target == f"prod-signal-{spec.name}-r1" and target in listed
        assert items(dynamodb, target) == before[source]
        table = dynamodb.describe_table(TableName=target)["Table"]
        assert table["TableStatus"] == "ACTIVE"
        assert table["DeletionProtectionEnabled"] is True
        assert table["KeySchema"] == create_table_request(spec, target)["KeySchema"]
        assert sorted(i["IndexName"] for i in table.get("GlobalSecondaryIndexes", [])) == sorted(i.name for i in spec.gsis)
        assert sorted(i["IndexName"] for i in table.get("LocalSecondaryIndexes", [])) == sorted(i.name for i in spec.lsis)
        assert dynamodb.describe_continuous_backups(TableName=target)["ContinuousBackupsDescription"][
            "PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLED"
        ttl = dynamodb.describe_time_to_live(TableName=target)["TimeToLiveDescription"]
        assert (ttl.get("TimeToLiveStatus"), ttl.get("AttributeName")) == (
            ("ENABLED", spec.ttl) if spec.ttl else ("DISABLED", None))
        assert sorted(dynamodb.list_tags_of_resource(ResourceArn=table["TableArn"])["Tags"],
                      key=lambda t: t["Key"]) == tags
        # The original is untouched: same items, still protected, PITR still on.
        assert items(dynamodb, source) == before[source]
        original = dynamodb.describe_table(TableName=source)["Table"]
        assert original["DeletionProtectionEnabled"] is True and original["TableStatus"] == "ACTIVE"
    assert len(items(dynamodb, table_name(PREFIX, MESSAGES, "r1"))) == 2
    # The restored set is a copy: the server writing to the originals until the switch leaves it as restored.
    dynamodb.delete_item(TableName=originals[MESSAGES.config], Key={"H": {"B": b"\x01" * 16 + b"\x01"},
                                                                    "S": {"B": b"\x01"}})
    assert len(items(dynamodb, table_name(PREFIX, MESSAGES, "r1"))) == 2
    assert "pulumi config set --stack prod commstack:signalRestoredTables '[\"r1\"]'" in out
    assert "pulumi up --stack prod" in out


def test_restore_to_an_instant_in_the_window_names_the_set_after_it(aws, capsys, monkeypatch):
    dynamodb = aws["dynamodb"]
    # moto's window is the one instant PITR was turned on: give every table the same one (moto's clock).
    import moto.dynamodb.models as moto_dynamodb

    instant = datetime(2026, 12, 1, 9, 30, tzinfo=timezone.utc)
    monkeypatch.setattr(moto_dynamodb, "unix_time", lambda: instant.timestamp())
    originals = make_tables(dynamodb)
    assert {pitr_window(dynamodb, n) for n in originals.values()} == {(instant, instant)}
    assert run("tables", "--to", "2026-12-01T09:30:00Z") == 0
    earliest = instant
    suffix = signal_restore.default_suffix(earliest)
    assert suffix == "restored-" + earliest.astimezone(timezone.utc).strftime("%Y%m%d-%H%M%S")
    assert all(dynamodb.describe_table(TableName=table_name(PREFIX, spec, suffix))["Table"]["TableStatus"] == "ACTIVE"
               for spec in VERSION.tables)
    assert f"'[\"{suffix}\"]'" in capsys.readouterr().out


def test_a_second_restore_starts_from_the_set_the_server_uses(aws, capsys, monkeypatch):
    dynamodb = aws["dynamodb"]
    make_tables(dynamodb)
    live = make_tables(dynamodb, suffix="r1")
    write_account_and_messages(dynamodb, live)
    config = {**offline.stack_config(STACK), "commstack:signalRestoredTables": '["r1"]'}
    monkeypatch.setattr(offline, "stack_config", lambda stack: config)
    assert run("tables", "--latest", "--suffix", "r2") == 0
    restored = table_name(PREFIX, ACCOUNTS, "r2")
    assert items(dynamodb, restored) == items(dynamodb, live[ACCOUNTS.config])
    assert items(dynamodb, table_name(PREFIX, ACCOUNTS)) == []  # made from r1, not from the originals
    assert "commstack:signalRestoredTables '[\"r1\", \"r2\"]'" in capsys.readouterr().out


def test_finish_completes_a_restored_set_and_can_run_again(aws, capsys):
    dynamodb = aws["dynamodb"]
    originals = make_tables(dynamodb)
    for spec in VERSION.tables:  # what a restore leaves: the tables, without PITR, protection, TTL or tags
        dynamodb.restore_table_to_point_in_time(SourceTableName=originals[spec.config],
                                                TargetTableName=table_name(PREFIX, spec, "r1"), UseLatestRestorableTime=True)
    for _ in range(2):
        assert run("tables", "--finish", "--suffix", "r1") == 0
        for spec in VERSION.tables:
            target = table_name(PREFIX, spec, "r1")
            table = dynamodb.describe_table(TableName=target)["Table"]
            assert table["DeletionProtectionEnabled"] is True
            assert dynamodb.describe_continuous_backups(TableName=target)["ContinuousBackupsDescription"][
                "PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLED"
            assert dynamodb.describe_time_to_live(TableName=target)["TimeToLiveDescription"].get("AttributeName") == spec.ttl
            assert len(dynamodb.list_tags_of_resource(ResourceArn=table["TableArn"])["Tags"]) == 2
    assert "'[\"r1\"]'" in capsys.readouterr().out
    _refused(capsys, run("tables", "--finish", "--suffix", "r9"), "no restored table prod-signal-Accounts-r9")


def _refused(capsys, code, *phrases):
    err = capsys.readouterr().err
    assert code == 2, err
    for phrase in phrases:
        assert phrase in err, err
    assert "nothing was changed" in err


def test_times_outside_the_window_are_refused_before_any_restore(aws, capsys):
    dynamodb = aws["dynamodb"]
    originals = make_tables(dynamodb)
    earliest, _ = pitr_window(dynamodb, originals[ACCOUNTS.config])
    for moment in (earliest - timedelta(days=1), datetime.now(timezone.utc) + timedelta(hours=1)):
        _refused(capsys, run("tables", "--to", moment.isoformat(), "--suffix", "r1"),
                 "is outside the window every table can be restored to")
    _refused(capsys, run("tables", "--to", "2026-12-01T09:30:00", "--suffix", "r1"), "has no time zone")
    _refused(capsys, run("tables", "--to", "yesterday", "--suffix", "r1"), "is not an ISO 8601 time")
    _refused(capsys, run("tables", "--suffix", "r1"), "--to TIME (ISO 8601 with zone) or --latest")
    _refused(capsys, run("tables", "--latest", "--suffix", "R_1"), "is not a table suffix")
    assert len(dynamodb.list_tables()["TableNames"]) == len(VERSION.tables)


def test_missing_tables_and_taken_names_are_refused_before_any_restore(aws, capsys):
    dynamodb = aws["dynamodb"]
    make_tables(dynamodb, skip={MESSAGES.config})
    _refused(capsys, run("tables", "--latest", "--suffix", "r1"), "1 table(s) of the set the server uses do not exist",
             "prod-signal-Messages")
    assert len(dynamodb.list_tables()["TableNames"]) == len(VERSION.tables) - 1

    dynamodb.create_table(**create_table_request(MESSAGES, table_name(PREFIX, MESSAGES)))
    _refused(capsys, run("tables", "--latest", "--suffix", "r1"), "point-in-time recovery is off on prod-signal-Messages")
    dynamodb.update_continuous_backups(TableName=table_name(PREFIX, MESSAGES),
                                       PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True})
    dynamodb.create_table(**create_table_request(KEYS, table_name(PREFIX, KEYS, "r1")))
    _refused(capsys, run("tables", "--latest", "--suffix", "r1"), "restore target(s) exist already: prod-signal-Keys-r1")
    assert len(dynamodb.list_tables()["TableNames"]) == len(VERSION.tables) + 1


def test_a_suffix_already_in_the_setting_is_refused(aws, capsys, monkeypatch):
    make_tables(aws["dynamodb"], suffix="r1")
    config = {**offline.stack_config(STACK), "commstack:signalRestoredTables": '["r1"]'}
    monkeypatch.setattr(offline, "stack_config", lambda stack: config)
    _refused(capsys, run("tables", "--latest", "--suffix", "r1"), "is already in commstack:signalRestoredTables")


def test_a_stack_without_an_aws_signal_half_is_refused(aws, capsys):
    _refused(capsys, cli.main(["signal-restore", "tables", "--latest", "--stack", "dev"]),
             "stack dev's Signal half runs on Docker")


def test_the_command_names_the_tables_the_program_registers():
    from tests.conftest import evaluate

    evaluation = evaluate("prod", backupTarget="local", signalRestoredTables='["r1"]')
    registered = {r.plain_inputs["name"] for r in evaluation.of_type("aws:dynamodb/table:Table")}
    target = signal_restore.stack_from_config(STACK, {**offline.stack_config(STACK),
                                                      "commstack:signalRestoredTables": '["r1"]'})
    assert set(target.live_tables()) == {table_name(PREFIX, spec, "r1") for spec in VERSION.tables}
    assert set(target.live_tables()) | {table_name(PREFIX, spec) for spec in VERSION.tables} == registered
    assert {p.plain_inputs["name"] for p in evaluation.of_type("aws:ssm/parameter:Parameter")} >= {
        f"{target.parameter_prefix}/{name}" for name in signal_restore.managed_parameters(target)}


# -- S3 -----------------------------------------------------------------------------------------------


def _bucket(s3, name="attachments"):
    bucket = f"{PREFIX}-{name}-20261201093000000000000001"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return bucket


def test_an_object_comes_back_at_its_earlier_version(aws, capsys):
    s3 = aws["s3"]
    bucket = _bucket(s3)
    first = s3.put_object(Bucket=bucket, Key="attachments/a1", Body=b"the original attachment")["VersionId"]
    s3.put_object(Bucket=bucket, Key="attachments/a1", Body=b"overwritten by mistake")
    assert run("objects", "--bucket", "attachments", "--key", "attachments/a1") == 0
    listing = capsys.readouterr().out
    assert first in listing and listing.count("attachments/a1") == 2 and "current" in listing

    assert run("objects", "--bucket", "attachments", "--key", "attachments/a1", "--version-id", first) == 0
    assert s3.get_object(Bucket=bucket, Key="attachments/a1")["Body"].read() == b"the original attachment"
    versions = s3.list_object_versions(Bucket=bucket, Prefix="attachments/a1")["Versions"]
    assert len(versions) == 3  # nothing lost: the overwritten version stays in the history
    assert f"version {first} is the current version again" in capsys.readouterr().out


def test_a_deleted_object_comes_back(aws, capsys):
    s3 = aws["s3"]
    bucket = _bucket(s3, "cdn")
    kept = s3.put_object(Bucket=bucket, Key="profiles/avatar", Body=b"avatar bytes")["VersionId"]
    s3.delete_object(Bucket=bucket, Key="profiles/avatar")
    assert run("objects", "--bucket", bucket, "--prefix", "profiles/") == 0
    assert "deleted" in capsys.readouterr().out
    assert run("objects", "--bucket", "cdn", "--key", "profiles/avatar", "--version-id", kept) == 0
    assert s3.get_object(Bucket=bucket, Key="profiles/avatar")["Body"].read() == b"avatar bytes"


def test_object_refusals(aws, capsys):
    s3 = aws["s3"]
    bucket = _bucket(s3)
    current = s3.put_object(Bucket=bucket, Key="k", Body=b"v1")["VersionId"]
    _refused(capsys, run("objects", "--bucket", "attachments", "--key", "k", "--version-id", "nosuch"),
             "has no version 'nosuch'", current)
    _refused(capsys, run("objects", "--bucket", "attachments", "--key", "k", "--version-id", current),
             "is already the current version")
    marker = s3.delete_object(Bucket=bucket, Key="k")["VersionId"]
    _refused(capsys, run("objects", "--bucket", "attachments", "--key", "k", "--version-id", marker),
             "is a delete marker")
    s3.create_bucket(Bucket="someone-elses", CreateBucketConfiguration={"LocationConstraint": REGION})
    _refused(capsys, run("objects", "--bucket", "someone-elses", "--key", "k"), "is not a bucket of stack prod")
    _refused(capsys, run("objects", "--bucket", "cdn", "--key", "k"), "no bucket of stack prod named prod-signal-cdn-")
    assert len(s3.list_object_versions(Bucket=bucket)["Versions"]) == 1


# -- SSM ----------------------------------------------------------------------------------------------

UD_KEY = "bundle/unidentifiedDelivery.privateKey"


def test_a_server_secret_comes_back_at_its_earlier_version_and_is_never_printed(aws, capsys):
    ssm = aws["ssm"]
    name = f"{PARAMETERS}/{UD_KEY}"
    ssm.put_parameter(Name=name, Value="first-boot-private-key-0123456789", Type="SecureString")
    ssm.put_parameter(Name=name, Value="clobbered-by-hand-9876543210", Type="SecureString", Overwrite=True)
    assert run("secrets") == 0
    assert "first boot" in capsys.readouterr().out
    assert run("secrets", "--name", UD_KEY) == 0
    history = capsys.readouterr().out
    assert [line.split()[0] for line in history.splitlines()[1:]] == ["1", "2"]

    assert run("secrets", "--name", UD_KEY, "--version", "1") == 0
    out = capsys.readouterr()
    current = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]
    assert (current["Value"], current["Version"], current["Type"]) == ("first-boot-private-key-0123456789", 3,
                                                                       "SecureString")
    replaced = {p["Version"]: p.get("Labels", []) for p in ssm.get_parameter_history(Name=name)["Parameters"]}
    assert len(replaced[2]) == 1 and replaced[2][0].startswith("replaced-")
    assert replaced[2][0] in out.out
    # The replaced value is still reachable by its label.
    assert ssm.get_parameter(Name=f"{name}:{replaced[2][0]}", WithDecryption=True)["Parameter"]["Value"] == \
        "clobbered-by-hand-9876543210"
    for text in (history, out.out, out.err):
        assert "first-boot-private-key" not in text and "clobbered" not in text


def test_secret_refusals(aws, capsys):
    ssm = aws["ssm"]
    name = f"{PARAMETERS}/{UD_KEY}"
    ssm.put_parameter(Name=name, Value="one", Type="SecureString")
    _refused(capsys, run("secrets", "--name", UD_KEY, "--version", "1"), "is already the current version")
    _refused(capsys, run("secrets", "--name", UD_KEY, "--version", "7"), "has no version or label '7'; versions 1")
    _refused(capsys, run("secrets", "--name", "bundle/unidentifiedDelivery.certificate", "--version", "1"),
             "a deleted parameter takes its history with it")
    managed = sorted(signal_restore.managed_parameters(
        signal_restore.stack_from_config(STACK, offline.stack_config(STACK))))[0]
    _refused(capsys, run("secrets", "--name", managed, "--version", "1"), "is written by `pulumi up` from its state",
             "pulumi up --refresh --stack prod")
    _refused(capsys, run("secrets", "--name", "../../other/secret", "--version", "1"),
             "is not a Signal server secret of stack prod")
    assert ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Version"] == 1


# -- the docs' own lines -----------------------------------------------------------------------------


def readme_signal_restore_lines() -> list[list[str]]:
    """The argv of every `signal-restore` line of docs/operations.md's "Restore the Signal half", in order."""
    import re

    operations = (offline.ROOT / "docs" / "operations.md").read_text()
    section = operations[operations.index("## Restore the Signal half"):]
    section = section[:section.index("\n## ")]
    lines = re.findall(r"^\s*\./scripts/commstack (signal-restore .*)$", section, flags=re.M)
    return [re.sub(r"\s+#\s.*$", "", line) for line in lines]


def test_the_readme_shows_each_kind_of_restore():
    shown = readme_signal_restore_lines()
    assert {line.split()[1] for line in shown} == {"tables", "objects", "secrets"}
    assert len(shown) == 8


@pytest.mark.parametrize("line", readme_signal_restore_lines())
def test_each_readme_line_runs_as_shown(line, aws, capsys, monkeypatch):
    import shlex

    import moto.dynamodb.models as moto_dynamodb

    # The README's instant is inside every table's window (moto's window: the instant PITR was turned on).
    monkeypatch.setattr(moto_dynamodb, "unix_time", lambda: datetime(2026, 12, 1, 9, 30, tzinfo=timezone.utc).timestamp())
    make_tables(aws["dynamodb"])
    s3 = aws["s3"]
    bucket = _bucket(s3)
    first = s3.put_object(Bucket=bucket, Key="attachments/a1", Body=b"v1")["VersionId"]
    s3.put_object(Bucket=bucket, Key="attachments/a1", Body=b"v2")
    ssm = aws["ssm"]
    ssm.put_parameter(Name=f"{PARAMETERS}/{UD_KEY}", Value="one", Type="SecureString")
    ssm.put_parameter(Name=f"{PARAMETERS}/{UD_KEY}", Value="two", Type="SecureString", Overwrite=True)
    filled = {"<key>": "attachments/a1", "<prefix>": "attachments/", "<version id>": first}
    for placeholder, value in filled.items():
        line = line.replace(placeholder, value)
    argv = shlex.split(line)
    assert cli.main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    if argv[1] == "tables":
        assert "pulumi config set --stack prod commstack:signalRestoredTables '[\"restored-20261201-093000\"]'" in out
        operations = (offline.ROOT / "docs" / "operations.md").read_text()
        assert "pulumi config set --stack prod commstack:signalRestoredTables '[\"restored-20261201-093000\"]'" in operations
