"""The S3 bucket the Matrix backups go to when backupTarget is `aws`, and the job's credential.

Private, versioned, encrypted, TLS-only and protected (components/s3.py), with a lifecycle rule. The
backup job runs on the Docker host, outside AWS, so it needs an access key: an IAM user's, which can
read the repository and add to it, from the host's address only, and can delete nothing but restic's
lock files. So a compromised host cannot erase history:
- deleting a snapshot, an index or a pack is refused (only `<prefix>/locks/*` may be deleted);
- deleting an object version, or changing versioning, the lifecycle rule or the bucket policy is
  refused (explicit denies in the user's policy and in the bucket policy, which no grant can undo);
- overwriting an object only makes a new version: the replaced one is kept NONCURRENT_VERSION_DAYS.
Pruning (restic forget --prune) runs from the admin's machine with the admin's own credentials
(`python -m commstack backup-prune`); what it deletes stays recoverable for NONCURRENT_VERSION_DAYS.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Optional

import pulumi

from components.common import child
from components.settings import non_routable_ipv4

# Versions restic's prune deleted, or a compromised host overwrote, stay recoverable this long: the window in
# which an admin notices (doctor, the weekly drill, backup-prune's `restic check`) and restores them.
NONCURRENT_VERSION_DAYS = 30
ABORT_INCOMPLETE_UPLOAD_DAYS = 7
REPOSITORY_PREFIX = "restic"  # components/matrix/backup.py s3_repository_url's default
# What the host's key must never do to the bucket: every way of losing history or loosening these rules.
HISTORY_ACTIONS = ["s3:DeleteObjectVersion", "s3:DeleteBucket", "s3:DeleteBucketPolicy", "s3:PutBucketPolicy",
                   "s3:PutBucketVersioning", "s3:PutLifecycleConfiguration", "s3:PutBucketObjectLockConfiguration",
                   "s3:PutObjectRetention", "s3:PutObjectLegalHold", "s3:BypassGovernanceRetention",
                   "s3:PutBucketOwnershipControls", "s3:PutBucketPublicAccessBlock", "s3:PutBucketAcl",
                   "s3:PutObjectAcl", "s3:PutObjectVersionAcl", "s3:PutEncryptionConfiguration",
                   "s3:PutReplicationConfiguration"]


def source_cidr(public_ip: str) -> str:
    """The host's address as the one-address CIDR aws:SourceIp takes."""
    address = ipaddress.ip_address(public_ip)
    return f"{address}/{address.max_prefixlen}"


def job_policy(bucket_arn: str, source_ip: Optional[str] = None, prefix: str = REPOSITORY_PREFIX) -> dict:
    """What restic needs to back up to, check and restore from its repository (restic docs, "Amazon S3"), from
    `source_ip` only when given, and nothing more: it may add objects under `prefix`, read them, and delete
    its own lock files (no other delete is granted; the bucket policy denies the rest outright, see
    job_bucket_statements); every other action that loses history is denied outright here too."""
    only_from = {"Condition": {"IpAddress": {"aws:SourceIp": [source_cidr(source_ip)]}}} if source_ip else {}
    repository = f"{bucket_arn}/{prefix}"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "Bucket", "Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
             "Resource": [bucket_arn], **only_from},
            {"Sid": "Read", "Effect": "Allow", "Action": ["s3:GetObject"], "Resource": [f"{repository}/*"], **only_from},
            {"Sid": "Add", "Effect": "Allow", "Action": ["s3:PutObject"], "Resource": [f"{repository}/*"], **only_from},
            # restic removes its own lock at the end of every command.
            {"Sid": "Locks", "Effect": "Allow", "Action": ["s3:DeleteObject"], "Resource": [f"{repository}/locks/*"],
             **only_from},
            {"Sid": "NoHistoryChanges", "Effect": "Deny", "Action": HISTORY_ACTIONS,
             "Resource": [bucket_arn, f"{bucket_arn}/*"]},
        ],
    }


def job_bucket_statements(bucket_arn: str, job_user_arn: str, source_ip: Optional[str] = None,
                          prefix: str = REPOSITORY_PREFIX) -> list[dict]:
    """The bucket policy's side of the same rules for the job's user (besides components/s3.py's TLS rule):
    they hold even if someone later grants that user more."""
    job = {"AWS": job_user_arn}
    statements = [
        {"Sid": "JobDeletesLocksOnly", "Effect": "Deny", "Principal": job, "Action": ["s3:DeleteObject"],
         "NotResource": [f"{bucket_arn}/{prefix}/locks/*"]},
        {"Sid": "JobKeepsHistory", "Effect": "Deny", "Principal": job, "Action": HISTORY_ACTIONS,
         "Resource": [bucket_arn, f"{bucket_arn}/*"]},
    ]
    if source_ip:
        statements.append({"Sid": "JobFromItsHostOnly", "Effect": "Deny", "Principal": job, "Action": "s3:*",
                           "Resource": [bucket_arn, f"{bucket_arn}/*"],
                           "Condition": {"NotIpAddress": {"aws:SourceIp": [source_cidr(source_ip)]}}})
    return statements


def lifecycle_rules() -> list[dict]:
    return [{"id": "old-versions-and-unfinished-uploads", "status": "Enabled", "filter": {},
             "noncurrent_version_expiration": {"noncurrent_days": NONCURRENT_VERSION_DAYS},
             # The delete markers prune leaves, once the versions under them have expired.
             "expiration": {"expired_object_delete_marker": True},
             "abort_incomplete_multipart_upload": {"days_after_initiation": ABORT_INCOMPLETE_UPLOAD_DAYS}}]


@dataclass
class BackupBucketArgs:
    name_prefix: str  # e.g. commstack-prod-matrix-backups
    source_ip: Optional[str] = None  # the Docker host's public address (commstack:publicIp)


class BackupBucket(pulumi.ComponentResource):
    bucket_name: pulumi.Output[str]
    access_key_id: pulumi.Output[str]
    secret_access_key: pulumi.Output[str]  # secret

    def __init__(self, name: str, args: BackupBucketArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("commstack:matrix:BackupBucket", name, None, opts)
        import pulumi_aws as aws  # only stacks that back up to AWS load the SDK

        from components.s3 import private_bucket

        # S3 sees a host behind NAT at its router's address: a private publicIp cannot be the source.
        source_ip = args.source_ip if args.source_ip and not non_routable_ipv4(args.source_ip) else None
        if args.source_ip and source_ip is None:
            pulumi.log.warn(f"commstack:publicIp {args.source_ip} is not a public address, so the backup bucket's key "
                            "works from any address; set the Docker host's public IPv4 to restrict it to that host",
                            self)
        user = aws.iam.User(f"{name}-job", path="/commstack/", opts=child(self))
        made = private_bucket(f"{name}-bucket", self, bucket_prefix=f"{args.name_prefix}-", controls=name,
                              extra_statements=lambda arn: user.arn.apply(
                                  lambda user_arn: job_bucket_statements(arn, user_arn, source_ip)))
        bucket = made.bucket
        aws.s3.BucketLifecycleConfiguration(f"{name}-lifecycle", bucket=bucket.id, rules=lifecycle_rules(),
                                            opts=child(self, depends_on=[made.versioning]))
        aws.iam.UserPolicy(f"{name}-job-policy", user=user.name,
                           policy=bucket.arn.apply(lambda arn: json.dumps(job_policy(arn, source_ip))),
                           opts=child(self))
        key = aws.iam.AccessKey(f"{name}-job-key", user=user.name, opts=child(self))
        self.bucket_name = bucket.bucket
        self.access_key_id = key.id
        self.secret_access_key = pulumi.Output.secret(key.secret)
        self.register_outputs({"bucket_name": self.bucket_name, "access_key_id": self.access_key_id})
