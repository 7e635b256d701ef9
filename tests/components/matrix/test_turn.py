"""coturn: the rendered turnserver.conf and the Turn component."""

import ipaddress

import pulumi
import pytest

from commstack.devtools import offline
from components.edge.ports import ports_for
from components.matrix.turn import CONF_PATH, CERT_PATH, KEY_PATH, Turn, TurnArgs, render_turnserver_conf, turn_uris

CONTAINER_TYPE = "docker:index/container:Container"

# Synapse docs/setup/turn/coturn.md (v1.157.1): the ranges a TURN server must not relay to.
SYNAPSE_DENIED_RANGES = [
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "0.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8",
    "169.254.0.0/16", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "240.0.0.0/4", "::1/128", "64:ff9b::/96", "::ffff:0:0/96", "100::/64", "2001::/23",
    "2002::/16", "fc00::/7", "fe80::/10",
]


def parse_conf(text: str) -> list[tuple[str, str | None]]:
    """turnserver.conf as (option, value) pairs; flags have value None."""
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        entries.append((key.strip(), value.strip() if sep else None))
    return entries


def values(entries, key):
    return [v for k, v in entries if k == key]


def denied_networks(entries):
    networks = []
    for value in values(entries, "denied-peer-ip"):
        low, _, high = value.partition("-")
        first, last = ipaddress.ip_address(low), ipaddress.ip_address(high or low)
        networks += list(ipaddress.summarize_address_range(first, last))
    return networks


def render(**overrides):
    kwargs = dict(realm="turn.example.org", external_ip="203.0.113.10", shared_secret="s3cretTOKEN",
                  cert_path="/c.pem", key_path="/k.pem")
    return parse_conf(render_turnserver_conf(**{**kwargs, **overrides}))


def test_conf_holds_auth_ports_and_tls_settings():
    entries = render()
    single = {k: v for k, v in entries}
    assert single["static-auth-secret"] == "s3cretTOKEN"
    assert single["realm"] == "turn.example.org"
    assert single["external-ip"] == "203.0.113.10"
    assert (single["listening-port"], single["tls-listening-port"]) == ("3478", "5349")
    assert (single["min-port"], single["max-port"]) == ("49160", "49200")
    assert (single["cert"], single["pkey"]) == ("/c.pem", "/k.pem")
    assert (single["user-quota"], single["total-quota"]) == ("12", "1200")
    for flag in ("use-auth-secret", "no-cli", "no-tcp-relay", "no-multicast-peers", "fingerprint",
                 "no-tlsv1", "no-tlsv1_1"):
        assert single[flag] is None, flag
    # Nothing that would open the relay or weaken auth.
    assert not {"allow-loopback-peers", "lt-cred-mech", "no-auth", "cli-password"} & set(single)


def test_stun_amplification_nonce_and_tls_cipher_hardening():
    """matrix-docker-ansible-deploy #2592: no RFC 3489 answers, RESPONSE-ORIGIN only with RFC 5780;
    nonces that expire; TLS 1.2 on 5349 with ECDHE + AEAD suites only (Mozilla intermediate)."""
    single = {k: v for k, v in render()}
    assert single["no-stun-backward-compatibility"] is None
    assert single["response-origin-only-with-rfc5780"] is None
    assert single["stale-nonce"] == "600"
    ciphers = single["cipher-list"].strip('"').split(":")
    assert ciphers and all(c.startswith("ECDHE-") and ("GCM" in c or "CHACHA20" in c) for c in ciphers)


def test_every_option_appears_once_except_peer_lists():
    keys = [k for k, _ in render()]
    repeated = {k for k in keys if keys.count(k) > 1}
    assert repeated == {"denied-peer-ip"}


def test_denied_peers_cover_synapse_list_exactly():
    entries = render()
    denied = denied_networks(entries)
    for cidr in SYNAPSE_DENIED_RANGES:
        network = ipaddress.ip_network(cidr)
        assert any(network.version == d.version and network.subnet_of(d) for d in denied), cidr
    expected = {ipaddress.ip_network(c) for c in SYNAPSE_DENIED_RANGES}
    assert set(denied) == expected
    assert values(entries, "allowed-peer-ip") == ["203.0.113.10"]


@pytest.mark.parametrize("bad", [
    dict(external_ip="turn.example.org"),
    dict(shared_secret=""),
    dict(shared_secret="two words"),
    dict(min_port=49200, max_port=49160),
])
def test_bad_values_are_refused(bad):
    with pytest.raises(ValueError):
        render(**bad)


def test_uris_cover_udp_tcp_and_tls():
    assert turn_uris("turn.example.org") == [
        "turn:turn.example.org:3478?transport=udp",
        "turn:turn.example.org:3478?transport=tcp",
        "turns:turn.example.org:5349?transport=tcp",
    ]


def test_uris_without_tls_leave_out_turns():
    assert turn_uris("turn.example.org", tls_listening_port=None) == [
        "turn:turn.example.org:3478?transport=udp",
        "turn:turn.example.org:3478?transport=tcp",
    ]


def _make_turn(secret="generated-secret-value-123"):
    return Turn("turn", TurnArgs(
        network="matrix-net", realm="turn.example.org", external_ip="203.0.113.10",
        shared_secret=pulumi.Output.secret(secret), tls_cert_pem="-----BEGIN CERTIFICATE-----\nx\n",
        tls_key_pem=pulumi.Output.secret("-----BEGIN PRIVATE KEY-----\ny\n"),
    ))


@pulumi.runtime.test
def test_component_uploads_conf_with_the_same_secret_and_keeps_it_secret(recorded):
    turn = _make_turn()

    def check(_):
        container, = recorded.of_type(CONTAINER_TYPE)
        assert container.name == "turn-container" and container.plain_inputs["name"] == "turn"
        assert container.parent.endswith("commstack:matrix:Turn::turn")
        uploads = {u["file"]: u["content"] for u in container.plain_inputs["uploads"]}
        assert set(uploads) == {CONF_PATH, CERT_PATH, KEY_PATH}
        conf = uploads[CONF_PATH]
        assert values(parse_conf(conf), "static-auth-secret") == ["generated-secret-value-123"]
        # The secret and key only travel inside secret values.
        assert "uploads" in offline.secret_paths(container.inputs)
        plain_text = repr(offline.strip_secrets(container.inputs))
        assert "generated-secret-value-123" not in plain_text and "PRIVATE KEY" not in plain_text
        assert container.plain_inputs["restart"] == "unless-stopped"
        assert container.plain_inputs["networksAdvanced"][0]["aliases"] == ["turn"]
        assert turn.uris[0] == "turn:turn.example.org:3478?transport=udp"

    return pulumi.Output.from_input(turn.container.id).apply(check)


@pulumi.runtime.test
def test_component_publishes_exactly_the_turn_ports(recorded):
    turn = _make_turn()

    def check(_):
        published = {(p["internal"], p["external"], p["protocol"])
                     for p in recorded.of_type(CONTAINER_TYPE)[0].plain_inputs["ports"]}
        expected = {(n, n, proto) for p in ports_for("turn") for n in p.numbers() for proto in p.protocols}
        assert published == expected
        assert {(3478, "udp"), (3478, "tcp"), (5349, "tcp"), (49160, "udp"), (49192, "udp")} <= \
            {(n, proto) for n, _, proto in published}
        # coturn's share of 49160-49200; LiveKit has 49193-49200 (configs/ports.yaml).
        assert (49193, "udp") not in {(n, proto) for n, _, proto in published}
        assert len(published) == 2 + 2 + 33

    return pulumi.Output.from_input(turn.container.id).apply(check)


@pulumi.runtime.test
def test_image_is_pinned(recorded):
    turn = _make_turn()

    def check(_):
        image = recorded.named("turn-image").plain_inputs["name"]
        assert image.startswith("coturn/coturn:") and not image.endswith(":latest")

    return pulumi.Output.from_input(turn.container.id).apply(check)
