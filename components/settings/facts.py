"""Facts the settings are checked against: reserved names, address ranges, AWS's regions and
instance types (data files under configs/aws/, with their sources), and the containers the
program can create. Pure functions, no Pulumi."""

from __future__ import annotations

import ipaddress
import json
import re
from functools import lru_cache
from typing import Any, NamedTuple, Optional

from components.paths import CONFIGS_DIR

PROJECT = "commstack"

KNOWN_BRIDGES = ("whatsapp", "telegram")
# Hostnames Signal clients call (Signal-Android app/build.gradle.kts); the
# Matrix subdomains must stay clear of them when the Signal half is on.
SIGNAL_SUBDOMAINS = ("chat", "storage", "cdn", "cdn2")
BACKUP_TARGETS = ("local", "aws", "s3", "rest")
SMTP_TLS_MODES = ("starttls", "tls")

# MTProto's initConnection takes api_id as a 32-bit `int` (core.telegram.org/method/initConnection).
TELEGRAM_API_ID_MAX = 2**31 - 1
# The longest common name a certificate may carry (RFC 5280 ub-common-name); the
# generated certificates use the domain and the TURN host as theirs.
MAX_HOSTNAME_LENGTH = 64
# Suffixes no public CA issues for and no public DNS zone holds: RFC 6761 (localhost,
# test, invalid, example), RFC 6762 (local), RFC 8375 (home.arpa), ICANN's `internal`,
# and common private ones.
NON_PUBLIC_SUFFIXES = ("localhost", "local", "test", "invalid", "example", "internal", "home.arpa",
                       "lan", "localdomain")
# Addresses the internet cannot reach, so never DNS answers for it: "this network",
# RFC 1918, shared CGNAT space, loopback, link-local, multicast and reserved.
# (The documentation ranges stay allowed: the committed prod example uses 203.0.113.10.)
NON_ROUTABLE_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4"))
# Cloudflare proxies HTTPS only on 443, 2053, 2083, 2087, 2096 and 8443
# (developers.cloudflare.com/fundamentals/reference/network-ports/), never on 8448.
CLOUDFLARE_HTTPS_PORTS = (443, 2053, 2083, 2087, 2096, 8443)
# commstack:volumeNames: the unscoped names of stacks made before the setting existed stay their default.
VOLUME_NAMINGS = ("legacy", "stack")
# The Postgres major of every stack made before commstack:postgresMajor existed (its default forever).
LEGACY_POSTGRES_MAJOR = 15

# The smallest EC2 instance Signal-Server's host runs on: Signal-Server's JVM alone has a 2 GiB heap
# (-Xmx2g, configs/signal/signal-server.service.tmpl) plus its off-heap memory, next to
# registration-service's own JVM, six Redis cluster nodes and nginx, and the first boot builds the jar
# with Maven. The docker target's limits for the same programs add up to about 7.5 GiB
# (components/signal/local.py), so 8 GiB and 2 vCPUs: t3.large, the default.
SIGNAL_MIN_MEMORY_MIB = 8192
SIGNAL_MIN_VCPUS = 2

# Graviton (arm64) families: a generation digit then `g` (t4g, m7g, c7gn, r6gd, im4gn, ...), and a1.
_ARM_INSTANCE_RE = re.compile(r"^(?:a1|[a-z]+\d+g[a-z]*)\.", re.ASCII)


def non_public_domain(domain: str) -> bool:
    return any(domain == suffix or domain.endswith(f".{suffix}") for suffix in NON_PUBLIC_SUFFIXES)


def valid_ipv4(value: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(value), ipaddress.IPv4Address)
    except ValueError:
        return False


def valid_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value.strip("[]"))
        return True
    except ValueError:
        return False


def non_routable_ipv4(value: str) -> bool:
    return valid_ipv4(value) and any(ipaddress.ip_address(value) in net for net in NON_ROUTABLE_NETWORKS)


def non_routable_host(host: str) -> bool:
    """A host name or address the internet cannot reach (a non-public name, a loopback or private address)."""
    bare = host.strip("[]").lower()
    if valid_ip(bare):
        address = ipaddress.ip_address(bare)
        return not address.is_global or any(address in net for net in NON_ROUTABLE_NETWORKS
                                             if net.version == address.version)
    return non_public_domain(bare)


def cidr_problem(value: str) -> Optional[str]:
    """Why `value` is not a network in CIDR notation (None when it is one)."""
    if "/" not in value:
        return "it is a bare address, not a network; write the prefix length (/32 for one IPv4 address, /128 for IPv6)"
    try:
        ipaddress.ip_network(value, strict=True)
        return None
    except ValueError as exc:
        try:
            network = ipaddress.ip_network(value, strict=False)
        except ValueError:
            return str(exc)
        address = value.split("/", 1)[0]
        return (f"it has host bits set: the network is {network}, "
                f"the single address {address}/{network.max_prefixlen}")


def valid_git_ref(ref: str) -> bool:
    """The rules of `git check-ref-format` that matter for a tag or branch name."""
    if not ref or ref.startswith(("-", "/")) or ref.endswith((".", "/", ".lock")):
        return False
    if ".." in ref or "@{" in ref or "//" in ref:
        return False
    return not any(c in ref for c in " ~^:?*[\\\t\n") and ref.isprintable()


@lru_cache(maxsize=1)
def _signal_refs() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in (CONFIGS_DIR / "signal").glob("v*.yaml")))


def supported_signal_refs() -> list[str]:
    return list(_signal_refs())


def arm_instance_type(instance_type: str) -> bool:
    return bool(_ARM_INSTANCE_RE.match(instance_type))


# -- AWS facts (configs/aws/*.json, written by scripts/update-aws-facts) -------------------------


class InstanceType(NamedTuple):
    vcpus: int
    memory_mib: int
    architectures: tuple[str, ...]


@lru_cache(maxsize=1)
def aws_regions() -> tuple[str, ...]:
    """The commercial partition's regions (botocore's endpoints.json; see configs/aws/regions.json's source)."""
    return tuple(json.loads((CONFIGS_DIR / "aws" / "regions.json").read_text())["regions"])


@lru_cache(maxsize=1)
def ec2_instance_types() -> dict[str, InstanceType]:
    """Every EC2 instance type with its vCPUs, memory and architectures (configs/aws/instance-types.json)."""
    data = json.loads((CONFIGS_DIR / "aws" / "instance-types.json").read_text())["types"]
    return {name: InstanceType(vcpus, memory, tuple(archs)) for name, (vcpus, memory, archs) in data.items()}


# -- containers ------------------------------------------------------------------------------------

# Every container the program can create (docker names); commstack:containerMemory may name these.
# A new container adds its name here (tests/test_program.py checks the list against the program).
SIGNAL_LOCAL_CONTAINERS = tuple(f"signal-local-{part}" for part in (
    "dynamodb", "tables", "aws-local", *(f"redis-{i}" for i in range(6)), "redis-cluster-create", "registration",
    "server"))


def known_containers() -> tuple[str, ...]:
    return ("postgres", "postgres-init", "postgres-upgrade", "synapse", "backup", "wellknown", "proxy", "turn", "element",
            "livekit", "lk-jwt-service", "prometheus", "alertmanager", "alert-relay", "node-exporter",
            "postgres-exporter", "blackbox-exporter", "redis-exporter", "grafana", "grafana-dashboards",
            *(f"bridge-{kind}" for kind in KNOWN_BRIDGES), *SIGNAL_LOCAL_CONTAINERS)


_MEMORY_RE = re.compile(r"(\d{1,6})([mg])", re.ASCII)
MIN_CONTAINER_MEMORY_MB = 32


def memory_mb(value: Any) -> Optional[int]:
    """`512m` / `4g` (or a number of MB) -> MB; None for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    matched = _MEMORY_RE.fullmatch(str(value).strip().lower())
    if not matched:
        return None
    return int(matched.group(1)) * (1024 if matched.group(2) == "g" else 1)
