"""`python -m commstack signal-restore tables | objects | secrets`: the Signal half back from AWS's own history.

* `tables`: every DynamoDB table of the pinned Signal-Server version (configs/signal/<ref>.yaml), restored
  to one instant with RestoreTableToPointInTime into new tables <stack>-signal-<Table>-<suffix>. DynamoDB
  never restores in place, and a restored table comes back without point-in-time recovery, deletion
  protection, TTL or tags (the RestoreTableToPointInTime API reference: "You must manually set up ...
  Tags, ... Time to Live (TTL) settings, Point in time recovery settings"; up to 50 restores may run
  at once per account, and the pinned version has 22 tables): this turns them on again, so the set matches what the program declares and
  `pulumi up` can adopt it (commstack:signalRestoredTables, components/signal/storage.py). It prints the
  `pulumi config set` and `pulumi up` that point the server at the set; the original tables stay untouched.
* `objects`: an S3 object of the stack's buckets (versioned) back to an earlier version, copied over as
  the newest version, so nothing is lost either way.
* `secrets`: a first-boot SSM parameter back to an earlier version (Parameter Store keeps each one's
  history); the version it replaces is labelled first. Values are never printed.

Everything is checked before the first change: a bad time, a missing table, a restore target that
exists, an unknown version stop the command with a message that says why and changes nothing.
Credentials and region are boto3's usual ones (AWS_PROFILE, instance role, AWS_ENDPOINT_URL, ...);
the stack's names come from Pulumi.<stack>.yaml.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Optional, Sequence

from components.settings import CONFIG_KEYS, SIGNAL_TABLE_SUFFIX_RE, stack_tags, supported_signal_refs
from components.signal.secrets import (TLS_KEY_PARAMETER, bundle_parameter, config_parameter,
                                       first_boot_parameters)
from components.signal.storage import table_name
from components.signal.version import ServerVersion, TableSpec, load_version

# The Backend's name in __main__.py: its tables are <stack>-signal-<Table>, its parameters /commstack/<stack>/signal/...
BACKEND_NAME = "signal"
RESTORED_KEY = "commstack:signalRestoredTables"
WAIT_SECONDS = 6 * 3600  # a large table's restore takes hours (docs.aws.amazon.com, "Restoring a DynamoDB table")
POLL_SECONDS = 20.0


class RestoreIncomplete(RuntimeError):
    """A restore started but did not finish; the message says how to go on."""


class RestoreRefused(RuntimeError):
    """Bad input or a state the restore must not touch; nothing was changed."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class SignalStack:
    """Where one stack's Signal half lives in AWS."""

    stack: str
    region: str
    version: ServerVersion
    restored: tuple[str, ...]  # commstack:signalRestoredTables as set now

    @property
    def name_prefix(self) -> str:
        return f"{self.stack}-{BACKEND_NAME}"

    @property
    def parameter_prefix(self) -> str:
        return f"/commstack/{self.stack}/{BACKEND_NAME}"

    @property
    def live_suffix(self) -> Optional[str]:
        return self.restored[-1] if self.restored else None

    def live_tables(self) -> dict[str, TableSpec]:
        """Physical name -> spec of the set the server uses now."""
        return {table_name(self.name_prefix, spec, self.live_suffix): spec for spec in self.version.tables}


def stack_from_config(stack: str, config: dict[str, str], region: Optional[str] = None) -> SignalStack:
    """The Signal half of Pulumi.<stack>.yaml (`config`, as commstack.devtools.offline.stack_config reads it)."""
    if config.get("commstack:signal", "false").lower() != "true":
        raise RestoreRefused([f"stack {stack} has no Signal half (commstack:signal is not true)"])
    if config.get("commstack:signalTarget", CONFIG_KEYS["commstack:signalTarget"].default) != "aws":
        raise RestoreRefused([f"stack {stack}'s Signal half runs on Docker (DynamoDB Local keeps no history "
                              "to restore)"])
    problems = []
    region = region or config.get("aws:region")
    if not region:
        problems.append(f"no region: Pulumi.{stack}.yaml has no aws:region; give --region")
    ref = config.get("commstack:signalServerRef", CONFIG_KEYS["commstack:signalServerRef"].default)
    try:
        restored = json.loads(config.get(RESTORED_KEY, "[]"))
    except ValueError:
        restored = None
    if (not isinstance(restored, list)
            or not all(isinstance(s, str) and SIGNAL_TABLE_SUFFIX_RE.fullmatch(s) for s in restored)):
        problems.append(f"{RESTORED_KEY} in Pulumi.{stack}.yaml is not a JSON list of table suffixes")
        restored = []
    if ref not in supported_signal_refs():
        problems.append(f"commstack:signalServerRef {ref!r} has no data file configs/signal/{ref}.yaml")
    if problems:
        raise RestoreRefused(problems)
    version = load_version(ref)
    return SignalStack(stack=stack, region=region, version=version, restored=tuple(restored))


def parse_time(text: str) -> datetime:
    """An ISO 8601 instant with its offset (2026-12-01T09:30:00Z); a time without one is ambiguous."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise RestoreRefused([f"--to {text!r} is not an ISO 8601 time such as 2026-12-01T09:30:00Z"]) from None
    if moment.tzinfo is None:
        raise RestoreRefused([f"--to {text!r} has no time zone; add Z for UTC (2026-12-01T09:30:00Z) or an offset"])
    return moment.astimezone(timezone.utc)


def default_suffix(moment: datetime) -> str:
    return "restored-" + moment.astimezone(timezone.utc).strftime("%Y%m%d-%H%M%S")


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


# -- DynamoDB --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TablePlan:
    source: str
    target: str
    spec: TableSpec


def _exists(dynamodb: Any, name: str) -> bool:
    try:
        dynamodb.describe_table(TableName=name)
        return True
    except dynamodb.exceptions.ResourceNotFoundException:
        return False


def plan_table_restore(dynamodb: Any, target: SignalStack, suffix: Optional[str],
                       moment: Optional[datetime]) -> tuple[list[TablePlan], datetime, str]:
    """Checks everything a restore of the live set needs, changing nothing. Returns the plan, the one
    instant every table goes back to (`moment`, or with None the latest one every table can still be
    restored to) and the suffix (`suffix`, or with None restored-<that instant>)."""
    if suffix is not None and not SIGNAL_TABLE_SUFFIX_RE.fullmatch(suffix):
        raise RestoreRefused([f"--suffix {suffix!r} is not a table suffix (1-40 lowercase letters, digits and "
                              "inner hyphens)"])
    problems, missing, no_pitr, earliest, latest = [], [], [], [], []
    live = target.live_tables()
    for source in live:
        if not _exists(dynamodb, source):
            missing.append(source)
            continue
        backups = dynamodb.describe_continuous_backups(TableName=source)["ContinuousBackupsDescription"]
        pitr = backups.get("PointInTimeRecoveryDescription", {})
        if pitr.get("PointInTimeRecoveryStatus") != "ENABLED":
            no_pitr.append(source)
        else:
            earliest.append(pitr["EarliestRestorableDateTime"])
            latest.append(pitr["LatestRestorableDateTime"])
    if missing:
        problems.append(f"{len(missing)} table(s) of the set the server uses do not exist: {', '.join(missing)} "
                        f"(wrong stack, region or {RESTORED_KEY}?)")
    if no_pitr:
        problems.append(f"point-in-time recovery is off on {', '.join(no_pitr)}: there is no history to restore from")
    if problems:
        raise RestoreRefused(problems)
    window = (max(earliest), min(latest))
    if moment is None:
        moment = window[1]
    elif not window[0] <= moment <= window[1]:
        raise RestoreRefused([f"--to {_iso(moment)} is outside the window every table can be restored to: "
                              f"{_iso(window[0])} .. {_iso(window[1])}"])
    suffix = suffix or default_suffix(moment)
    if suffix in target.restored:
        raise RestoreRefused([f"--suffix {suffix!r} is already in {RESTORED_KEY}; choose a new one"])
    plans = [TablePlan(source, table_name(target.name_prefix, spec, suffix), spec) for source, spec in live.items()]
    taken = [plan.target for plan in plans if _exists(dynamodb, plan.target)]
    if taken:
        raise RestoreRefused([f"restore target(s) exist already: {', '.join(taken)}; choose another --suffix"])
    return plans, moment, suffix


def restore_tables(dynamodb: Any, target: SignalStack, plans: Sequence[TablePlan], moment: datetime, *,
                   wait_seconds: float = WAIT_SECONDS, poll_seconds: float = POLL_SECONDS,
                   sleep: Callable[[float], None] = time.sleep, log: Callable[[str], None] = print) -> None:
    """Restores every table of `plans` to `moment`, waits until each is ACTIVE, then gives it what a restore
    drops and the program declares: PITR, deletion protection, TTL, the stack's tags."""
    for plan in plans:
        # On-demand and encrypted with the AWS managed key, as components/signal/storage.py declares them.
        dynamodb.restore_table_to_point_in_time(
            SourceTableName=plan.source, TargetTableName=plan.target, RestoreDateTime=moment,
            BillingModeOverride="PAY_PER_REQUEST", SSESpecificationOverride={"Enabled": True, "SSEType": "KMS"})
        log(f"restoring {plan.source} -> {plan.target}")
    pending = {plan.target for plan in plans}
    deadline = time.monotonic() + wait_seconds
    while pending:
        for name in sorted(pending):
            if dynamodb.describe_table(TableName=name)["Table"]["TableStatus"] == "ACTIVE":
                pending.discard(name)
        if pending:
            if time.monotonic() > deadline:
                raise RestoreIncomplete(f"still restoring after {wait_seconds:.0f} s: {', '.join(sorted(pending))}; "
                                   "once they are ACTIVE, finish them with the same command plus "
                                   "--finish")
            sleep(poll_seconds)
    finish_restored_tables(dynamodb, target, plans, sleep)


def _when_available(call: Callable[[], Any], dynamodb: Any, sleep: Callable[[float], None],
                    tries: int = 30, pause: float = 10.0) -> Any:
    """`call`, again while a just-restored table is still settling (its backups being enabled, or
    another update in progress): AWS answers those with these two errors for a short while."""
    settling = (dynamodb.exceptions.ContinuousBackupsUnavailableException, dynamodb.exceptions.ResourceInUseException)
    for attempt in range(tries):
        try:
            return call()
        except settling:
            if attempt == tries - 1:
                raise
            sleep(pause)


def finish_restored_tables(dynamodb: Any, target: SignalStack, plans: Sequence[TablePlan],
                           sleep: Callable[[float], None] = time.sleep) -> None:
    """What a restore leaves out and the program declares; safe to run again (`--finish`)."""
    tags = [{"Key": k, "Value": v} for k, v in stack_tags(target.stack).items()]
    for plan in plans:
        described = dynamodb.describe_table(TableName=plan.target)["Table"]
        _when_available(lambda: dynamodb.update_continuous_backups(
            TableName=plan.target, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True}),
            dynamodb, sleep)
        ttl = dynamodb.describe_time_to_live(TableName=plan.target)["TimeToLiveDescription"]
        if plan.spec.ttl and ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
            _when_available(lambda: dynamodb.update_time_to_live(TableName=plan.target, TimeToLiveSpecification={
                "Enabled": True, "AttributeName": plan.spec.ttl}), dynamodb, sleep)
        present = dynamodb.list_tags_of_resource(ResourceArn=described["TableArn"]).get("Tags", [])
        missing = [tag for tag in tags if tag not in present]
        if missing:
            dynamodb.tag_resource(ResourceArn=described["TableArn"], Tags=missing)
        if not described.get("DeletionProtectionEnabled"):
            _when_available(lambda: dynamodb.update_table(TableName=plan.target, DeletionProtectionEnabled=True),
                            dynamodb, sleep)


def repoint_commands(target: SignalStack, suffix: str) -> list[str]:
    restored = json.dumps([*target.restored, suffix])
    return [f"pulumi config set --stack {target.stack} {RESTORED_KEY} '{restored}'",
            f"pulumi up --stack {target.stack}"]


# -- S3 -----------------------------------------------------------------------------------------------


def stack_bucket(s3: Any, target: SignalStack, bucket: str) -> str:
    """The physical bucket for `bucket`: a data-file bucket name (attachments, cdn) or one of the stack's
    bucket names (Pulumi makes them <stack>-signal-<name>-<random>)."""
    prefixes = {spec.name: f"{target.name_prefix}-{spec.name}-" for spec in target.version.buckets}
    existing = [b["Name"] for b in s3.list_buckets().get("Buckets", [])]
    if bucket in prefixes:
        found = [name for name in existing if name.startswith(prefixes[bucket])]
        if len(found) == 1:
            return found[0]
        if not found:
            raise RestoreRefused([f"no bucket of stack {target.stack} named {prefixes[bucket]}… in {target.region}"])
        raise RestoreRefused([f"several buckets match {prefixes[bucket]}…: {', '.join(found)}; give --bucket <name>"])
    if any(bucket.startswith(p) for p in prefixes.values()) and bucket in existing:
        return bucket
    raise RestoreRefused([f"--bucket {bucket!r} is not a bucket of stack {target.stack}: give "
                          f"{' or '.join(prefixes)} (or its full name)"])


def object_versions(s3: Any, bucket: str, key: Optional[str] = None, prefix: str = "") -> list[dict]:
    """Every version and delete marker of `key` (or of every key under `prefix`), newest first per key."""
    rows = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=key or prefix):
        for kind, entries in (("version", page.get("Versions", [])), ("delete marker", page.get("DeleteMarkers", []))):
            for entry in entries:
                if key is None or entry["Key"] == key:
                    rows.append({"key": entry["Key"], "version_id": entry["VersionId"], "latest": entry["IsLatest"],
                                 "modified": entry["LastModified"], "size": entry.get("Size"), "kind": kind})
    return sorted(rows, key=lambda r: (r["key"], -r["modified"].timestamp()))


def restore_object_version(s3: Any, bucket: str, key: str, version_id: str) -> str:
    """Copies `version_id` of `key` over as its newest version (the one it replaces stays in the history);
    returns the new version's ID."""
    versions = {r["version_id"]: r for r in object_versions(s3, bucket, key)}
    chosen = versions.get(version_id)
    if chosen is None:
        raise RestoreRefused([f"s3://{bucket}/{key} has no version {version_id!r}"
                              + (f"; its versions: {', '.join(versions)}" if versions else "; it has no versions")])
    if chosen["kind"] == "delete marker":
        raise RestoreRefused([f"version {version_id} of s3://{bucket}/{key} is a delete marker; pick a version "
                              "that holds data"])
    if chosen["latest"]:
        raise RestoreRefused([f"version {version_id} is already the current version of s3://{bucket}/{key}"])
    s3.copy({"Bucket": bucket, "Key": key, "VersionId": version_id}, bucket, key)
    return s3.head_object(Bucket=bucket, Key=key)["VersionId"]


# -- SSM ----------------------------------------------------------------------------------------------


def managed_parameters(target: SignalStack) -> set[str]:
    """Names (under the prefix) `pulumi up` writes from its state; everything else the instance wrote once."""
    version = target.version
    names = {bundle_parameter("", e.key).lstrip("/") for e in version.bundle_from("program")}
    names |= {config_parameter("", path).lstrip("/") for path in version.program_config_values}
    return names | {TLS_KEY_PARAMETER}


def first_boot_names(target: SignalStack) -> set[str]:
    return {name[len(target.parameter_prefix) + 1:] for name in first_boot_parameters(target.version,
                                                                                     target.parameter_prefix)}


def _relative(target: SignalStack, name: str) -> str:
    name = name.strip()
    if name.startswith(target.parameter_prefix + "/"):
        name = name[len(target.parameter_prefix) + 1:]
    return name.lstrip("/")


def parameter_history(ssm: Any, target: SignalStack, name: str) -> list[dict]:
    """Each version of the parameter (number, date, labels, type): never its value."""
    relative = _relative(target, name)
    full = f"{target.parameter_prefix}/{relative}"
    rows = []
    try:
        for page in ssm.get_paginator("get_parameter_history").paginate(Name=full, WithDecryption=False):
            rows += [{"version": p["Version"], "modified": p["LastModifiedDate"], "labels": p.get("Labels", []),
                      "type": p["Type"], "key_id": p.get("KeyId")} for p in page["Parameters"]]
    except ssm.exceptions.ParameterNotFound:
        raise RestoreRefused([f"no parameter {full}: a deleted parameter takes its history with it"]) from None
    return sorted(rows, key=lambda r: r["version"])


def restore_parameter_version(ssm: Any, target: SignalStack, name: str, version: str,
                              now: Optional[datetime] = None) -> tuple[int, str]:
    """Writes version `version` (a number or a label) of a first-boot parameter as its newest version,
    after labelling the version it replaces; returns (new version, that label). Never reads a value
    into anything but the write."""
    relative = _relative(target, name)
    full = f"{target.parameter_prefix}/{relative}"
    if relative in managed_parameters(target):
        raise RestoreRefused([f"{relative} is written by `pulumi up` from its state (a history restore would be "
                              f"undone); put the program's value back with: pulumi up --refresh --stack {target.stack}"])
    if relative not in first_boot_names(target):
        raise RestoreRefused([f"{relative} is not a Signal server secret of stack {target.stack}; the first-boot "
                              f"ones: {', '.join(sorted(first_boot_names(target)))}"])
    history = parameter_history(ssm, target, relative)
    current = history[-1]
    chosen = next((r for r in history if str(r["version"]) == version or version in r["labels"]), None)
    if chosen is None:
        raise RestoreRefused([f"{full} has no version or label {version!r}; versions "
                              f"{', '.join(str(r['version']) for r in history)}"])
    if chosen["version"] == current["version"]:
        raise RestoreRefused([f"version {version} is already the current version of {full}"])
    label = "replaced-" + (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ").lower()
    value = ssm.get_parameter(Name=f"{full}:{chosen['version']}", WithDecryption=True)["Parameter"]["Value"]
    ssm.label_parameter_version(Name=full, ParameterVersion=current["version"], Labels=[label])
    put = {"Name": full, "Value": value, "Type": chosen["type"], "Overwrite": True}
    if chosen["type"] == "SecureString" and chosen.get("key_id"):
        put["KeyId"] = chosen["key_id"]
    written = ssm.put_parameter(**put)["Version"]
    return written, label


def stack_parameters(ssm: Any, target: SignalStack) -> list[dict]:
    rows = []
    for page in ssm.get_paginator("describe_parameters").paginate(
            ParameterFilters=[{"Key": "Path", "Option": "Recursive", "Values": [target.parameter_prefix]}]):
        rows += [{"name": _relative(target, p["Name"]), "version": p["Version"], "modified": p["LastModifiedDate"],
                  "type": p["Type"]} for p in page["Parameters"]]
    return sorted(rows, key=lambda r: r["name"])


# -- CLI ----------------------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    actions = parser.add_subparsers(dest="what", required=True, metavar="WHAT")
    tables = actions.add_parser("tables", help="restore every DynamoDB table to one point in time, into new tables")
    when = tables.add_mutually_exclusive_group()
    when.add_argument("--to", metavar="TIME", help="ISO 8601 instant with zone, e.g. 2026-12-01T09:30:00Z")
    when.add_argument("--latest", action="store_true", help="the latest instant every table can be restored to")
    tables.add_argument("--suffix", help="suffix of the new tables (default: restored-<time>)")
    tables.add_argument("--finish", action="store_true",
                        help="only re-enable PITR, deletion protection, TTL and tags on an existing --suffix set")
    objects = actions.add_parser("objects", help="list an S3 object's versions, or bring one back")
    objects.add_argument("--bucket", required=True, help="attachments or cdn (or the bucket's full name)")
    place = objects.add_mutually_exclusive_group(required=True)
    place.add_argument("--key", help="the object's key")
    place.add_argument("--prefix", help="list the versions of every key under this prefix")
    objects.add_argument("--version-id", help="make this version the current one again")
    secrets = actions.add_parser("secrets", help="list the server secrets' versions, or bring one back")
    secrets.add_argument("--name", help="a parameter under the stack's prefix, e.g. bundle/unidentifiedDelivery.privateKey")
    secrets.add_argument("--version", help="make this version (number or label) the current one again")
    for sub in (tables, objects, secrets):
        sub.add_argument("--stack", required=True, help="the stack (its names and region come from Pulumi.<stack>.yaml)")
        sub.add_argument("--region", help="AWS region (default: the stack's aws:region)")


def _client(service: str, region: str):
    import boto3

    return boto3.client(service, region_name=region)


def _when(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _tables(args, target: SignalStack) -> int:
    dynamodb = _client("dynamodb", target.region)
    if args.finish:
        suffix = args.suffix
        if not suffix:
            raise RestoreRefused(["--finish needs the --suffix of the restored set"])
        plans = [TablePlan(source, table_name(target.name_prefix, spec, suffix), spec)
                 for source, spec in target.live_tables().items()]
        absent = [plan.target for plan in plans if not _exists(dynamodb, plan.target)]
        if absent:
            raise RestoreRefused([f"no restored table {', '.join(absent)}"])
        finish_restored_tables(dynamodb, target, plans)
    else:
        if not args.latest and not args.to:
            raise RestoreRefused(["say when to restore to: --to TIME (ISO 8601 with zone) or --latest"])
        moment = None if args.latest else parse_time(args.to)
        plans, moment, suffix = plan_table_restore(dynamodb, target, args.suffix, moment)
        print(f"restoring {len(plans)} tables of stack {target.stack} to {_iso(moment)}")
        restore_tables(dynamodb, target, plans, moment)
    print(f"\n{len(plans)} tables restored as {target.name_prefix}-<Table>-{suffix}, each with point-in-time "
          "recovery, deletion protection, TTL and the stack's tags. The server still uses "
          f"{'the original tables' if not target.live_suffix else 'the ' + target.live_suffix + ' set'}, "
          "which stay as they are. To point it at the restored set (the instance is replaced, minutes of downtime):")
    for command in repoint_commands(target, suffix):
        print(f"  {command}")
    return 0


def _objects(args, target: SignalStack) -> int:
    s3 = _client("s3", target.region)
    bucket = stack_bucket(s3, target, args.bucket)
    if args.version_id:
        if not args.key:
            raise RestoreRefused(["--version-id needs --key"])
        new = restore_object_version(s3, bucket, args.key, args.version_id)
        print(f"s3://{bucket}/{args.key}: version {args.version_id} is the current version again "
              f"(as new version {new}; the one it replaced stays in the history)")
        return 0
    rows = object_versions(s3, bucket, args.key, args.prefix or "")
    if not rows:
        print(f"no versions of s3://{bucket}/{args.key or args.prefix}", file=sys.stderr)
        return 1
    print(f"{'KEY':40} {'VERSION ID':36} {'MODIFIED (UTC)':19} {'SIZE':>10}  STATE")
    for r in rows:
        state = ("current" if r["latest"] else "") + (" deleted" if r["kind"] == "delete marker" else "")
        size = "" if r["size"] is None else str(r["size"])
        print(f"{r['key']:40} {r['version_id']:36} {_when(r['modified']):19} {size:>10}  {state.strip()}")
    return 0


def _secrets(args, target: SignalStack) -> int:
    ssm = _client("ssm", target.region)
    if args.version:
        if not args.name:
            raise RestoreRefused(["--version needs --name"])
        written, label = restore_parameter_version(ssm, target, args.name, args.version)
        relative = _relative(target, args.name)
        print(f"{relative}: version {args.version}'s value is the current one again (as version {written}); "
              f"the version it replaced is labelled {label}. Signal-Server reads its secrets when it starts: "
              "on the instance run `sudo systemctl restart signal-server`.")
        return 0
    if args.name:
        print(f"{'VERSION':>7}  {'MODIFIED (UTC)':19}  LABELS")
        for r in parameter_history(ssm, target, args.name):
            print(f"{r['version']:>7}  {_when(r['modified']):19}  {', '.join(r['labels'])}")
        return 0
    managed, first_boot = managed_parameters(target), first_boot_names(target)
    print(f"{'PARAMETER':60} {'VERSION':>7}  {'MODIFIED (UTC)':19}  WRITTEN BY")
    for r in stack_parameters(ssm, target):
        by = "pulumi up" if r["name"] in managed else "first boot" if r["name"] in first_boot else "operator"
        print(f"{r['name']:60} {r['version']:>7}  {_when(r['modified']):19}  {by}")
    return 0


def main(args: Any) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from commstack.devtools import offline

    try:
        try:
            config = offline.stack_config(args.stack)
        except (FileNotFoundError, ValueError) as exc:
            raise RestoreRefused([str(exc)]) from None
        target = stack_from_config(args.stack, config, args.region)
        return {"tables": _tables, "objects": _objects, "secrets": _secrets}[args.what](args, target)
    except RestoreRefused as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        print("nothing was changed", file=sys.stderr)
        return 2
    except RestoreIncomplete as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ClientError, BotoCoreError) as exc:
        print(f"error: AWS refused: {exc}", file=sys.stderr)
        return 1
