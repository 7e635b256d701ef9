"""Cloudflare DNS: records per spec, zone by name, a token scoped to that zone."""

import ipaddress
import json

import pulumi
import pytest

from commstack.devtools import offline
from components.edge.dns import (Dns, DnsApiToken, DnsApiTokenArgs, DnsArgs, cloudflare_proxy_ranges,
                                 permission_group_ids, record_label)
from components.edge.records import DnsRecordSpec
from tests.conftest import evaluate

ZONE = "example.org"
TOKEN = "cf-test-token-0123456789"

SPECS = [
    DnsRecordSpec(fqdn="matrix.example.org", type="A", content="203.0.113.10", http=True, purpose="Synapse"),
    DnsRecordSpec(fqdn="element.example.org", type="CNAME", content="matrix.example.org", http=True,
                  purpose="Element Web"),
    DnsRecordSpec(fqdn="turn.example.org", type="A", content="203.0.113.10", http=False, purpose="coturn"),
    DnsRecordSpec(fqdn="example.org", type="A", content="203.0.113.10", http=True, purpose="well-known"),
    DnsRecordSpec(fqdn="chat.example.org", type="A", content=pulumi.Output.from_input("203.0.113.50"), http=True,
                  purpose="Signal-Server"),
]


def make(name="dns", proxy_http=True, records=SPECS):
    return Dns(name, DnsArgs(zone_name=ZONE, api_token=pulumi.Output.secret(TOKEN), records=records,
                             proxy_http=proxy_http))


def make_token(name="acme-dns-token"):
    return DnsApiToken(name, DnsApiTokenArgs(zone_name=ZONE, api_token=pulumi.Output.secret(TOKEN)))


def records_by_name(recorded):
    return {r.plain_inputs["name"]: r for r in recorded.of_type("cloudflare:index/dnsRecord:DnsRecord")}


@pulumi.runtime.test
def test_one_record_per_spec_with_name_type_content_and_auto_ttl(recorded):
    dns = make()

    def check(_):
        records = records_by_name(recorded)
        assert set(records) == {s.fqdn for s in SPECS}
        for spec in SPECS:
            inputs = records[spec.fqdn].plain_inputs
            assert inputs["type"] == spec.type
            assert inputs["content"] == (spec.content if isinstance(spec.content, str) else "203.0.113.50")
            assert inputs["ttl"] == 1
            assert inputs["zoneId"] == offline.OFFLINE_ZONE_ID
        assert recorded.named("dns-apex-a").plain_inputs["name"] == "example.org"

    return pulumi.Output.all(*[r.id for r in dns.records]).apply(check)


@pulumi.runtime.test
def test_http_names_proxied_only_when_asked_and_turn_never(recorded):
    dns = make(proxy_http=True)

    def check(_):
        proxied = {name: r.plain_inputs["proxied"] for name, r in records_by_name(recorded).items()}
        assert proxied == {"matrix.example.org": True, "element.example.org": True, "example.org": True,
                           "chat.example.org": True, "turn.example.org": False}

    return pulumi.Output.all(*[r.id for r in dns.records]).apply(check)


@pulumi.runtime.test
def test_nothing_proxied_by_default(recorded):
    dns = make(proxy_http=False)

    def check(_):
        assert [r.plain_inputs["proxied"] for r in records_by_name(recorded).values()] == [False] * len(SPECS)

    return pulumi.Output.all(*[r.id for r in dns.records]).apply(check)


@pulumi.runtime.test
def test_zone_is_looked_up_by_name_with_explicit_provider(recorded):
    dns = make()

    def check(_):
        lookups = [args for token, args in recorded.invokes if token == "cloudflare:index/getZone:getZone"]
        assert [a["filter"]["name"] for a in lookups] == [ZONE]
        provider = recorded.of_type("pulumi:providers:cloudflare")
        assert len(provider) == 1 and provider[0].parent == recorded.named("dns").urn
        assert offline.secret_paths(provider[0].inputs) == ["apiToken"]
        for reg in recorded.of_type("cloudflare:index/dnsRecord:DnsRecord"):
            assert reg.provider.startswith(provider[0].urn + "::")

    return pulumi.Output.all(dns.zone_id, *[r.id for r in dns.records]).apply(check)


@pulumi.runtime.test
def test_children_are_parented_and_named_after_the_instance(recorded):
    dns = make(name="edge-dns")

    def check(_):
        component = recorded.named("edge-dns")
        assert component.type == "commstack:edge:Dns"
        children = recorded.children_of(component.urn)
        assert children and all(c.name.startswith("edge-dns-") for c in children)
        assert {c.name for c in children} == {"edge-dns-provider", "edge-dns-matrix-a", "edge-dns-element-cname",
                                              "edge-dns-turn-a", "edge-dns-apex-a", "edge-dns-chat-a"}
        # Records only: the DNS-01 token is the standalone DnsApiToken's job.
        assert recorded.of_type("cloudflare:index/apiToken:ApiToken") == []
        assert not [t for t, _ in recorded.invokes if t.endswith("getApiTokenPermissionGroupsList")]

    return pulumi.Output.all(*[r.id for r in dns.records]).apply(check)


@pulumi.runtime.test
def test_scoped_token_has_dns_write_and_zone_read_on_exactly_this_zone(recorded):
    token_component = make_token()

    def check(_):
        token, = recorded.of_type("cloudflare:index/apiToken:ApiToken")
        policy, = token.plain_inputs["policies"]
        assert policy["effect"] == "allow"
        assert json.loads(policy["resources"]) == {f"com.cloudflare.api.account.zone.{offline.OFFLINE_ZONE_ID}": "*"}
        groups = offline.emulate_invoke(
            "cloudflare:index/getApiTokenPermissionGroupsList:getApiTokenPermissionGroupsList", {})["results"]
        names = {g["id"]: g["name"] for g in groups}
        assert sorted(names[g["id"]] for g in policy["permissionGroups"]) == ["DNS Write", "Zone Read"]
        lookups = [a for t, a in recorded.invokes if t.endswith("getApiTokenPermissionGroupsList")]
        assert [a.get("scope") for a in lookups] == ["com.cloudflare.api.account.zone"]
        assert {c.name for c in recorded.children_of(recorded.named("acme-dns-token").urn)} == {
            "acme-dns-token-provider", "acme-dns-token-api-token"}

    return pulumi.Output.all(token_component.value).apply(check)


@pulumi.runtime.test
def test_scoped_token_value_is_the_created_tokens_secret_value(recorded):
    token_component = make_token()

    def check(args):
        flag, token = args
        assert flag is True
        reg, = recorded.of_type("cloudflare:index/apiToken:ApiToken")
        assert offline.is_secret(reg.outputs["value"])
        assert token == offline.unwrap(reg.outputs["value"]) and token != TOKEN

    return pulumi.Output.all(offline.secret_flag(token_component.value), token_component.value).apply(check)


@pulumi.runtime.test
def test_token_never_appears_in_plain_inputs_or_outputs(recorded):
    dns = make()
    token_component = make_token()

    def check(args):
        scoped = args[0]
        for reg in recorded.registrations:
            for secret in (TOKEN, scoped):
                assert secret not in json.dumps(offline.strip_secrets(reg.inputs))
                assert secret not in json.dumps(offline.strip_secrets(reg.outputs))

    return pulumi.Output.all(token_component.value, *[r.id for r in dns.records]).apply(check)


@pulumi.runtime.test
def test_standalone_token_looks_up_the_zone_by_name_and_is_secret(recorded):
    token = DnsApiToken("acme-dns-token", DnsApiTokenArgs(zone_name=ZONE, api_token=pulumi.Output.secret(TOKEN)))

    def check(args):
        flag, value, zone_id = args
        assert flag is True and value != TOKEN and zone_id == offline.OFFLINE_ZONE_ID
        lookups = [a for t, a in recorded.invokes if t == "cloudflare:index/getZone:getZone"]
        assert [a["filter"] for a in lookups] == [{"name": ZONE, "match": "all"}]
        reg, = recorded.of_type("cloudflare:index/apiToken:ApiToken")
        assert reg.parent == recorded.named("acme-dns-token").urn
        assert reg.provider.startswith(recorded.named("acme-dns-token-provider").urn + "::")
        assert ZONE in reg.plain_inputs["name"]
        assert recorded.of_type("cloudflare:index/dnsRecord:DnsRecord") == []

    return pulumi.Output.all(offline.secret_flag(token.value), token.value, token.zone_id).apply(check)


def test_record_outside_the_zone_is_refused():
    assert record_label("a.b.example.org", ZONE) == "a-b"
    with pytest.raises(ValueError, match="not inside the zone"):
        record_label("matrix.example.net", ZONE)
    with pytest.raises(ValueError, match="not inside the zone"):
        record_label("badexample.org", ZONE)


def test_cloudflare_proxy_ranges_are_the_published_v4_and_v6_networks():
    networks = [ipaddress.ip_network(cidr) for cidr in cloudflare_proxy_ranges()]
    assert [n.version for n in networks] == [4] * 15 + [6] * 7
    assert len(set(networks)) == len(networks)
    assert ipaddress.ip_address("104.16.1.1") in networks[11]  # 104.16.0.0/13
    assert not any(n.is_private for n in networks)


def test_permission_groups_are_picked_by_name_and_zone_scope():
    groups = [{"id": "a", "name": "DNS Write", "scopes": ["com.cloudflare.api.account"]},
              {"id": "b", "name": "DNS Write", "scopes": ["com.cloudflare.api.account.zone"]},
              {"id": "c", "name": "Zone Read", "scopes": ["com.cloudflare.api.account.zone"]}]
    assert permission_group_ids(groups) == ["b", "c"]
    with pytest.raises(ValueError, match="Zone Read"):
        permission_group_ids(groups[:2])


# -- in the whole program -------------------------------------------------------------------

def test_prod_manages_both_halves_records_in_the_domain_zone_dns_only_by_default(prod_evaluation):
    dns, = prod_evaluation.of_type("commstack:edge:Dns")
    provider = prod_evaluation.named(f"{dns.name}-provider")
    records = prod_evaluation.of_type("cloudflare:index/dnsRecord:DnsRecord")
    names = [r.plain_inputs["name"] for r in records]
    assert len(names) == len(set(names))
    assert {"example.org", "matrix.example.org", "element.example.org", "turn.example.org",
            "chat.example.org"} <= set(names)
    assert all(n == "example.org" or n.endswith(".example.org") for n in names)
    for r in records:
        assert r.parent == dns.urn and r.provider.startswith(provider.urn + "::")
        assert r.plain_inputs["proxied"] is False and r.plain_inputs["ttl"] == 1
    zones = [a["filter"]["name"] for t, a in prod_evaluation.invokes if t == "cloudflare:index/getZone:getZone"]
    assert zones and set(zones) == {"example.org"}


def test_proxying_http_never_proxies_turn():
    evaluation = evaluate("prod", cloudflareProxyHttp="true")
    proxied = {r.plain_inputs["name"]: r.plain_inputs["proxied"]
               for r in evaluation.of_type("cloudflare:index/dnsRecord:DnsRecord")}
    assert proxied["turn.example.org"] is False
    assert proxied["matrix.example.org"] is True and proxied["element.example.org"] is True
