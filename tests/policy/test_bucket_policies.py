"""The prod stack's rendered S3 and IAM policy documents, evaluated by a real IAM policy evaluator
(tests/policy/iamsim.py): what the Docker host's backup key can and cannot do to the backup bucket, from
where and over what, and that every bucket of the stack refuses plain HTTP, the account's admins included.

What this proves: AWS's evaluation logic, as iam-simulate implements it, gives these results for exactly the
documents the program renders (the prod stack's UserPolicy, BucketPolicy and RolePolicy registrations). What
it does not: that AWS itself matches that implementation, or that restic works within the policy (that is
tests/integration/test_backup.py, with real restic against moto's IAM enforcement).
"""

from __future__ import annotations

import json

import pytest

from commstack.devtools import offline
from tests.policy import iamsim

ACCOUNT = offline.ACCOUNT_ID
HOST_IP = "203.0.113.10"  # Pulumi.prod.yaml's commstack:publicIp
ELSEWHERE = "198.51.100.7"
ADMIN = f"arn:aws:iam::{ACCOUNT}:user/admin"
ADMIN_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


def _by_name(evaluation, suffix: str):
    found, = [r for r in evaluation.registrations if r.name.endswith(suffix)]
    return found


@pytest.fixture(scope="module")
def documents(prod_evaluation) -> dict:
    bucket = _by_name(prod_evaluation, "matrix-backup-bucket-bucket")
    policies = {r.plain_inputs["bucket"]: json.loads(r.plain_inputs["policy"])
                for r in prod_evaluation.of_type("aws:s3/bucketPolicy:BucketPolicy")}
    signal_buckets = [r for r in prod_evaluation.of_type("aws:s3/bucket:Bucket") if r.name.startswith("signal-")]
    role = _by_name(prod_evaluation, "signal-iam-role")
    return {
        "backup_arn": bucket.plain_outputs["arn"],
        "backup_policy": policies[bucket.plain_outputs["id"]],
        "job_arn": _by_name(prod_evaluation, "matrix-backup-bucket-job").plain_outputs["arn"],
        "job_policy": json.loads(_by_name(prod_evaluation, "matrix-backup-bucket-job-policy").plain_inputs["policy"]),
        "signal": [(b.plain_outputs["arn"], policies[b.plain_outputs["id"]]) for b in signal_buckets],
        "role_arn": role.plain_outputs["arn"],
        "role_policy": json.loads(_by_name(prod_evaluation, "signal-iam-policy").plain_inputs["policy"]),
        "every_bucket": {b.plain_outputs["id"] for b in prod_evaluation.of_type("aws:s3/bucket:Bucket")},
        "with_policy": set(policies),
    }


def request(principal: str, action: str, resource: str, identity: list[dict], resource_policy: dict,
            ip: str = HOST_IP, tls: bool = True) -> dict:
    return {"request": {"principal": principal, "action": action, "resource": {"resource": resource, "accountId": ACCOUNT},
                        "contextVariables": {"aws:SourceIp": ip, "aws:SecureTransport": "true" if tls else "false"}},
            "identityPolicies": [{"name": f"p{i}", "policy": p} for i, p in enumerate(identity)],
            "resourcePolicy": resource_policy}


# (what, action, object key or None for the bucket, source address, TLS, the result AWS gives)
HOST_CASES = [
    ("adds a pack", "s3:PutObject", "restic/data/3f/3f00", HOST_IP, True, "Allowed"),
    ("reads the config", "s3:GetObject", "restic/config", HOST_IP, True, "Allowed"),
    ("lists the repository", "s3:ListBucket", None, HOST_IP, True, "Allowed"),
    ("removes its lock", "s3:DeleteObject", "restic/locks/9a1c", HOST_IP, True, "Allowed"),
    ("deletes a snapshot", "s3:DeleteObject", "restic/snapshots/5b2e", HOST_IP, True, "ExplicitlyDenied"),
    ("deletes a pack", "s3:DeleteObject", "restic/data/3f/3f00", HOST_IP, True, "ExplicitlyDenied"),
    ("deletes a version", "s3:DeleteObjectVersion", "restic/snapshots/5b2e", HOST_IP, True, "ExplicitlyDenied"),
    ("shortens the lifecycle", "s3:PutLifecycleConfiguration", None, HOST_IP, True, "ExplicitlyDenied"),
    ("suspends versioning", "s3:PutBucketVersioning", None, HOST_IP, True, "ExplicitlyDenied"),
    ("replaces the bucket policy", "s3:PutBucketPolicy", None, HOST_IP, True, "ExplicitlyDenied"),
    ("writes outside the repository", "s3:PutObject", "elsewhere/x", HOST_IP, True, "ImplicitlyDenied"),
    ("adds from another address", "s3:PutObject", "restic/data/3f/3f00", ELSEWHERE, True, "ExplicitlyDenied"),
    ("reads from another address", "s3:GetObject", "restic/config", ELSEWHERE, True, "ExplicitlyDenied"),
    ("adds over plain HTTP", "s3:PutObject", "restic/data/3f/3f00", HOST_IP, False, "ExplicitlyDenied"),
]


def test_the_host_key_adds_and_reads_from_its_address_and_deletes_only_its_locks(documents):
    arn = documents["backup_arn"]
    simulations = [request(documents["job_arn"], action, f"{arn}/{key}" if key else arn, [documents["job_policy"]],
                           documents["backup_policy"], ip, tls) for _, action, key, ip, tls, _ in HOST_CASES]
    results = iamsim.simulate(simulations)
    got = {case[0]: result["result"] for case, result in zip(HOST_CASES, results)}
    assert got == {case[0]: case[-1] for case in HOST_CASES}


def test_history_stays_even_if_the_host_key_is_later_granted_everything(documents):
    # The bucket policy's denies name the job's user: a broader grant added to it later changes nothing.
    arn = documents["backup_arn"]
    identity = [documents["job_policy"], ADMIN_POLICY]
    cases = [("s3:DeleteObject", f"{arn}/restic/snapshots/5b2e", HOST_IP, "ExplicitlyDenied"),
             ("s3:DeleteObjectVersion", f"{arn}/restic/index/77aa", HOST_IP, "ExplicitlyDenied"),
             ("s3:PutLifecycleConfiguration", arn, HOST_IP, "ExplicitlyDenied"),
             ("s3:GetObject", f"{arn}/restic/config", ELSEWHERE, "ExplicitlyDenied"),
             ("s3:DeleteObject", f"{arn}/restic/locks/9a1c", HOST_IP, "Allowed")]
    results = iamsim.simulate([request(documents["job_arn"], action, resource, identity, documents["backup_policy"], ip)
                               for action, resource, ip, _ in cases])
    assert [r["result"] for r in results] == [case[-1] for case in cases]


def test_the_admin_prunes_from_anywhere_but_only_over_tls(documents):
    arn = documents["backup_arn"]
    cases = [("s3:DeleteObject", f"{arn}/restic/snapshots/5b2e", ELSEWHERE, True, "Allowed"),
             ("s3:DeleteObjectVersion", f"{arn}/restic/snapshots/5b2e", ELSEWHERE, True, "Allowed"),
             ("s3:DeleteObject", f"{arn}/restic/snapshots/5b2e", ELSEWHERE, False, "ExplicitlyDenied")]
    results = iamsim.simulate([request(ADMIN, action, resource, [ADMIN_POLICY], documents["backup_policy"], ip, tls)
                               for action, resource, ip, tls, _ in cases])
    assert [r["result"] for r in results] == [case[-1] for case in cases]


def test_every_bucket_has_a_policy_and_refuses_plain_http(documents):
    assert documents["every_bucket"] == documents["with_policy"]
    role_session = f"arn:aws:sts::{ACCOUNT}:assumed-role/signal-iam-role/i-0123456789abcdef0"
    simulations, expected = [], []
    for arn, policy in documents["signal"]:
        for tls, result in ((True, "Allowed"), (False, "ExplicitlyDenied")):
            simulations.append(request(role_session, "s3:GetObject", f"{arn}/avatars/x", [documents["role_policy"]],
                                       policy, ELSEWHERE, tls))
            expected.append(result)
    assert len(simulations) == 4
    assert [r["result"] for r in iamsim.simulate(simulations)] == expected


def test_the_evaluator_can_say_allowed_and_denied():
    # The check can fail both ways: a plain allow, and the same request without a grant.
    grant = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject",
                                                     "Resource": "arn:aws:s3:::b/*"}]}
    none = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:ListBucket",
                                                    "Resource": "arn:aws:s3:::b"}]}
    results = iamsim.simulate([request(ADMIN, "s3:GetObject", "arn:aws:s3:::b/k", [p], None) for p in (grant, none)])
    assert [r["result"] for r in results] == ["Allowed", "ImplicitlyDenied"]
