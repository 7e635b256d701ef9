"""commstack's secure defaults as CrossGuard policies.

Each rule is a pure function from what the engine shows a policy (type, URN,
camelCase properties, options) to a list of violation messages; `POLICIES`
wraps them for the pack (`policy/__main__.py`). They encode what the program
already does, so a change that weakens a default fails `pulumi preview
--policy-pack policy` instead of reaching a deployment.

Property names are those the providers register (pulumi-docker 5.2,
pulumi-aws 7.51, pulumi-tls 5.6), checked against the program's own
registrations in tests/policy/test_policies.py.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import yaml
from pulumi_policy import (
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

# The public port list is the project's own data (configs/ports.yaml); read it
# with the project's parser rather than a copy of it.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from components.edge.ports import FEDERATION_PORT, firewall_ranges, public_ports  # noqa: E402

CONTAINER = "docker:index/container:Container"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"
BUILT_IMAGE = "docker:index/image:Image"
DYNAMODB_TABLE = "aws:dynamodb/table:Table"
PUBLIC_ACCESS_BLOCK = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
SECURITY_GROUP_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
SIGNING_KEY_TYPE = "tls:index/privateKey:PrivateKey"
SYNAPSE_COMPONENT = "commstack:matrix:Synapse"

# Whose loss loses data (the program gives them STATEFUL in components/common.py).
STATEFUL_TYPES = frozenset({
    "docker:index/volume:Volume",
    DYNAMODB_TABLE,
    "aws:s3/bucket:Bucket",
    "aws:s3/bucketV2:BucketV2",
    "aws:ssm/parameter:Parameter",
    "aws:ebs/volume:Volume",
})
# The last path segment of a datastore image's repository (library/postgres, bitnami/redis,
# amazon/dynamodb-local, motoserver/moto): these serve the private network only.
DATASTORE_IMAGES = frozenset({"postgres", "redis", "dynamodb-local", "moto"})
# IAM documents: property holding a JSON policy, per type.
IAM_DOCUMENTS = {
    "aws:iam/rolePolicy:RolePolicy": "policy",
    "aws:iam/policy:Policy": "policy",
    "aws:iam/userPolicy:UserPolicy": "policy",
    "aws:iam/groupPolicy:GroupPolicy": "policy",
    "aws:iam/role:Role": "assumeRolePolicy",
}
PUBLIC_ACCESS_FLAGS = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
SSH_PORT = 22
PROTOCOL_NAMES = {"6": "tcp", "17": "udp", "-1": "all", "all": "all"}


# -- images ---------------------------------------------------------------------------


def image_reference_problem(reference: str) -> Optional[str]:
    """Why an image reference is not pinned, or None (a tag other than latest, or a digest)."""
    if "@sha256:" in reference:
        return None
    last = reference.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"image {reference!r} has no tag; pin it in configs/images.yaml"
    if last.rsplit(":", 1)[1] == "latest":
        return f"image {reference!r} uses the moving tag 'latest'; pin a release tag in configs/images.yaml"
    return None


def _container_reference(props: Mapping[str, Any]) -> Optional[str]:
    """The container's image when given as a reference (a RemoteImage's id is `sha256:…`)."""
    image = props.get("image")
    return image if isinstance(image, str) and not image.startswith("sha256:") else None


def unpinned_image(args: ResourceValidationArgs) -> list[str]:
    reference = {
        REMOTE_IMAGE: lambda p: p.get("name"),
        BUILT_IMAGE: lambda p: p.get("imageName"),
        CONTAINER: _container_reference,
    }.get(args.resource_type, lambda p: None)(args.props)
    problem = image_reference_problem(reference) if reference else None
    return [problem] if problem else []


def is_datastore_image(reference: str) -> bool:
    repository = reference.split("@", 1)[0]
    last = repository.rsplit("/", 1)[-1]
    return last.split(":", 1)[0] in DATASTORE_IMAGES


def datastore_publishes_ports(reference: str, ports: Optional[Iterable[Mapping[str, Any]]]) -> list[str]:
    if not is_datastore_image(reference) or not ports:
        return []
    published = sorted({f"{int(p.get('external') or p['internal'])}/{p.get('protocol') or 'tcp'}" for p in ports})
    return [f"datastore container ({reference}) publishes host ports {', '.join(published)}; "
            "databases and Redis serve the private network only"]


# -- state ----------------------------------------------------------------------------


def is_synapse_signing_key(resource_type: str, urn: str) -> bool:
    """The tls PrivateKey under the Synapse component (URN type chain `…$commstack:matrix:Synapse$tls:…`)."""
    type_chain = urn.split("::")[2] if urn.count("::") >= 3 else ""
    return resource_type == SIGNING_KEY_TYPE and f"{SYNAPSE_COMPONENT}$" in type_chain


def unprotected_state(args: ResourceValidationArgs) -> list[str]:
    stateful = args.resource_type in STATEFUL_TYPES or is_synapse_signing_key(args.resource_type, args.urn)
    if stateful and not args.opts.protect:
        return [f"{args.resource_type} {args.name} holds data that cannot be recreated; give it protect=True "
                "(components.common.stateful_child)"]
    return []


def dynamodb_table_problems(props: Mapping[str, Any]) -> list[str]:
    problems = []
    if not (props.get("pointInTimeRecovery") or {}).get("enabled"):
        problems.append("point-in-time recovery is off")
    if not props.get("deletionProtectionEnabled"):
        problems.append("deletion protection is off")
    if not (props.get("serverSideEncryption") or {}).get("enabled"):
        problems.append("server-side encryption (KMS) is off")
    if props.get("billingMode") != "PAY_PER_REQUEST":
        problems.append(f"billing mode is {props.get('billingMode')!r}, not PAY_PER_REQUEST")
    return [f"DynamoDB table {props.get('name')}: {p}" for p in problems]


def public_access_block_problems(props: Mapping[str, Any]) -> list[str]:
    off = [flag for flag in PUBLIC_ACCESS_FLAGS if props.get(flag) is not True]
    return [f"S3 public access block for {props.get('bucket')} leaves {', '.join(off)} off"] if off else []


# -- IAM ------------------------------------------------------------------------------


def _as_list(value: Any) -> list:
    """IAM and AWS fields take a value or a list; the analyzer hands lists as read-only Sequences."""
    if value is None:
        return []
    return [value] if isinstance(value, (str, Mapping)) else list(value)


def iam_document_problems(document: Any) -> list[str]:
    """Allow statements with a `*` action (or a whole service's `svc:*`), a whole-`*` resource, or Not* inversions."""
    policy = json.loads(document) if isinstance(document, str) else document
    problems = []
    for index, statement in enumerate(_as_list((policy or {}).get("Statement"))):
        if statement.get("Effect") != "Allow":
            continue
        where = f"statement {statement.get('Sid') or index}"
        for action in _as_list(statement.get("Action")):
            if action == "*" or action.endswith(":*"):
                problems.append(f"{where} allows the wildcard action {action!r}; list the actions the service uses")
        if _as_list(statement.get("Resource")).count("*"):
            problems.append(f"{where} applies to every resource ('*'); list the stack's own ARNs")
        for inverted in ("NotAction", "NotResource"):
            if inverted in statement:
                problems.append(f"{where} allows with {inverted}, which grants everything not listed")
    return problems


def iam_problems(args: ResourceValidationArgs) -> list[str]:
    documents = [args.props.get(IAM_DOCUMENTS[args.resource_type])] if args.resource_type in IAM_DOCUMENTS else []
    if args.resource_type == "aws:iam/role:Role":
        documents += [inline.get("policy") for inline in args.props.get("inlinePolicies") or []]
    return [problem for document in documents if document for problem in iam_document_problems(document)]


# -- network --------------------------------------------------------------------------


def _allowed_ranges() -> list[tuple[str, int, int]]:
    # Merged as the firewall opens them: 49160-49200 is one rule though coturn and LiveKit split it.
    return [(span.protocol, span.from_port, span.to_port) for span in firewall_ranges()]


def _is_world(cidr: str) -> bool:
    return ipaddress.ip_network(cidr, strict=False).prefixlen == 0


def ingress_problem(protocol: str, from_port: int, to_port: int, cidrs: Iterable[str]) -> Optional[str]:
    """Why one ingress rule is not allowed: only configs/ports.yaml's list, plus SSH from non-world CIDRs."""
    protocol = PROTOCOL_NAMES.get(str(protocol).lower(), str(protocol).lower())
    cidrs = list(cidrs)
    if (protocol, from_port, to_port) == ("tcp", SSH_PORT, SSH_PORT):
        world = [c for c in cidrs if _is_world(c)]
        return f"SSH is open to {', '.join(world)}; allow only admin CIDRs (commstack:adminCidrs)" if world else None
    if any(protocol == p and low <= from_port and to_port <= high for p, low, high in _allowed_ranges()):
        return None
    return f"ingress {protocol} {from_port}-{to_port} is not in configs/ports.yaml"


def security_group_problems(args: ResourceValidationArgs) -> list[str]:
    props = args.props
    if args.resource_type == SECURITY_GROUP:
        rules = [(r.get("protocol"), r.get("fromPort"), r.get("toPort"),
                  _as_list(r.get("cidrBlocks")) + _as_list(r.get("ipv6CidrBlocks"))) for r in props.get("ingress") or []]
    elif args.resource_type == SECURITY_GROUP_RULE and props.get("type") == "ingress":
        rules = [(props.get("protocol"), props.get("fromPort"), props.get("toPort"),
                  _as_list(props.get("cidrBlocks")) + _as_list(props.get("ipv6CidrBlocks")))]
    elif args.resource_type == INGRESS_RULE:
        rules = [(props.get("ipProtocol"), props.get("fromPort", 0), props.get("toPort", 65535),
                  _as_list(props.get("cidrIpv4")) + _as_list(props.get("cidrIpv6")))]
    else:
        return []
    problems = (ingress_problem(protocol, int(low or 0), int(high or 0), cidrs) for protocol, low, high, cidrs in rules)
    return [p for p in problems if p]


def published_port_problems(args: ResourceValidationArgs) -> list[str]:
    if args.resource_type != CONTAINER:
        return []
    allowed = {(n, protocol) for port in public_ports() for n in port.numbers() for protocol in port.protocols}
    allowed.add((FEDERATION_PORT, "tcp"))  # served directly when commstack:federationPort is 8448
    problems = []
    for port in args.props.get("ports") or []:
        published = (int(port.get("external") or port["internal"]), port.get("protocol") or "tcp")
        if published not in allowed:
            problems.append(f"container {args.name} publishes {published[0]}/{published[1]}, "
                            "which is not in configs/ports.yaml (or 8448/tcp for direct federation)")
    return problems


# -- Synapse --------------------------------------------------------------------------


def registration_problems(homeserver: Mapping[str, Any]) -> list[str]:
    """Registration must be closed or token-gated (Synapse's `enable_registration`,
    `registration_requires_token`, `enable_registration_without_verification`; docs/usage/configuration/config_documentation.md)."""
    problems = []
    if homeserver.get("enable_registration_without_verification"):
        problems.append("homeserver.yaml sets enable_registration_without_verification: anyone can register unverified")
    if homeserver.get("enable_registration") and not homeserver.get("registration_requires_token"):
        problems.append("homeserver.yaml opens registration without registration_requires_token; "
                        "use commstack:registration closed or token")
    return problems


def homeserver_registration(args: ResourceValidationArgs) -> list[str]:
    if args.resource_type != CONTAINER:
        return []
    problems = []
    for upload in args.props.get("uploads") or []:
        if str(upload.get("file", "")).endswith("/homeserver.yaml"):
            content = upload.get("content")
            if content is None and upload.get("contentBase64") is not None:
                content = base64.b64decode(upload["contentBase64"]).decode()
            problems += registration_problems(yaml.safe_load(content or "") or {})
    return problems


# -- the stack: containers and their images -------------------------------------------


def container_image_references(container: Any) -> list[str]:
    """A container's image reference(s): its own, or those of the image resources its `image` depends on."""
    own = _container_reference(container.props)
    if own:
        return [own]
    images = container.property_dependencies.get("image") or container.dependencies
    return [image.props.get("name") or image.props.get("imageName") for image in images
            if image.resource_type in (REMOTE_IMAGE, BUILT_IMAGE)]


def datastore_ports(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    for resource in args.resources:
        if resource.resource_type == CONTAINER:
            for reference in container_image_references(resource):
                for problem in datastore_publishes_ports(reference or "", resource.props.get("ports")):
                    report_violation(problem, resource.urn)


# -- container hardening (components.common.Hardening) --------------------------------

NETWORK = "docker:index/network:Network"
NO_NEW_PRIVILEGES = "no-new-privileges:true"
# The only capabilities an image may keep, each for a documented reason in its component
# (entrypoints that fix ownership then drop to a service user; binding ports below 1024).
ALLOWED_CAPABILITIES = frozenset({"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID", "NET_BIND_SERVICE"})
SECRET_MODES = frozenset({"0400", "0600", "400", "600"})
# Uploaded files that hold secrets, by where they land (keys, configs with tokens or passwords).
SECRET_FILE_SUFFIXES = ("/homeserver.yaml", "/signing.key", ".pem", "/.pgpass", "/init.sql", "/config.yaml",
                        "/registration.yaml", "/turnserver.conf", "program-values.json", "-token", "password")
SECRET_FILE_EXCEPTIONS = ("cert.pem", "fullchain.pem", "ca.pem")
SECRET_PREFIXES = ("/data/appservices/",)


def is_secret_file(path: str) -> bool:
    if path.endswith(SECRET_FILE_EXCEPTIONS):
        return False
    return path.endswith(SECRET_FILE_SUFFIXES) or path.startswith(SECRET_PREFIXES)


def container_hardening_problems(props: Mapping[str, Any]) -> list[str]:
    problems = []
    if NO_NEW_PRIVILEGES not in list(props.get("securityOpts") or []):
        problems.append("runs without no-new-privileges (security_opts)")
    if props.get("privileged"):
        problems.append("is privileged")
    capabilities = props.get("capabilities") or {}
    if "ALL" not in list(capabilities.get("drops") or []):
        problems.append("does not drop ALL capabilities")
    extra = sorted(set(capabilities.get("adds") or []) - ALLOWED_CAPABILITIES)
    if extra:
        problems.append(f"keeps capabilities {', '.join(extra)} (allowed: {', '.join(sorted(ALLOWED_CAPABILITIES))})")
    memory = props.get("memory")
    if not memory:
        problems.append("has no memory limit")
    elif props.get("memorySwap") not in (None, memory):
        problems.append(f"may swap beyond its memory limit (memory_swap {props.get('memorySwap')} != {memory})")
    log_opts = props.get("logOpts") or {}
    if props.get("logDriver") != "json-file" or not log_opts.get("max-size") or not log_opts.get("max-file"):
        problems.append("has no rotated json-file log (log_opts max-size and max-file)")
    uploads = list(props.get("uploads") or [])
    volume_paths = [str(v.get("containerPath", "")).rstrip("/") + "/" for v in props.get("volumes") or []]
    outside_volumes = [u for u in uploads if not any(str(u.get("file", "")).startswith(p) for p in volume_paths)]
    if not outside_volumes and not props.get("readOnly"):
        problems.append("has a writable root filesystem although every upload goes into a volume (read_only)")
    if props.get("restart") != "no" and not (props.get("healthcheck") or {}).get("tests"):
        problems.append("is a long-running service without a health check")
    for upload in uploads:
        path = str(upload.get("file", ""))
        if is_secret_file(path):
            if str(upload.get("permissions") or "") not in SECRET_MODES:
                problems.append(f"uploads the secret file {path} with mode {upload.get('permissions')!r}, not 0400 or 0600")
            if upload.get("owner") in (None, ""):
                problems.append(f"uploads the secret file {path} without an owner (the image's user)")
    return problems


def container_hardening(args: ResourceValidationArgs) -> list[str]:
    name = args.props.get("name") or args.name
    return [f"container {name} {problem}" for problem in container_hardening_problems(args.props)]


# -- network segmentation (components/matrix/network.py) -------------------------------

ICC_OPTION = "com.docker.network.bridge.enable_icc"
# Images allowed on a network with Postgres: Postgres itself (server and init job), Synapse, the
# mautrix bridges and the backup job.
POSTGRES_CLIENT_IMAGES = ("postgres", "synapse", "mautrix/", "restic", "backup")


def _repository(reference: str) -> str:
    """`dock.mau.dev/mautrix/whatsapp:v1@sha256:…` -> `dock.mau.dev/mautrix/whatsapp`."""
    head, _, last = reference.split("@", 1)[0].rpartition("/")
    last = last.split(":", 1)[0]
    return f"{head}/{last}" if head else last


def _is_image(reference: str, name: str) -> bool:
    return _repository(reference).rsplit("/", 1)[-1] == name


def segmentation_problems(networks: Mapping[str, Mapping[str, Any]],
                          containers: Mapping[str, tuple[list[str], list[str]]]) -> list[tuple[str, str]]:
    """(container or network, problem) for: datastores on a non-internal network, a non-internal
    network that lets its containers talk, Postgres sharing a network with a non-client, coturn on an
    internal network (other than its metrics network, shared with Prometheus alone), Element sharing a
    network with anything but the proxy.
    `networks`: docker name -> props; `containers`: name -> (image references, network names)."""
    members: dict[str, list[str]] = {}
    for container, (_, joined) in containers.items():
        for network in joined:
            members.setdefault(network, []).append(container)
    problems = []
    for network, props in networks.items():
        if not props.get("internal") and str((props.get("options") or {}).get(ICC_OPTION)).lower() != "false":
            problems.append((network, f"network {network} is not internal and lets its containers reach each other "
                                      f"(set options {ICC_OPTION}=false, or make it internal)"))
        datastores = sorted(c for c in members.get(network, []) if any(is_datastore_image(r) for r in containers[c][0]))
        if datastores and not props.get("internal"):
            problems.append((network, f"network {network} holds the datastores {', '.join(datastores)} but is not internal"))
    strangers = set()
    for container, (images, joined) in containers.items():
        if any(_is_image(ref, "postgres") for ref in images):
            for network in joined:
                for peer in members.get(network, []):
                    if not any(client in _repository(ref) for ref in containers[peer][0] for client in POSTGRES_CLIENT_IMAGES):
                        strangers.add((peer, network))
        if any(_is_image(ref, "coturn") for ref in images):
            for network in joined:
                # Its metrics network is the exception: Prometheus alone shares it (monitoring on).
                others = [peer for peer in members.get(network, []) if peer != container]
                scraper_only = bool(others) and all(any(_is_image(ref, "prometheus") for ref in containers[peer][0])
                                                    for peer in others)
                if networks.get(network, {}).get("internal") and not scraper_only:
                    problems.append((container, f"coturn ({container}) is on the internal network {network}"))
        if any(_is_image(ref, "element-web") for ref in images):
            for network in joined:
                others = [peer for peer in members.get(network, []) if peer != container
                          and not any(_is_image(ref, "traefik") for ref in containers[peer][0])]
                if others:
                    problems.append((container, f"Element shares {network} with {', '.join(sorted(others))}; "
                                                "only the proxy may reach it"))
    problems += [(peer, f"{peer} shares {network} with Postgres but is not a database client")
                 for peer, network in sorted(strangers)]
    return problems


def networks_segmented(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    networks = {resource.props.get("name"): resource.props for resource in args.resources
                if resource.resource_type == NETWORK}
    containers, urns = {}, {}
    for resource in args.resources:
        if resource.resource_type == CONTAINER:
            name = resource.props.get("name") or resource.name
            joined = [n.get("name") for n in resource.props.get("networksAdvanced") or []]
            containers[name] = ([r or "" for r in container_image_references(resource)], joined)
            urns[name] = resource.urn
    for network, props in networks.items():
        urns.setdefault(network, next(r.urn for r in args.resources
                                      if r.resource_type == NETWORK and r.props.get("name") == network))
    for subject, problem in segmentation_problems(networks, containers):
        report_violation(problem, urns.get(subject))


# -- the pack -------------------------------------------------------------------------


def _resource_policy(name: str, description: str, rule, types: Optional[Iterable[str]] = None) -> ResourceValidationPolicy:
    only = frozenset(types) if types else None

    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        if only is None or args.resource_type in only:
            for message in rule(args):
                report_violation(message, None)

    return ResourceValidationPolicy(name=name, description=description, validate=validate)


POLICIES = [
    _resource_policy("images-pinned", "Container images are pinned by tag (never latest) or digest.", unpinned_image),
    StackValidationPolicy(name="datastores-not-published",
                          description="Postgres, Redis, DynamoDB Local and moto containers publish no host ports.",
                          validate=datastore_ports),
    _resource_policy("stateful-resources-protected",
                     "Volumes, tables, buckets, SSM parameters and the Synapse signing key have protect.",
                     unprotected_state),
    _resource_policy("dynamodb-tables-durable",
                     "DynamoDB tables have PITR, deletion protection, SSE and on-demand billing.",
                     lambda args: dynamodb_table_problems(args.props), [DYNAMODB_TABLE]),
    _resource_policy("s3-public-access-blocked", "S3 public access blocks turn on all four settings.",
                     lambda args: public_access_block_problems(args.props), [PUBLIC_ACCESS_BLOCK]),
    _resource_policy("iam-least-privilege", "IAM policy documents allow no `*` action and no whole-`*` resource.",
                     iam_problems),
    _resource_policy("ingress-only-public-ports",
                     "Security groups open only configs/ports.yaml's ports, and SSH only from non-world CIDRs.",
                     security_group_problems),
    _resource_policy("published-ports-listed",
                     "Containers publish only configs/ports.yaml's ports (and 8448/tcp for direct federation).",
                     published_port_problems),
    _resource_policy("synapse-registration-gated", "Synapse registration is closed or token-gated.",
                     homeserver_registration),
    _resource_policy("containers-hardened",
                     "Containers run with no-new-privileges, ALL capabilities dropped but a documented few, a memory "
                     "limit without swap, rotated logs, a read-only root where nothing is uploaded, a health check, "
                     "and secret files 0400/0600 with an owner.",
                     container_hardening, [CONTAINER]),
    StackValidationPolicy(name="networks-segmented",
                          description="Datastores only on internal networks, Postgres only with its clients, coturn on "
                                      "no internal network, Element only with the proxy, and no non-internal network "
                                      "on which containers can reach each other.",
                          validate=networks_segmented),
]
