"""DynamoDB tables and S3 buckets of one Signal-Server version, from its data file only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import pulumi

from components.common import child, stateful_child
from components.signal.version import BucketSpec, IndexSpec, TableSpec


def _key_schema(index: IndexSpec, table: TableSpec) -> list[dict]:
    hash_attr = index.hash or table.hash
    schema = [{"AttributeName": hash_attr.name, "KeyType": "HASH"}]
    if index.range:
        schema.append({"AttributeName": index.range.name, "KeyType": "RANGE"})
    return schema


def create_table_request(spec: TableSpec, physical_name: str) -> dict:
    """The DynamoDB CreateTable request for `spec` (what DynamoDB Local is given in the docker target)."""
    request = {
        "TableName": physical_name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [{"AttributeName": a.name, "AttributeType": a.type} for a in spec.attributes],
        "KeySchema": [{"AttributeName": spec.hash.name, "KeyType": "HASH"}]
        + ([{"AttributeName": spec.range.name, "KeyType": "RANGE"}] if spec.range else []),
    }
    if spec.gsis:
        request["GlobalSecondaryIndexes"] = [
            {"IndexName": i.name, "KeySchema": _key_schema(i, spec), "Projection": {"ProjectionType": i.projection}}
            for i in spec.gsis
        ]
    if spec.lsis:
        request["LocalSecondaryIndexes"] = [
            {"IndexName": i.name, "KeySchema": _key_schema(i, spec), "Projection": {"ProjectionType": i.projection}}
            for i in spec.lsis
        ]
    return request


def table_name(name_prefix: str, spec: TableSpec, restored: Optional[str] = None) -> str:
    """The physical name of `spec`'s table: <prefix>-<spec.name>, or <prefix>-<spec.name>-<suffix> for the
    set `python -m commstack signal-restore tables` restored (commstack:signalRestoredTables)."""
    return f"{name_prefix}-{spec.name}" + (f"-{restored}" if restored else "")


@dataclass
class TablesArgs:
    tables: Sequence[TableSpec]
    name_prefix: str  # physical names are <prefix>-<spec.name>
    # Suffixes of restored table sets, oldest first (commstack:signalRestoredTables); the server uses the last.
    restored: Sequence[str] = ()


class Tables(pulumi.ComponentResource):
    """Every table, on-demand, PITR, encrypted, deletion-protected, TTL where the server writes one.

    A point-in-time restore makes new tables (DynamoDB never restores in place). Each restored set is
    adopted with `import_` beside the originals, with the same inputs, so it gets the same protection:
    the originals stay registered unchanged (never replaced, never deleted), every earlier set stays
    too (dropping one would delete protected tables), and `names`/`arns`/`index_arns` (what config.yml
    and the instance role name) are the live set's: the last restored one, else the originals.
    """

    tables: dict[str, pulumi.CustomResource]  # aws.dynamodb.Table of the live set, by config path
    originals: dict[str, pulumi.CustomResource]  # the tables `pulumi up` created, by config path
    restored: dict[str, dict[str, pulumi.CustomResource]]  # suffix -> config path -> adopted table
    names: pulumi.Output  # {config path: physical name} of the live set
    arns: pulumi.Output  # [table ARN] of the live set
    index_arns: pulumi.Output  # [<table ARN>/index/<name>] of every GSI and LSI, nothing for tables without one

    def __init__(self, name: str, args: TablesArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("commstack:signal:Tables", name, None, opts)
        import pulumi_aws as aws  # AWS target only: the docker target never loads the SDK

        def table(resource_name: str, spec: TableSpec, physical: str, **options) -> pulumi.CustomResource:
            return aws.dynamodb.Table(
                resource_name,
                name=physical,
                billing_mode="PAY_PER_REQUEST",
                hash_key=spec.hash.name,
                range_key=spec.range.name if spec.range else None,
                attributes=[aws.dynamodb.TableAttributeArgs(name=a.name, type=a.type) for a in spec.attributes],
                global_secondary_indexes=[
                    aws.dynamodb.TableGlobalSecondaryIndexArgs(
                        name=i.name, projection_type=i.projection,
                        key_schemas=[aws.dynamodb.TableGlobalSecondaryIndexKeySchemaArgs(
                            attribute_name=k["AttributeName"], key_type=k["KeyType"]) for k in _key_schema(i, spec)])
                    for i in spec.gsis
                ] or None,
                local_secondary_indexes=[
                    aws.dynamodb.TableLocalSecondaryIndexArgs(name=i.name, projection_type=i.projection,
                                                              range_key=i.range.name) for i in spec.lsis
                ] or None,
                point_in_time_recovery=aws.dynamodb.TablePointInTimeRecoveryArgs(enabled=True),
                server_side_encryption=aws.dynamodb.TableServerSideEncryptionArgs(enabled=True),
                deletion_protection_enabled=True,
                ttl=aws.dynamodb.TableTtlArgs(attribute_name=spec.ttl, enabled=True) if spec.ttl else None,
                opts=stateful_child(self, **options),
            )

        def slug(spec: TableSpec) -> str:
            return f"{name}-{spec.name.lower().replace('_', '-')}"

        self.originals = {spec.config: table(slug(spec), spec, table_name(args.name_prefix, spec))
                          for spec in args.tables}
        self.restored = {}
        for suffix in args.restored:
            # import_: the restore made the table; adopting it fails (changing nothing) unless it matches these
            # inputs, which `signal-restore tables` sees to (PITR, deletion protection, TTL, encryption, tags).
            self.restored[suffix] = {
                spec.config: table(f"{slug(spec)}-{suffix}", spec, table_name(args.name_prefix, spec, suffix),
                                   import_=table_name(args.name_prefix, spec, suffix))
                for spec in args.tables}
        self.tables = self.restored[args.restored[-1]] if args.restored else self.originals
        self.names = pulumi.Output.all(**{path: t.name for path, t in self.tables.items()})
        self.arns = pulumi.Output.all(*[t.arn for t in self.tables.values()])
        self.index_arns = pulumi.Output.all(*[
            self.tables[spec.config].arn.apply(lambda arn, index=index.name: f"{arn}/index/{index}")
            for spec in args.tables for index in spec.gsis + spec.lsis])
        self.register_outputs({"names": self.names, "arns": self.arns, "index_arns": self.index_arns})


@dataclass
class BucketsArgs:
    buckets: Sequence[BucketSpec]
    name_prefix: str


class Buckets(pulumi.ComponentResource):
    """Private, public-access-blocked, encrypted, versioned, protected, TLS-only buckets (components/s3.py)."""

    buckets: dict[str, pulumi.CustomResource]  # aws.s3.Bucket by config path
    controls: list[pulumi.CustomResource]  # access block, ownership, encryption, versioning, policy of each bucket
    names: pulumi.Output
    arns: pulumi.Output

    def __init__(self, name: str, args: BucketsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("commstack:signal:Buckets", name, None, opts)
        from components.s3 import private_bucket

        self.buckets = {}
        self.controls = []
        for spec in args.buckets:
            made = private_bucket(f"{name}-{spec.name}", self, bucket_prefix=f"{args.name_prefix}-{spec.name}-")
            self.controls += made.controls
            self.buckets[spec.config] = made.bucket
        self.names = pulumi.Output.all(**{path: b.bucket for path, b in self.buckets.items()})
        self.arns = pulumi.Output.all(*[b.arn for b in self.buckets.values()])
        self.register_outputs({"names": self.names, "arns": self.arns})
