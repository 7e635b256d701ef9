"""MatrixRTC calls on the offline engine: LiveKit's config advertises only publicIp, the keys are
files shared by LiveKit and lk-jwt-service only, Synapse and the well-known announce the same URL,
and the ports stay inside the public list."""

from __future__ import annotations

import pulumi
import pytest
import yaml

from commstack.devtools import offline
from components.edge.ports import firewall_ranges, ports_for, public_ports
from components.matrix import livekit, lkjwt
from components.matrix.livekit import TurnServer, key_file, render_livekit_config
from components.matrix.lkjwt import service_environment
from components.matrix.synapse import MATRIX_RTC_SETTINGS, render_homeserver_config
from components.matrix.wellknown import well_known_client
from tests.components.matrix.test_homeserver import build, container, edge_settings, matrix_settings, uploads

CONTAINER = "docker:index/container:Container"
MISSION_PORTS = {("tcp", 80, 80), ("tcp", 443, 443), ("tcp", 3478, 3478), ("udp", 3478, 3478),
                 ("tcp", 5349, 5349), ("udp", 5349, 5349), ("udp", 49160, 49200)}


def test_the_firewall_list_is_exactly_the_missions():
    assert {(r.protocol, r.from_port, r.to_port) for r in firewall_ranges()} == MISSION_PORTS


def test_no_two_programs_share_a_port():
    seen: dict[tuple[int, str], str] = {}
    for entry in public_ports():
        for number in entry.numbers():
            for protocol in entry.protocols:
                assert (number, protocol) not in seen, f"{number}/{protocol}: {seen.get((number, protocol))} and {entry.service}"
                seen[(number, protocol)] = entry.service
    # coturn's relays and LiveKit's media split 49160-49200 between them, leaving nothing unused.
    relay, = [p for p in ports_for("turn") if p.from_port != p.to_port]
    media, = ports_for("livekit")
    assert (relay.from_port, relay.to_port + 1, media.to_port) == (49160, media.from_port, 49200)


def test_livekit_advertises_only_the_public_address_and_asks_no_stun_server():
    config = render_livekit_config(node_ip="203.0.113.10", udp_ports=(49193, 49200),
                                   turn_servers=[TurnServer("turn.example.org", 3478, "udp")])
    rtc = config["rtc"]
    # mediatransportutil rtcconfig: explicit node_ip without use_external_ip -> host candidates
    # rewritten to node_ip, and no STUN (only when node_ip is empty or auto-generated).
    assert (rtc["node_ip"], rtc["use_external_ip"], rtc["advertise_internal_ip"]) == ("203.0.113.10", False, False)
    assert rtc["stun_servers"] == [] and rtc["enable_loopback_candidate"] is False and rtc["use_mdns"] is False
    assert (rtc["udp_port"], rtc["tcp_port"]) == ("49193-49200", 0)
    assert config["room"] == {"auto_create": False, "max_participants": 50, "empty_timeout": 300,
                              "departure_timeout": 20} and config["turn"] == {"enabled": False}
    assert config["limit"] == {"max_room_name_length": 64}
    assert rtc["turn_servers"] == [{"host": "turn.example.org", "port": 3478, "protocol": "udp",
                                    "secret_file": livekit.TURN_SECRET_PATH, "ttl": 3600}]
    assert "keys" not in config and config["key_file"] == livekit.KEY_FILE_PATH


@pytest.mark.parametrize("bad", [dict(node_ip="not-an-ip"), dict(node_ip="2001:db8::1"), dict(udp_ports=(49200, 49193)),
                                 dict(turn_servers=[TurnServer("t", 3478, "udp")], turn_secret_path=None)])
def test_livekit_config_refuses_bad_values(bad):
    with pytest.raises(ValueError):
        render_livekit_config(**{"node_ip": "203.0.113.10", "udp_ports": (49193, 49200), **bad})


def test_one_key_file_format_for_both_programs():
    assert key_file("APIkey1", "s3cret") == "APIkey1: s3cret\n"
    assert yaml.safe_load(key_file("APIkey1", "s3cret")) == {"APIkey1": "s3cret"}  # LiveKit's key_file
    with pytest.raises(ValueError):
        key_file("API:key", "secret")


def test_lk_jwt_service_environment_holds_no_secret_and_names_our_homeserver_only():
    env = service_environment(livekit_url="wss://rtc.example.org/livekit/sfu", full_access_homeservers=["example.org"],
                              extra_ca=True)
    assert env == {"LIVEKIT_URL": "wss://rtc.example.org/livekit/sfu", "LIVEKIT_KEY_FILE": lkjwt.KEY_FILE_PATH,
                   "LIVEKIT_FULL_ACCESS_HOMESERVERS": "example.org", "LIVEKIT_JWT_BIND": ":8080",
                   "SSL_CERT_DIR": f"/etc/ssl/certs:{lkjwt.EXTRA_CA_DIR}"}
    with pytest.raises(ValueError, match="every homeserver"):
        service_environment(livekit_url="wss://x/", full_access_homeservers=["*"])


def _homeserver(**overrides) -> dict:
    return render_homeserver_config(
        server_name="example.org", public_baseurl="https://matrix.example.org/",
        database={"user": "u", "password": "p", "database": "d", "host": "postgres", "port": 5432},
        registration="closed", registration_shared_secret="a", macaroon_secret_key="b", form_secret="c",
        **overrides)


def test_synapse_gets_the_matrix_rtc_keys_only_with_transports():
    transports = [{"type": "livekit", "livekit_service_url": "https://rtc.example.org/livekit/jwt"}]
    on = _homeserver(federation=True, matrix_rtc_transports=transports)
    assert on["experimental_features"] == {"msc4143_enabled": True, "msc4222_enabled": True, "msc4354_enabled": True}
    assert on["matrix_rtc"] == {"transports": transports}
    assert on["max_event_delay_duration"] == "24h"
    assert on["rc_message"] == {"per_second": 0.5, "burst_count": 30}
    assert on["rc_delayed_event_mgmt"] == {"per_second": 1, "burst_count": 20}
    assert on["listeners"][0]["resources"][0]["names"] == ["client", "federation"]
    # Not federating: the `openid` resource alone lets lk-jwt-service check tokens.
    assert _homeserver(federation=False, matrix_rtc_transports=transports)["listeners"][0]["resources"][0]["names"] \
        == ["client", "openid"]
    off = _homeserver(federation=False)
    assert not set(MATRIX_RTC_SETTINGS) & set(off) and "matrix_rtc" not in off
    assert off["listeners"][0]["resources"][0]["names"] == ["client"]


def test_synapse_loads_the_rendered_matrix_rtc_keys(tmp_path):
    """Synapse's own config classes (v1.163.2) accept the keys and read the values we meant."""
    from signedjson.key import generate_signing_key, write_signing_keys
    from synapse.config.homeserver import HomeServerConfig

    with open(tmp_path / "signing.key", "w") as handle:
        write_signing_keys(handle, [generate_signing_key("a_test")])

    transports = [{"type": "livekit", "livekit_service_url": "https://rtc.example.org/livekit/jwt"}]
    config = HomeServerConfig()
    data = _homeserver(federation=False, matrix_rtc_transports=transports)
    config.parse_config_dict({**data, "media_store_path": str(tmp_path / "media"),
                              "signing_key_path": str(tmp_path / "signing.key"), "log_config": None},
                             config_dir_path=str(tmp_path), data_dir_path=str(tmp_path))
    assert config.experimental.msc4143_enabled and config.experimental.msc4222_enabled
    assert config.experimental.msc4354_enabled
    assert config.matrix_rtc.transports == transports
    assert config.server.max_event_delay_duration.as_millis() == 24 * 3600 * 1000
    assert (config.ratelimiting.rc_delayed_event_mgmt.per_second, config.ratelimiting.rc_delayed_event_mgmt.burst_count) == (1, 20)
    assert (config.ratelimiting.rc_message.per_second, config.ratelimiting.rc_message.burst_count) == (0.5, 30)


def test_well_known_carries_the_same_foci():
    foci = [{"type": "livekit", "livekit_service_url": "https://rtc.example.org/livekit/jwt"}]
    assert well_known_client("https://matrix.example.org/", foci)["org.matrix.msc4143.rtc_foci"] == foci
    assert "org.matrix.msc4143.rtc_foci" not in well_known_client("https://matrix.example.org/")


@pytest.mark.parametrize("tls", ["self-signed", "letsencrypt"])
def test_homeserver_wires_calls_end_to_end(tls):
    recorded = offline.install_component_mocks()

    @pulumi.runtime.test
    def run():
        hs, done = build(matrix_settings(), edge_settings(tls))

        def check(_):
            lk_files, jwt_files = uploads(recorded, "livekit"), uploads(recorded, "lk-jwt-service")
            config = yaml.safe_load(lk_files[livekit.CONFIG_PATH])
            assert config["rtc"]["node_ip"] == "203.0.113.10"
            # One generated key and secret, in both programs' key files, nowhere in an environment.
            assert lk_files[livekit.KEY_FILE_PATH] == jwt_files[lkjwt.KEY_FILE_PATH]
            key, _, secret = lk_files[livekit.KEY_FILE_PATH].partition(":")
            assert len(key.strip()) == 16 and len(secret.strip()) == 48
            for name in ("livekit", "lk-jwt-service"):
                reg = container(recorded, name)
                assert "uploads" in offline.secret_paths(reg.inputs)
                assert not [e for e in reg.plain_inputs.get("envs") or [] if secret.strip() in e]
                assert {u["file"]: u.get("permissions") for u in reg.plain_inputs["uploads"]}[
                    livekit.KEY_FILE_PATH if name == "livekit" else lkjwt.KEY_FILE_PATH] == "0600"
            # LiveKit hands clients our coturn, with the TURN secret Synapse and coturn share.
            turn_conf = uploads(recorded, "turn")["/etc/coturn/turnserver.conf"]
            assert f"static-auth-secret={lk_files[livekit.TURN_SECRET_PATH]}" in turn_conf
            protocols = [s["protocol"] for s in config["rtc"]["turn_servers"]]
            assert protocols == (["udp", "tcp", "tls"] if tls == "self-signed" else ["udp", "tcp"])
            # The same URL in Synapse's transports, the well-known foci and the lk-jwt-service route.
            homeserver = yaml.safe_load(uploads(recorded, "synapse")["/data/homeserver.yaml"])
            assert homeserver["matrix_rtc"]["transports"] == hs.rtc_transports == [
                {"type": "livekit", "livekit_service_url": "https://rtc.example.org/livekit/jwt"}]
            nginx = uploads(recorded, "wellknown")["/etc/nginx/conf.d/default.conf"]
            assert '"org.matrix.msc4143.rtc_foci":[{"livekit_service_url":"https://rtc.example.org/livekit/jwt"' in nginx
            envs = dict(e.split("=", 1) for e in container(recorded, "lk-jwt-service").plain_inputs["envs"])
            assert envs["LIVEKIT_URL"] == hs.livekit_url == "wss://rtc.example.org/livekit/sfu"
            # doctor's media row: the port LiveKit advertises must lie in this (the livekit-rtc entry).
            assert hs.livekit_media_ports == config["rtc"]["udp_port"] == "49193-49200"
            assert envs["LIVEKIT_FULL_ACCESS_HOMESERVERS"] == "example.org"
            # Self-signed stacks let lk-jwt-service trust the program's certificate; Let's Encrypt needs nothing.
            assert ("SSL_CERT_DIR" in envs) == (tls == "self-signed")
            dynamic = yaml.safe_load(uploads(recorded, "proxy")["/etc/traefik/dynamic.yml"])
            middlewares = dynamic["http"]["middlewares"]
            assert middlewares["strip-rtc-example-org-livekit-jwt"] == {"stripPrefix": {"prefixes": ["/livekit/jwt"]}}
            assert middlewares["strip-rtc-example-org-livekit-sfu"] == {"stripPrefix": {"prefixes": ["/livekit/sfu"]}}
            # lk-jwt-service: its three endpoints only, rate-limited per client, the limit before the strip.
            jwt_router = dynamic["http"]["routers"]["rtc-example-org-livekit-jwt"]
            assert jwt_router["rule"].startswith("Host(`rtc.example.org`) && (Path(`/livekit/jwt/get_token`) || "
                                                 "Path(`/livekit/jwt/sfu/get`) || Path(`/livekit/jwt/healthz`))")
            assert jwt_router["middlewares"] == ["security-headers", "ratelimit-rtc-example-org-livekit-jwt",
                                                 "strip-rtc-example-org-livekit-jwt"]
            assert middlewares["ratelimit-rtc-example-org-livekit-jwt"] == {
                "rateLimit": {"average": 30, "period": "1m", "burst": 20}}
            # Each on its own web network with Traefik only, plus egress (inter-container traffic off);
            # on lk-jwt-service's the public names are Traefik's aliases.
            def joined(name):
                return {n["name"]: n.get("aliases") for n in container(recorded, name).plain_inputs["networksAdvanced"]}
            assert joined("livekit") == {"commstack-matrix-egress": ["livekit"],
                                         "commstack-matrix-web-livekit": ["livekit"]}
            assert joined("lk-jwt-service") == {"commstack-matrix-web-lk-jwt-service": ["lk-jwt-service"],
                                                "commstack-matrix-egress": ["lk-jwt-service"]}
            assert joined("proxy")["commstack-matrix-web-lk-jwt-service"] == [
                "proxy", "example.org", "matrix.example.org", "rtc.example.org"]
            assert joined("proxy")["commstack-matrix-web-livekit"] == ["proxy"]
            others = [r.plain_inputs["name"] for r in recorded.of_type(CONTAINER)
                      if r.plain_inputs["name"] not in ("proxy", "livekit", "lk-jwt-service")]
            for other in others:
                assert not {"commstack-matrix-web-livekit", "commstack-matrix-web-lk-jwt-service"} & set(joined(other))

        return done.apply(check)

    run()


@pytest.mark.parametrize("federation", [True, False])
def test_lk_jwt_service_leaves_the_host_only_when_the_stack_federates(federation):
    """Without federation no user of another homeserver can be in a call here: lk-jwt-service then
    reaches only Traefik (our names are its aliases), so a token naming any other server goes
    nowhere instead of making the service fetch it (the blind SSRF of GHSA-rq24-fh66-rq7x)."""
    recorded = offline.install_component_mocks()

    @pulumi.runtime.test
    def run():
        _, done = build(matrix_settings(federation=federation), edge_settings())

        def check(_):
            networks = {n["name"] for n in container(recorded, "lk-jwt-service").plain_inputs["networksAdvanced"]}
            assert ("commstack-matrix-egress" in networks) is federation
            assert "commstack-matrix-web-lk-jwt-service" in networks
            envs = dict(e.split("=", 1) for e in container(recorded, "lk-jwt-service").plain_inputs["envs"])
            assert envs["LIVEKIT_FULL_ACCESS_HOMESERVERS"] == "example.org"

        return done.apply(check)

    run()
