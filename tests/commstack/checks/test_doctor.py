"""commstack.checks.doctor's pieces that need no deployment: address rewriting, DNS rules, STUN
encoding, TURN REST credentials, argument precedence and the table.
(Doctor against real servers: tests/integration/test_doctor.py.)"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from http.server import BaseHTTPRequestHandler

import pytest
import requests
from aioice import stun

from commstack.checks import doctor
from commstack.checks.target import ConnectTo, reach, resolve


@pytest.mark.parametrize("url, via, expected", [
    ("https://matrix.example.org/_matrix/client/versions", {"matrix.example.org:443": "http://127.0.0.1:8080"},
     "http://127.0.0.1:8080/_matrix/client/versions"),
    ("https://matrix.example.org:8448/x?y=1", {"matrix.example.org:8448": "10.0.0.5:9000"}, "https://10.0.0.5:9000/x?y=1"),
    ("https://matrix.example.org/x", {"matrix.example.org:8448": "http://127.0.0.1:1"}, "https://matrix.example.org/x"),
])
def test_reach_rewrites_only_the_mapped_origin(url, via, expected):
    assert reach(via, url) == expected


def _pool(via: dict, url: str, verify="/ca.pem"):
    request = requests.Request("GET", url).prepare()
    return ConnectTo(via).build_connection_pool_key_attributes(request, verify)


def test_connect_to_dials_the_via_address_but_keeps_sni_and_hostname_check():
    host_params, pool_kwargs = _pool({"matrix.example.org:443": "127.0.0.1:8443"}, "https://matrix.example.org/x")
    assert host_params == {"scheme": "https", "host": "127.0.0.1", "port": 8443}
    assert pool_kwargs["server_hostname"] == pool_kwargs["assert_hostname"] == "matrix.example.org"
    assert (pool_kwargs["ca_certs"], pool_kwargs["cert_reqs"]) == ("/ca.pem", "CERT_REQUIRED")


def test_connect_to_leaves_unmapped_origins_and_plain_http_alone():
    host_params, pool_kwargs = _pool({"matrix.example.org:8448": "127.0.0.1:1"}, "https://matrix.example.org/x")
    assert host_params == {"scheme": "https", "host": "matrix.example.org", "port": None}  # requests' own, untouched
    assert "server_hostname" not in pool_kwargs
    host_params, pool_kwargs = _pool({"example.org:443": "http://127.0.0.1:8080"}, "https://example.org/x")
    assert host_params == {"scheme": "http", "host": "127.0.0.1", "port": 8080}
    assert "server_hostname" not in pool_kwargs


def test_connect_to_sends_the_public_host_header(loopback_http):
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers["Host"])
            self.send_response(204)
            self.end_headers()

    local = loopback_http(Handler).removeprefix("http://")
    with requests.Session() as session:
        session.mount("http://", ConnectTo({"matrix.example.org:80": local}))
        assert session.get("http://matrix.example.org/x", timeout=5).status_code == 204
    assert seen == ["matrix.example.org"]


def test_reach_address_maps_turn_host_and_port():
    target = doctor.Target(server_name="example.org", via={"turn.example.org:3478": "127.0.0.1:40000"})
    assert doctor.reach_address(target, "turn.example.org", 3478) == ("127.0.0.1", 40000)
    assert doctor.reach_address(target, "turn.example.org", 5349) == ("turn.example.org", 5349)


@pytest.mark.parametrize("uri, expected", [
    ("turn:turn.example.org:3478?transport=udp", ("turn", "turn.example.org", 3478, "udp")),
    ("turn:turn.example.org:3478?transport=tcp", ("turn", "turn.example.org", 3478, "tcp")),
    ("turns:turn.example.org:5349?transport=tcp", ("turns", "turn.example.org", 5349, "tls")),
    ("turn:turn.example.org", ("turn", "turn.example.org", 3478, "udp")),
])
def test_parse_turn_uri(uri, expected):
    assert doctor.parse_turn_uri(uri) == expected


def test_localhost_names_are_loopback_by_rfc_6761():
    assert resolve("matrix.commstack.localhost") == ["127.0.0.1"]


def test_dns_check_fails_with_a_hint_when_the_address_differs():
    check = doctor.check_dns("matrix.commstack.localhost", "203.0.113.10")
    assert check.status == doctor.FAIL
    assert "point matrix.commstack.localhost at 203.0.113.10" in check.hint


def test_dns_check_fails_for_a_missing_name():
    check = doctor.check_dns("nothing.invalid", None)
    assert (check.status, check.hint.startswith("create an A record")) == (doctor.FAIL, True)


def test_turn_rest_credentials_follow_the_use_auth_secret_scheme():
    username, password = doctor.turn_rest_credentials("turnsecret", "@a:x.org", 1700000000)
    assert username == "1700000000:@a:x.org"
    assert base64.b64decode(password) == hmac.new(b"turnsecret", username.encode(), hashlib.sha1).digest()


def test_the_allocate_request_carries_long_term_credentials():
    message = doctor.allocate_request("1700000000:@a:x.org", "turn.example.org", b"nonce-123", "pass")
    method, length, magic = struct.unpack("!HHI", message[:8])
    assert (method, magic, length) == (0x0003, 0x2112A442, len(message) - 20)  # Allocate request
    attributes = stun.parse_message(message).attributes
    assert (attributes["USERNAME"], attributes["REALM"], attributes["NONCE"]) == (
        "1700000000:@a:x.org", "turn.example.org", b"nonce-123")
    assert attributes["REQUESTED-TRANSPORT"] == 17 << 24  # UDP, then three zero bytes (RFC 8656 §18.6)
    # MESSAGE-INTEGRITY, checked by hand: HMAC-SHA1 keyed with MD5(username:realm:password), over the
    # message up to it with the length field covering it (RFC 8489 §9.2.2, §14.5); FINGERPRINT follows.
    key = hashlib.md5(b"1700000000:@a:x.org:turn.example.org:pass").digest()
    before = message[:-8 - 24]
    adjusted = before[:2] + struct.pack("!H", len(before) - 20 + 24) + before[4:]
    assert message[-8 - 24:-8 - 20] == struct.pack("!HH", 0x0008, 20)
    assert message[-8 - 20:-8] == hmac.new(key, adjusted, hashlib.sha1).digest()


def test_the_first_allocate_asks_for_the_challenge():
    attributes = stun.parse_message(doctor.allocate_request()).attributes
    assert set(attributes) == {"REQUESTED-TRANSPORT"}


def _stun_answer(request: bytes, method_and_class: int, attributes: bytes = b"") -> bytes:
    return struct.pack("!HHI", method_and_class, len(attributes), 0x2112A442) + request[8:20] + attributes


def _attribute(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + b"\x00" * (-len(value) % 4)


def _coturn_like(request: bytes, source) -> bytes:
    """401 with realm and nonce to the first Allocate; the relayed address to the second."""
    if b"\x00\x06" not in request[20:24] and b"nonce" not in request:
        error = struct.pack("!HBB", 0, 4, 1) + b"Unauthorized"
        return _stun_answer(request, 0x0113, _attribute(0x0009, error) + _attribute(0x0014, b"example.org")
                            + _attribute(0x0015, b"nonce"))
    port, address = 49170 ^ 0x2112, 0x7F000001 ^ 0x2112A442
    return _stun_answer(request, 0x0103, _attribute(0x0016, struct.pack("!BBHI", 0, 1, port, address))
                        + _attribute(0x000D, struct.pack("!I", 600)))


@pytest.mark.parametrize("reply, ok, detail", [
    (_coturn_like, True, "relay 127.0.0.1:49170 for 600 s"),
    (lambda request, source: _stun_answer(request, 0x0103), False,
     "the server did not ask for long-term credentials (use-auth-secret off?)"),
    (lambda request, source: b"not stun at all, but long enough", False, "a malformed STUN answer"),
])
def test_turn_allocate_against_a_real_udp_socket(udp_responder, reply, ok, detail):
    responder = udp_responder(reply)
    result = doctor.turn_allocate(*responder.address, "user", "pass")
    assert (result.ok, detail in result.detail) == (ok, True), result
    if ok:
        assert len(responder.received) == 2 and b"user" in responder.received[1]


def test_flags_override_stack_outputs(doctor_target):
    outputs = {"serverName": "example.org", "homeserverUrl": "https://matrix.example.org/",
               "turnUris": ["turn:turn.example.org:3478?transport=udp"], "registrationSharedSecret": "s"}
    target = doctor_target(outputs, stack="prod", homeserver_url="https://hs.example.org/",
                           via="example.org:443=http://127.0.0.1:1")
    assert target.server_name == "example.org"
    assert target.homeserver_url == "https://hs.example.org/"
    assert target.turn_uris == outputs["turnUris"]
    assert target.shared_secret == "s"
    assert target.via == {"example.org:443": "http://127.0.0.1:1"}


CA_BUNDLE = __import__("certifi").where()  # any readable PEM file


@pytest.mark.parametrize("flags, verify", [
    ({}, True),
    ({"ca_file": CA_BUNDLE}, CA_BUNDLE),
    ({"insecure_tls": True, "ca_file": CA_BUNDLE}, False),
])
def test_ca_file_replaces_the_system_cas_unless_tls_is_relaxed(doctor_target, flags, verify):
    target = doctor_target(server_name="example.org", **flags)
    assert target.ca_file == flags.get("ca_file")
    assert doctor._verify(target) == verify


def test_a_self_signed_stack_is_verified_against_its_own_certificate(doctor_target):
    pem = open(CA_BUNDLE).read().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    outputs = {"serverName": "commstack.localhost", "tlsCertificate": pem}
    target = doctor_target(outputs, stack="dev")
    assert target.self_signed and open(target.ca_file).read() == pem
    assert doctor._verify(target) == target.ca_file
    # --insecure-tls still wins, and a --ca-file given is kept.
    assert doctor_target(outputs, stack="dev", insecure_tls=True).ca_file is None
    assert doctor_target(outputs, stack="dev", ca_file=CA_BUNDLE).ca_file == CA_BUNDLE


@pytest.mark.parametrize("target_outputs, hint", [
    ({"signalLogsCommand": "docker logs signal-local-server (on the Docker host)"}, "docker logs signal-local-server"),
    ({"signalLogsCommand": "journalctl -u signal-server (on the instance)"}, "journalctl -u signal-server"),
])
def test_signal_hints_fit_the_stacks_target(doctor_target, target_outputs, hint):
    outputs = {"serverName": "example.org", "signalHealthUrl": "http://127.0.0.1:1/v1/accounts/whoami",
               **target_outputs}
    target = doctor_target(outputs, stack="s")
    check = doctor.check_signal(target)
    assert check.status == doctor.FAIL and hint in check.hint, check
    assert ("journalctl" in check.hint) == ("journalctl" in hint)


@pytest.mark.parametrize("flags, message", [
    ({"server_name": "a..b"}, "--server-name 'a..b' is not a host name"),
    ({"server_name": "exa mple.org"}, "is not a host name"),
    ({"server_name": "example.org", "homeserver_url": "matrix.example.org"}, "--homeserver-url"),
    ({"server_name": "example.org", "homeserver_url": "https://matrix.example.org:port/"}, "is not a URL"),
    ({"server_name": "example.org", "public_ip": "300.1.1.1"}, "--public-ip '300.1.1.1' is not an IP address"),
    ({"server_name": "example.org", "turn_uri": "stun:x"}, "--turn-uri 'stun:x' is not a TURN URI"),
    ({"server_name": "example.org", "turn_uri": "turn:x:notaport"}, "is not a TURN URI"),
    ({"server_name": "example.org", "via": "example.org:443=127.0.0.1"}, "is not HOST:PORT=[SCHEME://]ADDR:PORT"),
    ({"server_name": "example.org", "via": "example.org=127.0.0.1:1"}, "is not HOST:PORT"),
    ({"server_name": "example.org", "ca_file": "/no/such.pem"}, "--ca-file /no/such.pem: No such file"),
])
def test_malformed_flags_are_refused_before_any_traffic(doctor_target, flags, message):
    with pytest.raises(doctor.AdminError) as raised:
        doctor_target(**flags)
    assert message in str(raised.value)


def test_a_server_name_is_required(doctor_target):
    with pytest.raises(doctor.AdminError, match="--stack NAME or --server-name"):
        doctor_target()


def test_table_counts_and_hints():
    table = doctor.format_table([
        doctor.Check("a", doctor.PASS, "fine", "never shown"),
        doctor.Check("b", doctor.FAIL, "broken", "do this"),
        doctor.Check("c", doctor.SKIP, "relaxed", "drop the flag"),
    ])
    rows = table.splitlines()
    assert rows[0].split() == ["CHECK", "STATUS", "DETAIL", "FIX"]
    assert rows[1].split() == ["a", "PASS", "fine"]
    assert rows[2].endswith("do this") and rows[3].endswith("drop the flag")
    assert rows[-1] == "3 checks: 1 passed, 1 failed, 1 skipped"


# A real HTTP server on loopback playing each answer a Signal front can give.
SIGNAL_ANSWERS = {
    "/ok": (200, "application/json", b'{"status":"ok"}'),
    "/v1/accounts/whoami": (401, "application/json", b'{"code":401,"message":"HTTP 401 Unauthorized"}'),
    "/html401": (401, "text/html", b"<html>401 Authorization Required</html>"),
    "/down": (502, "text/html", b"<html>502 Bad Gateway</html>"),
}


@pytest.fixture
def signal_front(loopback_http):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            status, content_type, body = SIGNAL_ANSWERS[self.path]
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return loopback_http(Handler)


@pytest.mark.parametrize("path, status, hint_part", [
    ("/ok", doctor.PASS, ""),
    ("/v1/accounts/whoami", doctor.PASS, ""),
    ("/html401", doctor.FAIL, "see `journalctl -u signal-server (on the instance)`"),
    ("/down", doctor.FAIL, "the proxy in front cannot reach Signal-Server"),
])
def test_signal_check_accepts_only_the_servers_own_answers(signal_front, path, status, hint_part):
    check = doctor.check_signal(doctor.Target(server_name="example.org", signal_health_url=signal_front + path,
                                              signal_logs="journalctl -u signal-server (on the instance)"))
    assert check.status == status
    assert hint_part in (check.hint or "")


def test_a_malformed_bridge_flag_is_reported_without_echoing_the_token(doctor_args, capsys):
    token = "syt_d2hhdHNhcHA_secretsecretsecret"
    assert doctor.main(doctor_args(server_name="example.org", bridge=f"whatsapp:{token}")) == 2
    out, err = capsys.readouterr()
    assert err.strip() == "error: --bridge takes KEY=VALUE; one value has no '='"
    assert token not in out + err
