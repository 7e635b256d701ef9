"""The S3 buckets of a stack (the Signal half's and the Matrix backup bucket): each one private
(public access blocked, owner-enforced), encrypted, versioned and protected, with a bucket policy
that refuses every request not made over TLS (`aws:SecureTransport`, AWS's S3 security best
practices) plus whatever the bucket's owner adds.

pulumi_aws is imported inside the function: only stacks with an AWS bucket load it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import pulumi

from components.common import child, stateful_child


def tls_only_statement(bucket_arn: str) -> dict:
    """Deny, to everyone (the account's admins too), any request to the bucket or its objects over plain HTTP."""
    return {"Sid": "TlsOnly", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
            "Resource": [bucket_arn, f"{bucket_arn}/*"], "Condition": {"Bool": {"aws:SecureTransport": "false"}}}


def bucket_policy(bucket_arn: str, extra: Sequence[dict] = ()) -> dict:
    return {"Version": "2012-10-17", "Statement": [tls_only_statement(bucket_arn), *extra]}


@dataclass
class PrivateBucket:
    bucket: pulumi.CustomResource  # aws.s3.Bucket
    versioning: pulumi.CustomResource  # aws.s3.BucketVersioning
    controls: list  # public access block, ownership, encryption, versioning, policy
    policy: pulumi.CustomResource  # aws.s3.BucketPolicy


def private_bucket(name: str, parent: pulumi.Resource, *, bucket_prefix: str, controls: Optional[str] = None,
                   extra_statements: Optional[Callable[[str], pulumi.Input[Sequence[dict]]]] = None) -> PrivateBucket:
    """One protected bucket named `name` and its controls, children of `parent` named `<controls>-...`
    (default: `name`; the names existing stacks already have). `extra_statements` maps the bucket's ARN
    to more bucket-policy statements (an Output is fine)."""
    import pulumi_aws as aws

    controls = controls or name
    bucket = aws.s3.Bucket(name, bucket_prefix=bucket_prefix, force_destroy=False, opts=stateful_child(parent))
    access = aws.s3.BucketPublicAccessBlock(f"{controls}-public-access", bucket=bucket.id, block_public_acls=True,
                                            block_public_policy=True, ignore_public_acls=True,
                                            restrict_public_buckets=True, opts=child(parent))
    ownership = aws.s3.BucketOwnershipControls(f"{controls}-ownership", bucket=bucket.id,
                                               rule={"object_ownership": "BucketOwnerEnforced"}, opts=child(parent))
    sse = aws.s3.BucketServerSideEncryptionConfiguration(
        f"{controls}-sse", bucket=bucket.id,
        rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"}, "bucket_key_enabled": True}],
        opts=child(parent))
    versioning = aws.s3.BucketVersioning(f"{controls}-versioning", bucket=bucket.id,
                                         versioning_configuration={"status": "Enabled"}, opts=child(parent))
    document = bucket.arn.apply(lambda arn: pulumi.Output.from_input(
        extra_statements(arn) if extra_statements else []).apply(lambda more: json.dumps(bucket_policy(arn, more))))
    # After the access block: S3 checks a new policy against it.
    policy = aws.s3.BucketPolicy(f"{controls}-policy", bucket=bucket.id, policy=document,
                                 opts=child(parent, depends_on=[access]))
    return PrivateBucket(bucket, versioning, [access, ownership, sse, versioning, policy], policy)
