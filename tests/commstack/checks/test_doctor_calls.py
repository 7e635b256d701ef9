"""doctor's call rows without a deployment: what they parse and decide, the signalling WebSocket
and the ICE check of the media probe on the wire, and each row against real loopback servers and sockets.
(Against the harness's real LiveKit and lk-jwt-service: tests/integration/test_doctor.py.)"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler

import pytest
from aioice import stun

from commstack.checks import doctor, doctor_calls, rtc_probe
from commstack.checks.rtc_probe import Candidate, IceCredentials

SERVICE = "https://rtc.example.org/livekit/jwt"


# -- foci and transports -------------------------------------------------------------------------

@pytest.mark.parametrize("foci, urls", [
    ([{"type": "livekit", "livekit_service_url": SERVICE + "/"}], [SERVICE]),
    ([{"type": "livekit", "livekit_service_url": SERVICE}, {"type": "livekit", "livekit_service_url": SERVICE}], [SERVICE]),
    ([{"type": "nextgen", "livekit_service_url": SERVICE}], []),
    ([{"type": "livekit", "livekit_service_url": "http://rtc.example.org/livekit/jwt"}], []),  # never plain http
    ([{"type": "livekit"}], []),
    ({"type": "livekit"}, []),
    (None, []),
])
def test_service_urls_keep_only_https_livekit_foci(foci, urls):
    assert doctor_calls.service_urls(foci) == urls


# -- lk-jwt-service's token ------------------------------------------------------------------------

def test_room_alias_and_identity_follow_lk_jwt_service():
    """Unpadded base64 of SHA-256 over the compact JSON array (lk-jwt-service v0.5.0 processSFURequest);
    the session test in tests/integration/test_doctor.py checks it against the real service."""
    raw = b'["!r:example.org","m.call#ROOM"]'
    expected = base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
    assert doctor_calls.room_alias("!r:example.org") == expected and "=" not in expected
    assert doctor_calls.livekit_identity("@a:example.org", "DEV", "m1") == base64.b64encode(
        hashlib.sha256(b'["@a:example.org","DEV","m1"]').digest()).decode().rstrip("=")


def _jwt(payload: dict, alg: str = "HS256") -> str:
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")
    return f"{part({'alg': alg, 'typ': 'JWT'})}.{part(payload)}.c2ln"


GOOD = {"video": {"roomJoin": True, "room": "ROOM"}, "sub": "ID", "iss": "key", "exp": 2000}


@pytest.mark.parametrize("claims, problem", [
    (GOOD, None),
    ({**GOOD, "video": {"roomJoin": False, "room": "ROOM"}}, "grants no roomJoin"),
    ({**GOOD, "video": {"roomJoin": True, "room": "OTHER"}}, "names room 'OTHER', not 'ROOM'"),
    ({**GOOD, "sub": "someone"}, "names identity 'someone', not 'ID'"),
    ({**GOOD, "exp": 999}, "has expired"),
    ({**GOOD, "iss": ""}, "names no API key"),
])
def test_token_problem_names_what_would_stop_the_join(claims, problem):
    found = doctor_calls.token_problem(doctor_calls.jwt_claims(_jwt(claims)), room="ROOM", identity="ID", now=1000)
    assert found == problem if problem is None else problem in found


@pytest.mark.parametrize("token", ["not-a-jwt", "a.b", _jwt(GOOD, alg="none"), "eyJ.eyJ.x"])
def test_jwt_claims_refuses_what_is_not_an_hs256_jwt(token):
    assert doctor_calls.jwt_claims(token) is None
    assert doctor_calls.token_problem(None, room="R", identity="I", now=0) == "the jwt is not an HS256 JWT"


def test_a_refused_token_echoed_by_livekit_is_redacted_even_cut_short():
    token = _jwt(GOOD)
    assert doctor_calls._redact(f"invalid token: {token}, error: bad") == "invalid token: <token>, error: bad"
    assert doctor_calls._redact(f"invalid token: {token[:30]}") == "invalid token: <token>"


# -- media candidates ------------------------------------------------------------------------------

@pytest.mark.parametrize("value, parsed", [("49193-49200", (49193, 49200)), ("7882", (7882, 7882)),
                                           (None, None), ("49193-", None), ("a-b", None)])
def test_parse_port_range(value, parsed):
    assert doctor_calls.parse_port_range(value) == parsed


@pytest.mark.parametrize("candidate, problem", [
    (Candidate("203.0.113.10", 49193, "udp", "host"), None),
    (Candidate("172.18.0.5", 49193, "udp", "host"), "172.18.0.5 (a private or Docker address)"),
    (Candidate("8.8.8.8", 49193, "udp", "host"), "8.8.8.8 (an address that is not publicIp)"),  # a string only
    (Candidate("203.0.113.10", 7882, "udp", "host"), "port 7882 is outside LiveKit's range 49193-49200"),
])
def test_candidate_problem(candidate, problem):
    found = doctor_calls.candidate_problem(candidate, "203.0.113.10", (49193, 49200))
    assert found is None if problem is None else problem in found[0]


@pytest.mark.parametrize("line, candidate", [
    ("a=candidate:1 1 udp 2130706431 203.0.113.10 49193 typ host", Candidate("203.0.113.10", 49193, "udp", "host")),
    ("candidate:2 1 UDP 1694498815 198.51.100.7 50000 typ srflx raddr 0.0.0.0 rport 0",
     Candidate("198.51.100.7", 50000, "udp", "srflx")),
    ("candidate:3 1 tcp 1 203.0.113.10 7881 typ host tcptype passive", Candidate("203.0.113.10", 7881, "tcp", "host")),
    ("candidate:4 1 udp 1 203.0.113.10 port typ host", None),
    ("", None),
])
def test_parse_candidate(line, candidate):
    assert rtc_probe.parse_candidate(line) == candidate


def test_parse_answer_reads_ice_credentials_and_candidates():
    sdp = ("v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=ice-ufrag:LKufrag\r\n"
           "a=ice-pwd:LKpasswordLKpassword12\r\na=candidate:1 1 udp 2130706431 203.0.113.10 49194 typ host\r\n")
    credentials, candidates = rtc_probe.parse_answer(sdp)
    assert credentials == IceCredentials("LKufrag", "LKpasswordLKpassword12")
    assert candidates == [Candidate("203.0.113.10", 49194, "udp", "host")]
    assert rtc_probe.parse_answer("v=0\r\n") == (None, [])


def test_the_offer_carries_our_ice_credentials_and_one_data_channel_section():
    offer = rtc_probe.data_channel_offer(IceCredentials("abcd", "p" * 24)).split("\r\n")
    assert "a=ice-ufrag:abcd" in offer and f"a=ice-pwd:{'p' * 24}" in offer
    assert [line for line in offer if line.startswith("m=")] == ["m=application 9 UDP/DTLS/SCTP webrtc-datachannel"]
    fingerprint = next(line for line in offer if line.startswith("a=fingerprint:sha-256 ")).split()[1]
    assert len(fingerprint.split(":")) == 32


# -- the ICE connectivity check ---------------------------------------------------------------------

REMOTE, LOCAL = IceCredentials("LKufrag1", "remote-password-0123456789"), IceCredentials("doc1", "local-password")


def test_the_binding_request_carries_ice_attributes_integrity_and_fingerprint():
    transaction = bytes(range(12))
    message = rtc_probe.ice_binding_request(REMOTE, LOCAL, transaction)
    method, length, magic = struct.unpack("!HHI", message[:8])
    assert (method, magic, message[8:20], length) == (0x0001, 0x2112A442, transaction, len(message) - 20)
    attributes = stun.parse_message(message).attributes
    assert attributes["USERNAME"] == "LKufrag1:doc1"  # the receiver's ufrag first (RFC 8445 §7.2.2)
    assert attributes["PRIORITY"] == (110 << 24) | (65535 << 8) | 255 and "ICE-CONTROLLING" in attributes
    # Checked by hand on the bytes, not by the library that wrote them:
    # FINGERPRINT: CRC-32 of everything before it, XOR 0x5354554e (RFC 8489 §14.7).
    assert message[-8:-4] == struct.pack("!HH", 0x8028, 4)
    assert struct.unpack("!I", message[-4:])[0] == (zlib.crc32(message[:-8]) ^ 0x5354554E) & 0xFFFFFFFF
    # MESSAGE-INTEGRITY: HMAC-SHA1 keyed with the remote password, the length covering it (§14.5).
    before = message[:-8 - 24]
    assert message[-8 - 24:-8 - 20] == struct.pack("!HH", 0x0008, 20)
    adjusted = before[:2] + struct.pack("!H", len(before) - 20 + 24) + before[4:]
    assert message[-8 - 20:-8] == hmac.new(REMOTE.pwd.encode(), adjusted, hashlib.sha1).digest()


def _success(request: bytes, source) -> bytes:
    port = source[1] ^ (0x2112A442 >> 16)
    address = struct.unpack("!I", socket.inet_aton(source[0]))[0] ^ 0x2112A442
    value = struct.pack("!BBHI", 0, 1, port, address)
    body = struct.pack("!HH", 0x0020, len(value)) + value
    return struct.pack("!HHI", 0x0101, len(body), 0x2112A442) + request[8:20] + body


def _error_487(request: bytes, source) -> bytes:
    value = struct.pack("!HBB", 0, 4, 87) + b"Role Conflict"
    body = struct.pack("!HH", 0x0009, len(value)) + value + b"\x00" * (-len(value) % 4)
    return struct.pack("!HHI", 0x0111, len(body), 0x2112A442) + request[8:20] + body


@pytest.mark.parametrize("reply, ok, detail", [
    (_success, True, "ICE check answered (sees us as 127.0.0.1:"),
    (_error_487, False, "STUN error 487 Role Conflict"),
    (lambda request, source: None, False, "no answer to 2 ICE checks"),
    (lambda request, source: b"\x01\x01\x00\x00" + b"\x00" * 16, False, "no answer"),  # another transaction
])
def test_ice_check_against_a_real_udp_socket(reply, ok, detail, udp_responder):
    responder = udp_responder(reply)
    result = rtc_probe.ice_check(responder.address, REMOTE, LOCAL, attempts=2, wait=0.3)
    assert (result.ok, detail in result.detail) == (ok, True), result
    assert result.answered == (reply in (_success, _error_487))
    assert responder.received and responder.received[0][:2] == b"\x00\x01"


def test_ice_check_on_a_closed_udp_port_is_refused():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()
    result = rtc_probe.ice_check(closed, REMOTE, LOCAL, attempts=2, wait=0.3)
    assert (result.ok, result.refused, result.detail) == (False, True, "port unreachable (ICMP): nothing listens there")


# -- the signalling WebSocket --------------------------------------------------------------------

@pytest.fixture
def websocket_server():
    """A real WebSocket server on loopback running `handler(connection)`; yields (port, requests seen)."""
    from websockets.sync.server import serve

    servers, seen = [], []

    def start(handler):
        def record(connection):
            seen.append(connection.request)
            handler(connection)

        server = serve(record, "127.0.0.1", 0, compression=None)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server.socket.getsockname()[1], seen

    yield start
    for server in servers:
        server.shutdown()


def test_the_websocket_keeps_the_public_name_and_carries_binary_messages(websocket_server):
    def echo_then_leave(connection):
        connection.send(b"join")
        connection.send(connection.recv() + b"!")
        connection.close(1008, "leave")

    port, seen = websocket_server(echo_then_leave)
    ws = rtc_probe.open_websocket(("127.0.0.1", port), "ws://rtc.example.org/livekit/sfu/rtc?access_token=x",
                                  tls_context=None)
    try:
        assert ws.receive(timeout=5) == b"join"
        ws.send(b"offer")
        assert ws.receive(timeout=5) == b"offer!"
        with pytest.raises(rtc_probe.SignallingError, match=r"closed the signalling connection \(1008 leave\)"):
            ws.receive(timeout=5)
    finally:
        ws.close()
    request = seen[0]
    assert request.headers["Host"] == "rtc.example.org"  # connected to 127.0.0.1, named as the public host
    assert request.path == "/livekit/sfu/rtc?access_token=x"
    assert "Sec-WebSocket-Extensions" not in request.headers  # no compression offered


def test_a_quiet_websocket_times_out_and_a_send_after_close_is_a_signalling_error(websocket_server):
    port, _ = websocket_server(lambda connection: connection.recv())
    ws = rtc_probe.open_websocket(("127.0.0.1", port), "ws://rtc.example.org/rtc", tls_context=None)
    with pytest.raises(TimeoutError):
        ws.receive(timeout=0.2)
    ws.send(b"bye")  # the server's handler returns: it closes the connection
    with pytest.raises(rtc_probe.SignallingError, match="closed the signalling connection"):
        for _ in range(50):
            ws.send(b"more")
            time.sleep(0.05)
    ws.close()


def test_a_refused_upgrade_reports_status_and_body(loopback_http):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # as LiveKit and Traefik answer an upgrade request

        def do_GET(self):
            body = b"invalid API key: nosuchkey"
            self.send_response(401)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    port = int(loopback_http(Handler).rsplit(":", 1)[1])
    with pytest.raises(rtc_probe.SignallingError) as raised:
        rtc_probe.open_websocket(("127.0.0.1", port), "ws://rtc.example.org/livekit/sfu/rtc?access_token=x",
                                 tls_context=None)
    assert (raised.value.status, raised.value.body) == (401, "invalid API key: nosuchkey")
    hint = doctor_calls._signalling_hint(raised.value, "rtc.example.org")
    assert hint.startswith("LiveKit refused the token's key or signature")


def test_an_upgrade_with_a_wrong_accept_key_is_refused(loopback_http):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", "bm90IGl0")
            self.end_headers()

    port = int(loopback_http(Handler).rsplit(":", 1)[1])
    with pytest.raises(rtc_probe.SignallingError, match="wrong Sec-WebSocket-Accept"):
        rtc_probe.open_websocket(("127.0.0.1", port), "ws://rtc.example.org/rtc", tls_context=None)


# -- the rows, against real loopback servers -------------------------------------------------------

def _json_server(loopback_http, answers: dict[str, tuple[int, object]]) -> str:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            status, body = answers.get(self.path.split("?")[0], (404, {"errcode": "M_UNRECOGNIZED"}))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Access-Control-Allow-Origin", "*")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

    return loopback_http(Handler)


OPENID = (200, {"access_token": "o", "expires_in": 3600, "matrix_server_name": "example.org", "token_type": "Bearer"})


def _user() -> doctor.TestUser:
    return doctor.TestUser("tok", doctor.Check("test user", doctor.PASS, ""), "@doc:example.org", "pw")


def test_calls_off_is_one_skip_row():
    target = doctor.Target(server_name="example.org", calls=False)
    assert [(c.name, c.status) for c in doctor_calls.check_calls(target, "http://127.0.0.1:1", _user(), set())] \
        == [("calls", doctor.SKIP)]


def test_nothing_announced_and_nothing_expected_is_one_skip_row(loopback_http):
    base = _json_server(loopback_http, {"/.well-known/matrix/client": (200, {"m.homeserver": {"base_url": "x"}})})
    target = doctor.Target(server_name="example.org", well_known_url=base)
    checks = doctor_calls.check_calls(target, base, _user(), set())
    assert [(c.name, c.status) for c in checks] == [("calls", doctor.SKIP)]
    assert "neither the well-known nor Synapse" in checks[0].detail


def test_expected_calls_without_foci_or_transports_fail_with_hints(loopback_http):
    base = _json_server(loopback_http, {"/.well-known/matrix/client": (200, {"m.homeserver": {"base_url": "x"}})})
    target = doctor.Target(server_name="example.org", well_known_url=base, calls=True)
    checks = {c.name: c for c in doctor_calls.check_calls(target, base, _user(), set())}
    assert checks["well-known rtc_foci"].status == doctor.FAIL
    assert "org.matrix.msc4143.rtc_foci" in checks["well-known rtc_foci"].hint
    assert (checks["rtc transports"].status, checks["rtc transports"].detail) == (doctor.FAIL, "HTTP 404 M_UNRECOGNIZED")
    assert "msc4143_enabled" in checks["rtc transports"].hint
    assert checks["livekit signalling"].status == doctor.SKIP and checks["livekit media"].status == doctor.SKIP


def test_foci_that_differ_from_the_stack_fail(loopback_http):
    other = "https://rtc.elsewhere.org/livekit/jwt"
    base = _json_server(loopback_http, {
        "/.well-known/matrix/client": (200, {"org.matrix.msc4143.rtc_foci": [{"type": "livekit", "livekit_service_url": other}]}),
        doctor_calls.TRANSPORTS_PATH: (200, {"rtc_transports": [{"type": "livekit", "livekit_service_url": SERVICE}]}),
    })
    target = doctor.Target(server_name="example.org", well_known_url=base,
                           rtc_transports=[{"type": "livekit", "livekit_service_url": SERVICE}])
    foci, urls = doctor_calls.check_well_known_foci(target, doctor_calls.expected_service_urls(target))
    assert (foci.status, urls) == (doctor.FAIL, [other]) and f"{other} != the stack's {SERVICE}" in foci.detail
    transports, urls = doctor_calls.check_rtc_transports(target, base, "tok", [SERVICE])
    assert (transports.status, transports.detail, urls) == (doctor.PASS, SERVICE, [SERVICE])


@pytest.mark.parametrize("status, body, detail, hint", [
    (401, {"errcode": "M_UNAUTHORIZED", "error": "The request could not be authorised."},
     "HTTP 401 M_UNAUTHORIZED: The request could not be authorised.", "could not confirm the OpenID token"),
    (500, {"errcode": "M_UNKNOWN", "error": "Unable to create room on SFU"},
     "HTTP 500 M_UNKNOWN: Unable to create room on SFU", "its key file differs from LiveKit's"),
    (502, "Bad Gateway", 'HTTP 502: "Bad Gateway"', "Traefik cannot reach lk-jwt-service"),
])
def test_token_refusals_get_their_hint(loopback_http, status, body, detail, hint):
    base = _json_server(loopback_http, {
        "/_matrix/client/v3/user/%40doc%3Aexample.org/openid/request_token": OPENID, "/get_token": (status, body)})
    check, access = doctor_calls.check_token(doctor.Target(server_name="example.org"), base, _user(), base)
    assert (check.status, check.detail, access) == (doctor.FAIL, detail, None)
    assert hint in check.hint


def test_a_token_for_the_wrong_room_fails(loopback_http):
    """An answer whose JWT names another room than the one lk-jwt-service derives from our request."""
    jwt = _jwt({"video": {"roomJoin": True, "room": "elsewhere"}, "sub": "x", "iss": "k", "exp": time.time() + 600})
    base = _json_server(loopback_http, {
        "/_matrix/client/v3/user/%40doc%3Aexample.org/openid/request_token": OPENID,
        "/get_token": (200, {"url": "wss://rtc.example.org/livekit/sfu", "jwt": jwt})})
    check, access = doctor_calls.check_token(doctor.Target(server_name="example.org"), base, _user(), base)
    assert check.status == doctor.FAIL and "names room 'elsewhere'" in check.detail and access is None


@pytest.mark.parametrize("status, hint", [(502, "Traefik cannot reach lk-jwt-service"),
                                          (404, "Traefik must route 127.0.0.1 to lk-jwt-service"),
                                          (500, "lk-jwt-service answered an error")])
def test_service_health_hints(loopback_http, status, hint):
    base = _json_server(loopback_http, {"/healthz": (status, {})})
    check = doctor_calls.check_service_health(doctor.Target(server_name="example.org"), base)
    assert (check.status, check.detail, hint in check.hint) == (doctor.FAIL, f"HTTP {status} on /healthz", True)


def test_service_health_passes_on_200(loopback_http):
    base = _json_server(loopback_http, {"/healthz": (200, {})})
    check = doctor_calls.check_service_health(doctor.Target(server_name="example.org"), base)
    assert (check.name, check.status) == (f"lk-jwt-service {base}", doctor.PASS)


# -- what doctor reads from the stack --------------------------------------------------------------

def test_the_stack_says_whether_calls_are_on(doctor_target, monkeypatch):
    on = {"serverName": "example.org", "rtcTransports": [{"type": "livekit", "livekit_service_url": SERVICE}],
          "livekitUrl": "wss://rtc.example.org/livekit/sfu", "livekitMediaPorts": "49193-49200"}
    target = doctor_target(on, stack="prod")
    assert (target.calls, doctor_calls.expected_service_urls(target)) == (True, [SERVICE])
    assert (target.livekit_url, target.livekit_media_ports) == ("wss://rtc.example.org/livekit/sfu", (49193, 49200))
    assert doctor_target({"serverName": "example.org", "rtcTransports": [], "livekitUrl": None}, stack="prod").calls is False
    assert doctor_target({"serverName": "example.org"}, stack="prod").calls is None  # an older stack: as announced
    assert doctor_target(on, stack="prod", no_calls=True).calls is False
    monkeypatch.setenv("COMMSTACK_LIVEKIT_TOKEN", "from-env")
    assert doctor_target(on, stack="prod", livekit_token="from-flag").livekit_token == "from-env"


def test_a_livekit_url_that_is_not_websocket_is_refused(doctor_target):
    with pytest.raises(doctor.AdminError, match="--livekit-url 'https://rtc.example.org/' is not a ws"):
        doctor_target(server_name="example.org", livekit_url="https://rtc.example.org/")
