"""The S3 bucket the Matrix backups go to when backupTarget is `aws`, and the job's credential.

Private (public access blocked, owner-enforced), versioned, encrypted, protected, with a lifecycle
rule (old object versions expire, unfinished uploads are aborted), and an IAM user whose only
permissions are this bucket's objects: the backup job runs on the Docker host, outside AWS, so it
needs an access key; it gets nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import pulumi

from components.common import child, stateful_child

# Versions restic replaced or deleted (prune, forget) stay recoverable this long.
NONCURRENT_VERSION_DAYS = 30
ABORT_INCOMPLETE_UPLOAD_DAYS = 7


def job_policy(bucket_arn: str) -> dict:
    """What restic needs on its repository bucket (restic docs, "Amazon S3"), and nothing more."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "Bucket", "Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
             "Resource": [bucket_arn]},
            {"Sid": "Objects", "Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
             "Resource": [f"{bucket_arn}/*"]},
        ],
    }


@dataclass
class BackupBucketArgs:
    name_prefix: str  # e.g. commstack-prod-matrix-backups


class BackupBucket(pulumi.ComponentResource):
    bucket_name: pulumi.Output[str]
    access_key_id: pulumi.Output[str]
    secret_access_key: pulumi.Output[str]  # secret

    def __init__(self, name: str, args: BackupBucketArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("commstack:matrix:BackupBucket", name, None, opts)
        import pulumi_aws as aws  # only stacks that back up to AWS load the SDK

        bucket = aws.s3.Bucket(f"{name}-bucket", bucket_prefix=f"{args.name_prefix}-", force_destroy=False,
                               opts=stateful_child(self))
        aws.s3.BucketPublicAccessBlock(f"{name}-public-access", bucket=bucket.id, block_public_acls=True,
                                       block_public_policy=True, ignore_public_acls=True,
                                       restrict_public_buckets=True, opts=child(self))
        aws.s3.BucketOwnershipControls(f"{name}-ownership", bucket=bucket.id,
                                       rule={"object_ownership": "BucketOwnerEnforced"}, opts=child(self))
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-sse", bucket=bucket.id,
            rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"}, "bucket_key_enabled": True}],
            opts=child(self))
        versioning = aws.s3.BucketVersioning(f"{name}-versioning", bucket=bucket.id,
                                             versioning_configuration={"status": "Enabled"}, opts=child(self))
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-lifecycle", bucket=bucket.id,
            rules=[{"id": "old-versions-and-unfinished-uploads", "status": "Enabled", "filter": {},
                    "noncurrent_version_expiration": {"noncurrent_days": NONCURRENT_VERSION_DAYS},
                    "abort_incomplete_multipart_upload": {"days_after_initiation": ABORT_INCOMPLETE_UPLOAD_DAYS}}],
            opts=child(self, depends_on=[versioning]))
        user = aws.iam.User(f"{name}-job", path="/commstack/", opts=child(self))
        aws.iam.UserPolicy(f"{name}-job-policy", user=user.name,
                           policy=bucket.arn.apply(lambda arn: json.dumps(job_policy(arn))), opts=child(self))
        key = aws.iam.AccessKey(f"{name}-job-key", user=user.name, opts=child(self))
        self.bucket_name = bucket.bucket
        self.access_key_id = key.id
        self.secret_access_key = pulumi.Output.secret(key.secret)
        self.register_outputs({"bucket_name": self.bucket_name, "access_key_id": self.access_key_id})
