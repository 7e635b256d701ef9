"""Cloudflare DNS for both halves: one record per DnsRecordSpec, in a zone
looked up by name (`Dns`), and an API token that can only edit DNS in that
zone, for Traefik's DNS-01 challenge (`DnsApiToken`, standalone so Traefik
can get it before the records exist).

pulumi_cloudflare is imported inside the components: importing it costs
seconds and a stack without Cloudflare must not pay for it.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence

import pulumi
import yaml

from components.common import child
from components.edge.records import DnsRecordSpec
from components.settings import CONFIGS_DIR

# TTL 1 is Cloudflare's "automatic"; it is also the only TTL proxied records accept.
AUTOMATIC_TTL = 1
RECORD_TYPES = ("A", "AAAA", "CNAME")

# What DNS-01 needs: read the zone, write its TXT records. Names as the
# permission-groups API lists them (developers.cloudflare.com/fundamentals/api/reference/permissions/).
DNS01_PERMISSION_GROUPS = ("DNS Write", "Zone Read")
ZONE_SCOPE = "com.cloudflare.api.account.zone"


@dataclass
class DnsApiTokenArgs:
    zone_name: str
    api_token: pulumi.Output[str]


@dataclass
class DnsArgs:
    zone_name: str
    api_token: pulumi.Output[str]
    records: Sequence[DnsRecordSpec]
    proxy_http: bool = False


def record_label(fqdn: str, zone_name: str) -> str:
    """The part of `fqdn` left of the zone (`apex` for the zone itself), for child names."""
    if fqdn == zone_name:
        return "apex"
    suffix = f".{zone_name}"
    if not fqdn.endswith(suffix):
        raise ValueError(f"DNS record {fqdn!r} is not inside the zone {zone_name!r}")
    return fqdn[: -len(suffix)].replace(".", "-")


def proxied(spec: DnsRecordSpec, proxy_http: bool) -> bool:
    """Only HTTP names may sit behind Cloudflare's proxy, which passes nothing but HTTP(S)."""
    return spec.http and proxy_http


@lru_cache(maxsize=1)
def cloudflare_proxy_ranges() -> tuple[str, ...]:
    """Cloudflare's published proxy ranges (configs/cloudflare-ips.yaml), IPv4 then IPv6:
    where proxied requests come from, so the only X-Forwarded-For senders to believe."""
    data = yaml.safe_load((CONFIGS_DIR / "cloudflare-ips.yaml").read_text())
    ranges = []
    for family, version in (("ipv4", 4), ("ipv6", 6)):
        for cidr in data[family]:
            if ipaddress.ip_network(cidr).version != version:
                raise ValueError(f"configs/cloudflare-ips.yaml: {cidr} is listed under {family}")
            ranges.append(cidr)
    return tuple(ranges)


def zone_token_resources(zone_id: str) -> str:
    """The token policy's `resources`: exactly one zone (a JSON object in the v5 API)."""
    return json.dumps({f"{ZONE_SCOPE}.{zone_id}": "*"})


def permission_group_ids(groups: Sequence[dict], wanted: Sequence[str] = DNS01_PERMISSION_GROUPS) -> list[str]:
    """The ids of the zone-scoped permission groups named in `wanted`, in that order."""
    by_name = {g["name"]: g["id"] for g in groups if ZONE_SCOPE in (g.get("scopes") or [])}
    missing = [name for name in wanted if name not in by_name]
    if missing:
        raise ValueError(f"Cloudflare lists no zone permission group named {', '.join(missing)}")
    return [by_name[name] for name in wanted]


def _cloudflare_zone(name: str, api_token: pulumi.Input[str], zone_name: str,
                     parent: pulumi.Resource) -> tuple[pulumi.ProviderResource, pulumi.Output[str]]:
    """An explicit provider from the stack's secret token (no ambient credentials) and the zone's id."""
    import pulumi_cloudflare as cloudflare

    provider = cloudflare.Provider(f"{name}-provider", api_token=pulumi.Output.secret(api_token), opts=child(parent))
    zone = cloudflare.get_zone_output(filter=cloudflare.GetZoneFilterArgs(name=zone_name, match="all"),
                                      opts=pulumi.InvokeOutputOptions(parent=parent, provider=provider))
    return provider, zone.id


class DnsApiToken(pulumi.ComponentResource):
    """A Cloudflare API token with DNS Write and Zone Read on exactly one zone.

    Creating it needs a stack token that may create tokens ("API Tokens Write").
    """

    zone_id: pulumi.Output[str]
    value: pulumi.Output[str]

    def __init__(self, name: str, args: DnsApiTokenArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("commstack:edge:DnsApiToken", name, {}, opts)
        import pulumi_cloudflare as cloudflare

        self.provider, self.zone_id = _cloudflare_zone(name, args.api_token, args.zone_name, self)
        # Group ids are looked up, not hard-coded: Cloudflare owns them.
        groups = cloudflare.get_api_token_permission_groups_list_output(
            scope=ZONE_SCOPE, opts=pulumi.InvokeOutputOptions(parent=self, provider=self.provider))
        group_ids = groups.results.apply(lambda results: permission_group_ids(
            [{"id": g.id, "name": g.name, "scopes": g.scopes} for g in results]))
        self.token = cloudflare.ApiToken(
            f"{name}-api-token",
            name=f"commstack {pulumi.get_stack()} {name}: DNS-01 in {args.zone_name}",
            policies=[cloudflare.ApiTokenPolicyArgs(
                effect="allow",
                permission_groups=group_ids.apply(
                    lambda ids: [cloudflare.ApiTokenPolicyPermissionGroupArgs(id=i) for i in ids]),
                resources=self.zone_id.apply(zone_token_resources),
            )],
            opts=child(self, provider=self.provider),
        )
        self.value = pulumi.Output.secret(self.token.value)
        self.register_outputs({"zoneId": self.zone_id, "value": self.value})


class Dns(pulumi.ComponentResource):
    """DNS records in an existing Cloudflare zone, managed with the stack's own token."""

    zone_id: pulumi.Output[str]

    def __init__(self, name: str, args: DnsArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("commstack:edge:Dns", name, {}, opts)
        import pulumi_cloudflare as cloudflare

        labels = [(record_label(spec.fqdn, args.zone_name), spec) for spec in args.records]
        seen: set[tuple[str, str]] = set()
        for label, spec in labels:
            assert spec.type in RECORD_TYPES, f"{spec.fqdn}: unsupported record type {spec.type}"
            assert (label, spec.type) not in seen, f"{spec.fqdn} {spec.type} is requested twice"
            seen.add((label, spec.type))

        self.provider, self.zone_id = _cloudflare_zone(name, args.api_token, args.zone_name, self)
        self.records = [
            cloudflare.DnsRecord(
                f"{name}-{label}-{spec.type.lower()}",
                zone_id=self.zone_id,
                # The full name: what the API stores, so there is no diff on refresh.
                name=spec.fqdn,
                type=spec.type,
                content=spec.content,
                ttl=AUTOMATIC_TTL,
                proxied=proxied(spec, args.proxy_http),
                comment=f"commstack: {spec.purpose}",
                opts=child(self, provider=self.provider),
            )
            for label, spec in labels
        ]
        self.hostnames = sorted({spec.fqdn for spec in args.records})
        self.register_outputs({"zoneId": self.zone_id, "hostnames": self.hostnames})
