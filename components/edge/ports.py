"""The public port list (configs/ports.yaml), shared by Docker publishing and
the AWS security group so the two can never disagree."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import yaml

from components.settings import CONFIGS_DIR

# Served only when commstack:federationPort is 8448.
FEDERATION_PORT = 8448


@dataclass(frozen=True)
class PublicPort:
    name: str
    from_port: int
    to_port: int
    protocols: tuple[str, ...]
    service: str
    why: str

    def numbers(self) -> range:
        return range(self.from_port, self.to_port + 1)


@lru_cache(maxsize=1)
def public_ports() -> tuple[PublicPort, ...]:
    entries = yaml.safe_load((CONFIGS_DIR / "ports.yaml").read_text())
    ports = []
    for e in entries:
        low, _, high = str(e["ports"]).partition("-")
        ports.append(PublicPort(e["name"], int(low), int(high or low), tuple(e["protocols"]), e["service"], e["why"]))
    return tuple(ports)


def ports_for(service: str) -> tuple[PublicPort, ...]:
    return tuple(p for p in public_ports() if p.service == service)


@dataclass(frozen=True)
class PortRange:
    protocol: str
    from_port: int
    to_port: int


def firewall_ranges(ports: tuple[PublicPort, ...] | None = None) -> tuple[PortRange, ...]:
    """The public list as a firewall sees it: one range per protocol and run of adjacent ports,
    so entries that split a range between programs (coturn's relays and LiveKit's media) open
    as the one range the user asked for."""
    ports = public_ports() if ports is None else ports
    merged: list[PortRange] = []
    for protocol in dict.fromkeys(proto for p in ports for proto in p.protocols):
        spans = sorted((p.from_port, p.to_port) for p in ports if protocol in p.protocols)
        for low, high in spans:
            last = merged[-1] if merged and merged[-1].protocol == protocol else None
            if last is not None and low <= last.to_port + 1:
                merged[-1] = PortRange(protocol, last.from_port, max(last.to_port, high))
            else:
                merged.append(PortRange(protocol, low, high))
    return tuple(merged)
