"""DynamoDB tables and S3 buckets come from the version data file and carry the safety settings."""

import json

import boto3
import pulumi
from moto import mock_aws

from components.signal.storage import Buckets, BucketsArgs, Tables, TablesArgs, create_table_request
from components.signal.version import load_version

VERSION = load_version("v9.81.0")


def _key_schema(reg_index):
    return {(k["attributeName"], k["keyType"]) for k in reg_index["keySchemas"]}


@pulumi.runtime.test
def test_each_table_matches_the_data_file(recorded):
    tables = Tables("t", TablesArgs(VERSION.tables, "test-signal"))

    def check(names):
        regs = {r.plain_inputs["name"]: r for r in recorded.of_type("aws:dynamodb/table:Table")}
        assert len(regs) == len(VERSION.tables) == 22
        for spec in VERSION.tables:
            reg = regs[f"test-signal-{spec.name}"]
            inputs = reg.plain_inputs
            assert names[spec.config] == inputs["name"]
            assert inputs["hashKey"] == spec.hash.name
            assert inputs.get("rangeKey") == (spec.range.name if spec.range else None)
            assert {(a["name"], a["type"]) for a in inputs["attributes"]} == {(a.name, a.type) for a in spec.attributes}
            assert inputs["billingMode"] == "PAY_PER_REQUEST"
            assert inputs["pointInTimeRecovery"] == {"enabled": True}
            assert inputs["serverSideEncryption"] == {"enabled": True}
            assert inputs["deletionProtectionEnabled"] is True
            assert reg.protect is True
            if spec.ttl:
                assert inputs["ttl"] == {"attributeName": spec.ttl, "enabled": True}
            else:
                assert "ttl" not in inputs
            gsis = {g["name"]: g for g in inputs.get("globalSecondaryIndexes", [])}
            assert set(gsis) == {g.name for g in spec.gsis}
            for g in spec.gsis:
                assert _key_schema(gsis[g.name]) == {(g.hash.name, "HASH")}
                assert gsis[g.name]["projectionType"] == g.projection
            lsis = {i["name"]: i for i in inputs.get("localSecondaryIndexes", [])}
            assert {n: (i["rangeKey"], i["projectionType"]) for n, i in lsis.items()} == {
                i.name: (i.range.name, i.projection) for i in spec.lsis}

    return tables.names.apply(check)


def test_data_file_records_the_schema_the_v9_81_code_uses():
    by_path = {t.config: t for t in VERSION.tables}
    # The jtof guide swapped these two; Accounts.java uses P (S) and PNI (B).
    assert (by_path["accounts.phoneNumberTableName"].hash.name, by_path["accounts.phoneNumberTableName"].hash.type) == ("P", "S")
    assert (by_path["accounts.phoneNumberIdentifierTableName"].hash.name,
            by_path["accounts.phoneNumberIdentifierTableName"].hash.type) == ("PNI", "B")
    messages = by_path["messages.tableName"]
    assert [(i.name, i.range.name) for i in messages.lsis] == [("Message_UUID_Index", "U")]
    assert messages.ttl == "E"
    assert by_path["accounts.usernamesTableName"].ttl == "TTL"
    assert by_path["pushChallenge.tableName"].ttl == "T"
    assert {t.config.split(".")[0] for t in VERSION.tables} >= {"pendingAccounts", "pendingDevices", "pqKeys"}


@mock_aws
def test_create_table_requests_are_accepted_by_dynamodb():
    """The docker target's CreateTable requests, replayed against moto's DynamoDB."""
    client = boto3.client("dynamodb", region_name="us-east-1")
    for spec in VERSION.tables:
        client.create_table(**create_table_request(spec, f"local-{spec.name}"))
        table = client.describe_table(TableName=f"local-{spec.name}")["Table"]
        assert {k["AttributeName"]: k["KeyType"] for k in table["KeySchema"]} == {
            spec.hash.name: "HASH", **({spec.range.name: "RANGE"} if spec.range else {})}
        assert {i["IndexName"] for i in table.get("GlobalSecondaryIndexes", [])} == {g.name for g in spec.gsis}
        assert {i["IndexName"] for i in table.get("LocalSecondaryIndexes", [])} == {i.name for i in spec.lsis}
    assert len(client.list_tables()["TableNames"]) == len(VERSION.tables)


@pulumi.runtime.test
def test_buckets_are_private_encrypted_versioned_and_protected(recorded):
    buckets = Buckets("b", BucketsArgs(VERSION.buckets, "test-signal"))

    def check(args):
        names = args[0]
        assert set(names) == {b.config for b in VERSION.buckets}
        regs = recorded.of_type("aws:s3/bucket:Bucket")
        assert len(regs) == len(VERSION.buckets) and all(r.protect is True for r in regs)
        for block in recorded.of_type("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"):
            flags = block.plain_inputs
            assert all(flags[k] is True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls",
                                                  "restrictPublicBuckets"))
        sse = recorded.of_type("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")
        assert [r.plain_inputs["rules"][0]["applyServerSideEncryptionByDefault"]["sseAlgorithm"] for r in sse] == ["AES256"] * 2
        versioning = recorded.of_type("aws:s3/bucketVersioning:BucketVersioning")
        assert [r.plain_inputs["versioningConfiguration"]["status"] for r in versioning] == ["Enabled"] * 2
        # Each bucket refuses every request not made over TLS, and says nothing else.
        by_bucket = {r.plain_outputs["id"]: r.plain_outputs["arn"] for r in regs}
        policies = recorded.of_type("aws:s3/bucketPolicy:BucketPolicy")
        assert sorted(p.plain_inputs["bucket"] for p in policies) == sorted(by_bucket)
        for reg in policies:
            arn = by_bucket[reg.plain_inputs["bucket"]]
            assert json.loads(reg.plain_inputs["policy"]) == {"Version": "2012-10-17", "Statement": [
                {"Sid": "TlsOnly", "Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": [arn, f"{arn}/*"],
                 "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]}

    return pulumi.Output.all(buckets.names, *[c.id for c in buckets.controls]).apply(check)
