"""A minimal MatrixRTC media probe for `doctor`: join LiveKit over its signalling WebSocket, offer a
data-channel-only peer connection, and run one ICE connectivity check against the media port
LiveKit answers with.

Why not a bare STUN binding request: LiveKit's media port is a pion/ice UDP mux
(livekit/mediatransportutil pkg/rtcconfig webrtc_config.go, CreateUDPMuxesFromPorts), and the mux
routes a STUN packet from an unknown address only by the ufrag in its USERNAME attribute; one
without USERNAME, or with a ufrag of no live session, is dropped without an answer
(pion/ice v4.4.0 udp_mux.go, connWorker). So a real check needs ICE credentials: LiveKit's
ufrag and password from an SDP answer, which needs a join token and an offer. That is what this
does, without DTLS, SCTP or any media: a WebSocket (RFC 6455, PyPI `websockets`), LiveKit's
signalling protobufs (PyPI `livekit-protocol`), an SDP offer (RFC 8866, JSEP RFC 8829), then one
STUN Binding request with ICE attributes (RFC 8445 §7.1.2) built by PyPI `aioice`'s STUN module:
short-term credentials (RFC 8489 §9.1), MESSAGE-INTEGRITY and FINGERPRINT (§14.5, §14.7).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import quote

from aioice import stun
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidHeader, InvalidStatus
from websockets.sync.client import ClientConnection, connect

# The signalling protocol version LiveKit's own SDKs speak (v16: ICE lite, prflx candidates).
PROTOCOL_VERSION = 16
# LiveKit's signalling messages are small protobufs; a bound keeps a hostile peer from filling memory.
MAX_SIGNALLING_MESSAGE = 4 * 2**20


class SignallingError(Exception):
    """LiveKit (or what stands in front of it) refused the signalling connection."""

    def __init__(self, message: str, status: Optional[int] = None, body: str = ""):
        super().__init__(message)
        self.status = status
        self.body = body


# -- the signalling WebSocket --------------------------------------------------------------------


class Signalling:
    """LiveKit's signalling WebSocket: binary protobuf messages each way."""

    def __init__(self, connection: ClientConnection):
        self.connection = connection

    def send(self, payload: bytes) -> None:
        try:
            self.connection.send(payload)
        except ConnectionClosed as exc:
            raise _closed(exc) from None

    def receive(self, timeout: Optional[float] = None) -> bytes:
        """The next message; TimeoutError when none comes in `timeout` seconds, SignallingError
        when LiveKit closes the connection."""
        try:
            message = self.connection.recv(timeout=timeout)
        except ConnectionClosed as exc:
            raise _closed(exc) from None
        return message.encode() if isinstance(message, str) else message

    def close(self) -> None:
        self.connection.close()


def _closed(exc: ConnectionClosed) -> SignallingError:
    close = exc.rcvd
    detail = f"{close.code} {close.reason}".strip() if close is not None else "no close frame"
    return SignallingError(f"LiveKit closed the signalling connection ({detail})")


def open_websocket(address: tuple[str, int], url: str, *, tls_context: Optional[ssl.SSLContext],
                   timeout: float = 10) -> Signalling:
    """Opens `url` (ws:// or wss://) at `address`, keeping the URL's host in SNI and Host."""
    raw = socket.create_connection(address, timeout=timeout)
    try:
        # One short join: no compression, keepalive pings or proxy.
        connection = connect(url, sock=raw, ssl=tls_context if url.startswith("wss:") else None, compression=None,
                             proxy=None, open_timeout=timeout, ping_interval=None, max_size=MAX_SIGNALLING_MESSAGE,
                             legacy=True)  # the connection itself: Signalling.close ends it
    except InvalidStatus as exc:
        raw.close()
        body = exc.response.body or b""
        raise SignallingError(f"HTTP {exc.response.status_code} instead of a WebSocket upgrade",
                              exc.response.status_code, body[:4096].decode(errors="replace").strip()) from None
    except InvalidHeader as exc:
        raw.close()
        if (exc.name or "").lower() == "sec-websocket-accept":
            raise SignallingError("the WebSocket upgrade answered with a wrong Sec-WebSocket-Accept", 101) from None
        raise SignallingError(f"the WebSocket upgrade failed: {exc}") from None
    except InvalidHandshake as exc:
        raw.close()
        raise SignallingError(f"the WebSocket upgrade failed: {exc}") from None
    except BaseException:
        raw.close()
        raise
    return Signalling(connection)


def rtc_url(livekit_url: str, token: str) -> str:
    """LiveKit's signalling endpoint under the (wss) URL lk-jwt-service hands out (`<url>/rtc`)."""
    return f"{livekit_url.rstrip('/')}/rtc?access_token={quote(token)}&protocol={PROTOCOL_VERSION}&auto_subscribe=0"


# -- SDP -------------------------------------------------------------------------------------------


@dataclass
class IceCredentials:
    ufrag: str
    pwd: str


@dataclass
class Candidate:
    address: str
    port: int
    protocol: str  # udp | tcp
    kind: str  # host | srflx | prflx | relay

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}/{self.protocol}"


def data_channel_offer(credentials: IceCredentials) -> str:
    """An offer with one SCTP data-channel section and no candidates (we are the ICE controller
    and send the checks ourselves). The fingerprint is never used: no DTLS follows."""
    fingerprint = ":".join(f"{b:02X}" for b in hashlib.sha256(credentials.pwd.encode()).digest())
    return "\r\n".join([
        "v=0", f"o=- {secrets.randbelow(2**62)} 2 IN IP4 127.0.0.1", "s=-", "t=0 0",
        "a=group:BUNDLE 0", "a=extmap-allow-mixed", "a=msid-semantic: WMS",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "c=IN IP4 0.0.0.0",
        f"a=ice-ufrag:{credentials.ufrag}", f"a=ice-pwd:{credentials.pwd}", "a=ice-options:trickle",
        f"a=fingerprint:sha-256 {fingerprint}", "a=setup:actpass", "a=mid:0",
        "a=sctp-port:5000", "a=max-message-size:262144", "",
    ])


def parse_candidate(line: str) -> Optional[Candidate]:
    """`candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type> ...`
    (RFC 8839 §5.1), with or without the `a=` prefix."""
    text = line.strip()
    for prefix in ("a=", "candidate:"):
        text = text[len(prefix):] if text.startswith(prefix) else text
    fields = text.split()
    if len(fields) < 8 or fields[6] != "typ" or not fields[5].isdigit():
        return None
    return Candidate(fields[4], int(fields[5]), fields[2].lower(), fields[7])


def parse_answer(sdp: str) -> tuple[Optional[IceCredentials], list[Candidate]]:
    ufrag = pwd = None
    candidates = []
    for line in sdp.splitlines():
        if line.startswith("a=ice-ufrag:") and ufrag is None:
            ufrag = line.split(":", 1)[1].strip()
        elif line.startswith("a=ice-pwd:") and pwd is None:
            pwd = line.split(":", 1)[1].strip()
        elif line.startswith("a=candidate:"):
            candidate = parse_candidate(line)
            if candidate is not None:
                candidates.append(candidate)
    return (IceCredentials(ufrag, pwd) if ufrag and pwd else None), candidates


# -- the join --------------------------------------------------------------------------------------


@dataclass
class Join:
    room: str
    identity: str
    server_version: str
    remote: IceCredentials
    local: IceCredentials
    candidates: list[Candidate] = field(default_factory=list)


def join_and_offer(ws: Signalling, linger: float = 0.5, timeout: float = 10) -> Join:
    """Reads the JoinResponse, sends a publisher offer, and collects LiveKit's answer and the
    candidates it trickles for it (until `linger` seconds pass without a new one, once it has one)."""
    from livekit.protocol import rtc as signal

    deadline = time.monotonic() + timeout
    try:
        response = signal.SignalResponse.FromString(ws.receive(timeout=timeout))
    except TimeoutError:
        raise SignallingError(f"LiveKit sent no join response within {timeout:.0f} s") from None
    if response.WhichOneof("message") != "join":
        raise SignallingError(f"LiveKit sent {response.WhichOneof('message')} before its join response")
    joined = response.join
    local = IceCredentials(secrets.token_hex(4), secrets.token_hex(16))
    ws.send(signal.SignalRequest(offer=signal.SessionDescription(type="offer", sdp=data_channel_offer(local), id=1))
            .SerializeToString())
    remote, candidates, last_candidate = None, [], None
    while time.monotonic() < deadline:
        until = deadline if last_candidate is None or remote is None else min(deadline, last_candidate + linger)
        if time.monotonic() >= until:
            break
        try:
            message = signal.SignalResponse.FromString(ws.receive(timeout=max(0.05, until - time.monotonic())))
        except TimeoutError:
            continue
        kind = message.WhichOneof("message")
        found = []
        if kind == "answer":
            remote, found = parse_answer(message.answer.sdp)
        elif kind == "trickle" and message.trickle.target == signal.SignalTarget.PUBLISHER:
            found = [c for c in [parse_candidate(json.loads(message.trickle.candidateInit or "{}").get("candidate", ""))]
                     if c is not None]
        if found:
            candidates += found
            last_candidate = time.monotonic()
    if remote is None:
        raise SignallingError("LiveKit joined but sent no answer to the offer")
    return Join(joined.room.name, joined.participant.identity, joined.server_version, remote, local,
                list({c.endpoint: c for c in candidates}.values()))


# -- the ICE connectivity check ---------------------------------------------------------------

# A peer-reflexive candidate's priority (RFC 8445 §5.1.2.1: type preference 110, local 65535, component 1).
PRFLX_PRIORITY = (110 << 24) | (65535 << 8) | 255


def ice_binding_request(remote: IceCredentials, local: IceCredentials, transaction: bytes) -> bytes:
    """A STUN Binding request as an ICE controlling agent sends it (RFC 8445 §7.1.2): USERNAME
    `remote:local`, PRIORITY, ICE-CONTROLLING, MESSAGE-INTEGRITY keyed with the remote password,
    FINGERPRINT."""
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, transaction_id=transaction)
    request.attributes["USERNAME"] = f"{remote.ufrag}:{local.ufrag}"
    request.attributes["PRIORITY"] = PRFLX_PRIORITY
    request.attributes["ICE-CONTROLLING"] = secrets.randbits(64)
    request.add_message_integrity(remote.pwd.encode())  # adds FINGERPRINT after it
    return bytes(request)


@dataclass
class IceResult:
    ok: bool
    detail: str
    refused: bool = False  # ICMP port unreachable: nothing listens there
    answered: bool = False  # any STUN answer came back


def _endpoint(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def ice_check(address: tuple[str, int], remote: IceCredentials, local: IceCredentials,
              attempts: int = 4, wait: float = 1.0) -> IceResult:
    """Sends the Binding request up to `attempts` times; any STUN answer for our transaction
    proves the UDP path both ways (a success also that LiveKit knew our session)."""
    sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(wait)
    try:
        sock.connect(address)
        transaction = secrets.token_bytes(12)
        request = ice_binding_request(remote, local, transaction)
        for _ in range(attempts):
            sock.send(request)
            try:
                data = sock.recv(2048)
            except socket.timeout:
                continue
            except ConnectionRefusedError:
                return IceResult(False, "port unreachable (ICMP): nothing listens there", refused=True)
            try:
                answer = stun.parse_message(data)
            except ValueError:
                continue  # not STUN, or damaged on the way
            if answer.transaction_id != transaction:
                continue
            if answer.message_method != stun.Method.BINDING:
                return IceResult(False, f"unexpected STUN {answer.message_method.name} answer", answered=True)
            if answer.message_class == stun.Class.RESPONSE:
                mapped = answer.attributes.get("XOR-MAPPED-ADDRESS")
                return IceResult(True, f"ICE check answered (sees us as {_endpoint(mapped) if mapped else '?'})",
                                 answered=True)
            if answer.message_class == stun.Class.ERROR and "ERROR-CODE" in answer.attributes:
                code, reason = answer.attributes["ERROR-CODE"]
                return IceResult(False, f"STUN error {code} {reason}", answered=True)
            return IceResult(False, f"unexpected STUN {answer.message_class.name.lower()} to a Binding request",
                             answered=True)
    except OSError as exc:
        return IceResult(False, f"cannot send: {exc}")
    finally:
        sock.close()
    return IceResult(False, f"no answer to {attempts} ICE checks in {attempts * wait:.0f} s")
