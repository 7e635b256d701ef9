"""The policy pack (policy/) against what the program really registers.

Each recorded registration becomes the `ResourceValidationArgs` the analyzer
would build (props wrapped in the analyzer's own unknown-checking proxy) and
the whole stack a `StackValidationArgs`; every policy runs on them. Committed
stacks pass, and each weakened default is caught by exactly the expected policy.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import runpy
import sys
from typing import Callable, Optional

import pulumi_policy
import pytest
import yaml
from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
)
from pulumi_policy.proxy import unknown_checking_proxy

from commstack.devtools import offline
from policy import rules

ROOT = offline.ROOT
Violation = tuple[str, str, str]  # (policy, resource name, message)


# -- the analyzer's view of a recorded evaluation -------------------------------------


def props_of(reg: offline.Registration) -> dict:
    return {**reg.plain_inputs, **reg.plain_outputs}


def options_of(reg: offline.Registration) -> PolicyResourceOptions:
    return PolicyResourceOptions(protect=bool(reg.protect), ignore_changes=list(reg.ignore_changes),
                                 delete_before_replace=None, aliases=list(reg.aliases),
                                 custom_timeouts=PolicyCustomTimeouts(0, 0, 0), additional_secret_outputs=[],
                                 parent=reg.parent or None)


def validation_args(reg: offline.Registration) -> ResourceValidationArgs:
    return ResourceValidationArgs(reg.type, unknown_checking_proxy(props_of(reg)), reg.urn, reg.name,
                                  options_of(reg), provider=None)


def stack_args(registrations: list[offline.Registration]) -> StackValidationArgs:
    resources = {reg.urn: PolicyResource(reg.type, unknown_checking_proxy(props_of(reg)), reg.urn, reg.name,
                                         options_of(reg), None, None, [], {}) for reg in registrations}
    for reg in registrations:
        resource = resources[reg.urn]
        resource.parent = resources.get(reg.parent)
        # The offline engine records dependencies, not per-property ones; the rule falls back to them.
        resource.dependencies = [resources[urn] for urn in reg.dependencies if urn in resources]
    return StackValidationArgs(list(resources.values()))


def run_policies(registrations: list[offline.Registration]) -> list[Violation]:
    names = {reg.urn: reg.name for reg in registrations}
    found: list[Violation] = []
    for policy in rules.POLICIES:
        if isinstance(policy, ResourceValidationPolicy):
            for reg in registrations:
                policy.validate(validation_args(reg),
                                lambda message, urn=None, reg=reg: found.append((policy.name, reg.name, message)))
        else:
            policy.validate(stack_args(registrations),
                            lambda message, urn=None: found.append((policy.name, names.get(urn, "stack"), message)))
    return found


@pytest.fixture(scope="module")
def stacks(dev_evaluation, prod_evaluation) -> dict[str, offline.Evaluation]:
    return {"dev": dev_evaluation, "prod": prod_evaluation}


# -- committed stacks -----------------------------------------------------------------


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_committed_stacks_have_no_violations(stacks, stack):
    assert run_policies(stacks[stack].registrations) == []


def test_every_guarded_kind_of_resource_is_present_so_the_clean_run_means_something(stacks):
    registrations = [reg for ev in stacks.values() for reg in ev.registrations]
    types = {reg.type for reg in registrations}
    assert {rules.REMOTE_IMAGE, rules.BUILT_IMAGE, rules.CONTAINER, rules.DYNAMODB_TABLE, rules.PUBLIC_ACCESS_BLOCK,
            rules.SECURITY_GROUP, "aws:iam/rolePolicy:RolePolicy", "aws:iam/role:Role"} <= types
    assert rules.STATEFUL_TYPES - {"aws:s3/bucketV2:BucketV2"} <= types
    assert sum(rules.is_synapse_signing_key(reg.type, reg.urn) for reg in registrations) == 2  # one per stack
    datastores = {resource.name for ev in stacks.values() for resource in stack_args(ev.registrations).resources
                  if resource.resource_type == rules.CONTAINER
                  and any(rules.is_datastore_image(ref) for ref in rules.container_image_references(resource))}
    assert datastores >= {"matrix-postgres-container", "matrix-postgres-init-container", "signal-local-dynamodb",
                          "signal-local-redis-0"}
    assert not datastores & {"matrix-synapse-container", "matrix-proxy-container", "matrix-turn-container"}
    assert any(reg.plain_inputs.get("ports") for reg in registrations if reg.type == rules.CONTAINER)


# -- weakened defaults ----------------------------------------------------------------


def set_props(**changes) -> Callable[[dict], None]:
    return lambda props: props.update(changes)


def homeserver_edit(**changes) -> Callable[[dict], None]:
    def edit(props):
        for upload in props["uploads"]:
            if upload["file"].endswith("/homeserver.yaml"):
                config = yaml.safe_load(upload["content"])
                config.update(changes)
                upload["content"] = yaml.safe_dump(config)
    return edit


def iam_statement(**changes) -> Callable[[dict], None]:
    def edit(props):
        document = json.loads(props["policy"])
        document["Statement"][0].update(changes)
        props["policy"] = json.dumps(document)
    return edit


def ingress(rule: dict) -> Callable[[dict], None]:
    def edit(props):
        props["ingress"] = [r for r in props["ingress"] if r["fromPort"] != 22] + [rule]
    return edit


def retype(type_: str, props: dict) -> Callable[[offline.Registration], offline.Registration]:
    return lambda reg: dataclasses.replace(reg, type=type_, inputs=props, outputs={})


TCP_80_WORLD = {"protocol": "tcp", "fromPort": 80, "toPort": 80, "cidrBlocks": ["0.0.0.0/0"]}

# (id, stack, resource name, change to its props, change to the registration, expected (policy, message part)s)
CASES = [
    ("image without a tag", "prod", "matrix-postgres-image", set_props(name="postgres"), None,
     [("images-pinned", "has no tag")]),
    ("image on latest", "prod", "matrix-synapse-image", set_props(name="ghcr.io/element-hq/synapse:latest"), None,
     [("images-pinned", "'latest'")]),
    ("built image without a tag", "dev", "signal-local-server-image", set_props(imageName="commstack/signal-server"),
     None, [("images-pinned", "has no tag")]),
    ("container image by moving tag", "dev", "signal-local-registration", set_props(image="nginx:latest"), None,
     [("images-pinned", "'latest'")]),
    ("postgres published on its own port", "prod", "matrix-postgres-container",
     set_props(ports=[{"internal": 5432, "external": 5432, "protocol": "tcp"}]), None,
     [("datastores-not-published", "5432/tcp"), ("published-ports-listed", "publishes 5432/tcp")]),
    ("redis published even on a listed port", "dev", "signal-local-redis-3",
     set_props(ports=[{"internal": 6379, "external": 443, "protocol": "tcp"}]), None,
     [("datastores-not-published", "443/tcp")]),
    ("service published off the list", "prod", "matrix-element-container",
     set_props(ports=[{"internal": 8080, "external": 8080, "protocol": "tcp"}]), None,
     [("published-ports-listed", "publishes 8080/tcp")]),
    ("unprotected table", "prod", "signal-tables-accounts", None, lambda r: dataclasses.replace(r, protect=False),
     [("stateful-resources-protected", "signal-tables-accounts")]),
    ("unprotected volume", "dev", "matrix-synapse-media", None, lambda r: dataclasses.replace(r, protect=None),
     [("stateful-resources-protected", "matrix-synapse-media")]),
    ("unprotected SSM secret", "prod", "signal-secrets-tls-registration-key", None,
     lambda r: dataclasses.replace(r, protect=False), [("stateful-resources-protected", "cannot be recreated")]),
    ("unprotected Synapse signing key", "prod", "matrix-synapse-signing-key", None,
     lambda r: dataclasses.replace(r, protect=False), [("stateful-resources-protected", "signing-key")]),
    ("table without PITR", "prod", "signal-tables-keys", set_props(pointInTimeRecovery={"enabled": False}), None,
     [("dynamodb-tables-durable", "point-in-time recovery is off")]),
    ("table without deletion protection", "prod", "signal-tables-keys", set_props(deletionProtectionEnabled=False),
     None, [("dynamodb-tables-durable", "deletion protection is off")]),
    ("table without SSE", "prod", "signal-tables-messages", set_props(serverSideEncryption=None), None,
     [("dynamodb-tables-durable", "server-side encryption")]),
    ("provisioned table", "prod", "signal-tables-profiles", set_props(billingMode="PROVISIONED"), None,
     [("dynamodb-tables-durable", "'PROVISIONED', not PAY_PER_REQUEST")]),
    ("bucket reachable by public policy", "prod", "signal-buckets-cdn-public-access",
     set_props(restrictPublicBuckets=False), None, [("s3-public-access-blocked", "restrictPublicBuckets")]),
    ("IAM * action", "prod", "signal-iam-policy", iam_statement(Action="*"), None,
     [("iam-least-privilege", "wildcard action '*'")]),
    ("IAM service-wide action", "prod", "signal-iam-policy", iam_statement(Action=["dynamodb:*"]), None,
     [("iam-least-privilege", "'dynamodb:*'")]),
    ("IAM * resource", "prod", "signal-iam-policy", iam_statement(Resource="*"), None,
     [("iam-least-privilege", "every resource")]),
    ("IAM NotAction", "prod", "signal-iam-policy", iam_statement(NotAction=["iam:*"]), None,
     [("iam-least-privilege", "NotAction")]),
    ("SSH from the world", "prod", "signal-firewall-sg",
     ingress({"protocol": "tcp", "fromPort": 22, "toPort": 22, "cidrBlocks": ["0.0.0.0/0"]}), None,
     [("ingress-only-public-ports", "SSH is open to 0.0.0.0/0")]),
    ("port off the list", "prod", "signal-firewall-sg",
     ingress({"protocol": "tcp", "fromPort": 8080, "toPort": 8080, "cidrBlocks": ["10.0.0.0/8"]}), None,
     [("ingress-only-public-ports", "tcp 8080-8080")]),
    ("all protocols", "prod", "signal-firewall-sg",
     ingress({"protocol": "-1", "fromPort": 0, "toPort": 0, "cidrBlocks": ["0.0.0.0/0"]}), None,
     [("ingress-only-public-ports", "ingress all 0-0")]),
    ("UDP on an HTTP port", "prod", "signal-firewall-sg", ingress({**TCP_80_WORLD, "protocol": "udp"}), None,
     [("ingress-only-public-ports", "udp 80-80")]),
    ("SSH from the IPv6 world by a standalone rule", "prod", "signal-firewall-sg", None,
     retype(rules.INGRESS_RULE, {"ipProtocol": "tcp", "fromPort": 22, "toPort": 22, "cidrIpv6": "::/0"}),
     [("ingress-only-public-ports", "SSH is open to ::/0")]),
    ("open registration", "prod", "matrix-synapse-container",
     homeserver_edit(enable_registration=True, registration_requires_token=False), None,
     [("synapse-registration-gated", "without registration_requires_token")]),
    ("registration without verification", "dev", "matrix-synapse-container",
     homeserver_edit(enable_registration_without_verification=True), None,
     [("synapse-registration-gated", "enable_registration_without_verification")]),
    # -- container hardening
    ("no no-new-privileges", "prod", "matrix-synapse-container", set_props(securityOpts=[]), None,
     [("containers-hardened", "without no-new-privileges")]),
    ("capabilities kept", "prod", "matrix-proxy-container",
     set_props(capabilities={"drops": [], "adds": ["NET_BIND_SERVICE"]}), None,
     [("containers-hardened", "does not drop ALL")]),
    ("a dangerous capability", "dev", "matrix-turn-container",
     set_props(capabilities={"drops": ["ALL"], "adds": ["NET_ADMIN", "NET_BIND_SERVICE"]}), None,
     [("containers-hardened", "keeps capabilities NET_ADMIN")]),
    ("privileged", "dev", "matrix-element-container", set_props(privileged=True), None,
     [("containers-hardened", "is privileged")]),
    ("no memory limit", "prod", "matrix-postgres-container", set_props(memory=None, memorySwap=None), None,
     [("containers-hardened", "no memory limit")]),
    ("swap beyond the limit", "prod", "matrix-postgres-container", set_props(memorySwap=-1), None,
     [("containers-hardened", "may swap")]),
    ("unrotated logs", "prod", "matrix-wellknown-container", set_props(logOpts={}), None,
     [("containers-hardened", "rotated json-file log")]),
    ("writable root without uploads", "dev", "signal-local-redis-2", set_props(readOnly=False), None,
     [("containers-hardened", "writable root filesystem")]),
    ("service without a health check", "dev", "signal-local-dynamodb", set_props(healthcheck=None), None,
     [("containers-hardened", "without a health check")]),
    ("secret file readable by all", "prod", "matrix-synapse-container",
     lambda props: [u.update(permissions="0644") for u in props["uploads"] if u["file"] == "/data/signing.key"], None,
     [("containers-hardened", "/data/signing.key with mode '0644'")]),
    ("secret file without owner", "prod", "matrix-turn-container",
     lambda props: [u.update(owner=None) for u in props["uploads"] if u["file"].endswith("privkey.pem")], None,
     [("containers-hardened", "privkey.pem without an owner")]),
    # -- network segmentation
    ("database network with outside access", "prod", "matrix-network-database", set_props(internal=False), None,
     [("networks-segmented", "not internal and lets its containers reach each other"),
      ("networks-segmented", "holds the datastores postgres, postgres-init but is not internal")]),
    ("egress network lets containers talk", "prod", "matrix-network-egress", set_props(options={}), None,
     [("networks-segmented", "lets its containers reach each other")]),
    ("coturn on the database network", "prod", "matrix-turn-container",
     lambda props: props["networksAdvanced"].append({"name": "commstack-matrix-database", "aliases": ["turn"]}), None,
     [("networks-segmented", "coturn (turn) is on the internal network commstack-matrix-database"),
      ("networks-segmented", "turn shares commstack-matrix-database with Postgres")]),
    ("element beside the well-known nginx", "prod", "matrix-element-container",
     lambda props: props["networksAdvanced"].append({"name": "commstack-matrix-web-wellknown", "aliases": ["element"]}),
     None, [("networks-segmented", "Element shares commstack-matrix-web-wellknown with wellknown")]),
    ("dev Signal server on the Matrix database network", "dev", "signal-local-server",
     lambda props: props["networksAdvanced"].append({"name": "commstack-matrix-database", "aliases": ["x"]}), None,
     [("networks-segmented", "signal-local-server shares commstack-matrix-database with Postgres")]),
]


def weakened(evaluation: offline.Evaluation, name: str, edit_props: Optional[Callable[[dict], None]],
             edit_reg: Optional[Callable]) -> list[offline.Registration]:
    changed = []
    for reg in evaluation.registrations:
        if reg.name == name:
            if edit_props:
                props = copy.deepcopy(props_of(reg))
                edit_props(props)
                reg = dataclasses.replace(reg, inputs=props, outputs={})
            reg = edit_reg(reg) if edit_reg else reg
        changed.append(reg)
    return changed


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_weakened_default_is_exactly_one_expected_violation(stacks, case):
    _, stack, name, edit_props, edit_reg, expected = case
    evaluation = stacks[stack]
    assert evaluation.named(name)  # the case changes a resource the program really registers
    found = run_policies(weakened(evaluation, name, edit_props, edit_reg))
    assert [(policy, resource) for policy, resource, _ in found] == [(policy, name) for policy, _ in expected]
    for (_, _, message), (_, part) in zip(found, expected):
        assert part in message, message


def test_token_gated_registration_passes_and_only_an_open_one_fails():
    assert rules.registration_problems({"enable_registration": True, "registration_requires_token": True}) == []
    assert rules.registration_problems({"enable_registration": False}) == []
    assert len(rules.registration_problems({"enable_registration": True})) == 1


@pytest.mark.parametrize("reference, pinned", [
    ("postgres:15.14-bookworm", True), ("ghcr.io/element-hq/synapse:v1.163.2", True),
    ("localhost:5000/synapse", False), ("redis", False), ("redis:latest", False),
    ("redis@sha256:" + "0" * 64, True),
])
def test_image_references(reference, pinned):
    assert (rules.image_reference_problem(reference) is None) is pinned


def test_unknown_values_are_left_to_the_analyzer_not_misjudged():
    """During a first preview an IAM document built from new ARNs is unknown: the rule must raise the
    analyzer's UnknownValueError (reported as "can't run during preview"), not pass or fail it."""
    from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, UnknownValueError

    reg = offline.Registration(type="aws:iam/rolePolicy:RolePolicy", name="p", urn="urn:pulumi:prod::commstack::p",
                               parent="", custom=True, inputs={"policy": UNKNOWN_STRING_VALUE}, outputs={},
                               protect=None, retain_on_delete=None, ignore_changes=[], replace_on_changes=[],
                               dependencies=[], aliases=[], provider="")
    with pytest.raises(UnknownValueError):
        rules.iam_problems(validation_args(reg))


# -- the pack -------------------------------------------------------------------------


def test_the_pack_is_mandatory_and_holds_every_rule(monkeypatch):
    built = []
    monkeypatch.setattr(pulumi_policy, "PolicyPack", lambda **kwargs: built.append(kwargs))
    try:
        runpy.run_path(str(ROOT / "policy"), run_name="__main__")  # as the analyzer runs the pack directory
    finally:
        sys.modules.pop("rules", None)
    pack, = built
    assert pack["enforcement_level"] is EnforcementLevel.MANDATORY
    names = [p.name for p in pack["policies"]]
    assert names == [p.name for p in rules.POLICIES] and len(set(names)) == len(names) == 11


def test_pack_files_pin_the_project_versions():
    assert yaml.safe_load((ROOT / "policy/PulumiPolicy.yaml").read_text())["runtime"]["name"] == "python"

    def pins(path):
        """name -> version of a hashed lock (scripts/lock)."""
        return {name.lower(): version for name, version in
                re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", path.read_text(), re.MULTILINE)}

    pack, project = pins(ROOT / "policy/requirements.txt"), pins(ROOT / "requirements-test.txt")
    assert pack["pulumi-policy"] == "1.21.0" and pack["pulumi"] == "3.272.0"
    assert {k: project[k] for k in pack} == pack
