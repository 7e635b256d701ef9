"""The Signal instance's role: exactly the stack's tables, buckets, parameters and AppConfig profile."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional, Sequence

import pulumi
import pulumi_aws as aws

from components.common import child

ASSUME_EC2 = json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
})


def policy_document(*, table_arns: Sequence[str], index_arns: Sequence[str], bucket_arns: Sequence[str],
                    ssm_read_arns: Sequence[str], ssm_write_arns: Sequence[str], appconfig_arns: Sequence[str],
                    jar_object_arn: Optional[str] = None) -> dict:
    """Least privilege, resource by resource; no action is a wildcard, and the only wildcard resource is
    `<bucket ARN>/*` for object actions (an S3 object ARN names a key, and the server writes new keys)."""
    statements = [
        {"Sid": "Tables", "Effect": "Allow",
         "Action": ["dynamodb:BatchGetItem", "dynamodb:BatchWriteItem", "dynamodb:ConditionCheckItem",
                    "dynamodb:DeleteItem", "dynamodb:DescribeTable", "dynamodb:GetItem", "dynamodb:PutItem",
                    "dynamodb:Query", "dynamodb:Scan", "dynamodb:UpdateItem"],
         "Resource": list(table_arns) + list(index_arns)},
        {"Sid": "Buckets", "Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
         "Resource": list(bucket_arns)},
        {"Sid": "Objects", "Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
         "Resource": [f"{arn}/*" for arn in bucket_arns]},
        {"Sid": "ReadParameters", "Effect": "Allow", "Action": ["ssm:GetParameter", "ssm:GetParameters"],
         "Resource": list(ssm_read_arns)},
        # First boot writes the values only the server's own jar can make (never overwrites).
        {"Sid": "WriteFirstBootParameters", "Effect": "Allow", "Action": ["ssm:PutParameter"],
         "Resource": list(ssm_write_arns)},
        {"Sid": "DynamicConfig", "Effect": "Allow",
         "Action": ["appconfig:StartConfigurationSession", "appconfig:GetLatestConfiguration"],
         "Resource": list(appconfig_arns)},
    ]
    if jar_object_arn:
        statements.append({"Sid": "PrebuiltJar", "Effect": "Allow", "Action": ["s3:GetObject"],
                           "Resource": [jar_object_arn]})
    return {"Version": "2012-10-17", "Statement": statements}


@dataclass
class InstanceRoleArgs:
    table_arns: pulumi.Input[Sequence[str]]
    index_arns: pulumi.Input[Sequence[str]]  # exactly the tables' GSIs and LSIs
    bucket_arns: pulumi.Input[Sequence[str]]
    ssm_read_arns: pulumi.Input[Sequence[str]]
    ssm_write_arns: pulumi.Input[Sequence[str]]
    appconfig_arns: pulumi.Input[Sequence[str]]
    jar_object_arn: Optional[str] = None


class InstanceRole(pulumi.ComponentResource):
    """Role + instance profile; credentials come from instance metadata, never access keys."""

    role: aws.iam.Role
    profile: aws.iam.InstanceProfile

    def __init__(self, name: str, args: InstanceRoleArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("commstack:signal:InstanceRole", name, None, opts)
        self.role = aws.iam.Role(f"{name}-role", assume_role_policy=ASSUME_EC2,
                                 description="Signal-Server instance (least privilege)", opts=child(self))
        document = pulumi.Output.all(args.table_arns, args.index_arns, args.bucket_arns, args.ssm_read_arns,
                                     args.ssm_write_arns, args.appconfig_arns).apply(
            lambda a: json.dumps(policy_document(table_arns=a[0], index_arns=a[1], bucket_arns=a[2],
                                                 ssm_read_arns=a[3], ssm_write_arns=a[4], appconfig_arns=a[5],
                                                 jar_object_arn=args.jar_object_arn)))
        aws.iam.RolePolicy(f"{name}-policy", role=self.role.id, policy=document, opts=child(self))
        self.profile = aws.iam.InstanceProfile(f"{name}-profile", role=self.role.name, opts=child(self))
        self.register_outputs({"role_arn": self.role.arn, "profile_name": self.profile.name})


def s3_object_arn(uri: str) -> str:
    """s3://bucket/key -> arn:aws:s3:::bucket/key"""
    return "arn:aws:s3:::" + uri[len("s3://"):]
