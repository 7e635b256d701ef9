"""What a component asks of DNS; the edge Dns component turns these into records."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi


@dataclass(frozen=True)
class DnsRecordSpec:
    """One record. `http` marks names that may sit behind the Cloudflare proxy;
    everything else (TURN, gRPC, SSH) must stay DNS-only."""

    fqdn: str
    type: str  # "A" or "CNAME"
    content: pulumi.Input[str]
    http: bool
    purpose: str
