"""A minimal MatrixRTC media probe for `doctor`: join LiveKit over its signalling WebSocket, offer a
data-channel-only peer connection, and run one ICE connectivity check against the media port
LiveKit answers with.

Why not a bare STUN binding request: LiveKit's media port is a pion/ice UDP mux
(livekit/mediatransportutil pkg/rtcconfig webrtc_config.go, CreateUDPMuxesFromPorts), and the mux
routes a STUN packet from an unknown address only by the ufrag in its USERNAME attribute; one
without USERNAME, or with a ufrag of no live session, is dropped without an answer
(pion/ice v4.4.0 udp_mux.go, connWorker). So a real check needs ICE credentials: LiveKit's
ufrag and password from an SDP answer, which needs a join token and an offer. That is what this
does, without DTLS, SCTP or any media: WebSocket (RFC 6455), LiveKit's signalling protobufs
(PyPI livekit-protocol), an SDP offer (RFC 8866, JSEP RFC 8829), then one STUN Binding request
with ICE attributes (RFC 8445 §7.1.2, short-term credentials RFC 8489 §9.1, FINGERPRINT §14.7).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import socket
import ssl
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import quote, urlsplit

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# The signalling protocol version LiveKit's own SDKs speak (v16: ICE lite, prflx candidates).
PROTOCOL_VERSION = 16

_MAGIC = 0x2112A442
_BINDING_REQUEST, _BINDING_SUCCESS, _BINDING_ERROR = 0x0001, 0x0101, 0x0111
_USERNAME, _MESSAGE_INTEGRITY, _ERROR_CODE = 0x0006, 0x0008, 0x0009
_XOR_MAPPED_ADDRESS, _PRIORITY, _FINGERPRINT, _ICE_CONTROLLING = 0x0020, 0x0024, 0x8028, 0x802A
_FINGERPRINT_XOR = 0x5354554E


class SignallingError(Exception):
    """LiveKit (or what stands in front of it) refused the signalling connection."""

    def __init__(self, message: str, status: Optional[int] = None, body: str = ""):
        super().__init__(message)
        self.status = status
        self.body = body


# -- WebSocket (RFC 6455), client side, just enough for LiveKit's binary signalling -------------


class WebSocket:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""

    def _read(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise SignallingError("the signalling connection was closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def send(self, payload: bytes, opcode: int = 0x2) -> None:
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def receive(self) -> bytes:
        """The next data message (binary or text); answers pings, raises on close."""
        message = b""
        while True:
            first, second = self._read(2)
            opcode, length = first & 0x0F, second & 0x7F
            if length == 126:
                length = struct.unpack("!H", self._read(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self._read(8))[0]
            mask = self._read(4) if second & 0x80 else b""
            payload = self._read(length)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                raise SignallingError(f"LiveKit closed the signalling connection ({code} "
                                      f"{payload[2:].decode(errors='replace')})".replace(" )", ")"))
            if opcode == 0x9:
                self.send(payload, opcode=0xA)
                continue
            if opcode == 0xA:
                continue
            message += payload
            if first & 0x80:
                return message

    def close(self) -> None:
        try:
            self.send(struct.pack("!H", 1000), opcode=0x8)
        except OSError:
            pass
        self.sock.close()


def websocket_accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def open_websocket(address: tuple[str, int], url: str, *, tls_context: Optional[ssl.SSLContext],
                   timeout: float = 10) -> WebSocket:
    """Opens `url` (ws:// or wss://) at `address`, keeping the URL's host in SNI and Host."""
    parts = urlsplit(url)
    raw = socket.create_connection(address, timeout=timeout)
    try:
        sock = tls_context.wrap_socket(raw, server_hostname=parts.hostname) if parts.scheme == "wss" else raw
        key = base64.b64encode(os.urandom(16)).decode()
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        sock.sendall((f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise SignallingError("the connection closed during the WebSocket upgrade")
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode(errors="replace").split("\r\n")
        status = int(status_line.split(" ")[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
        if status != 101:
            length = int(headers.get("content-length", "0") or 0)
            body = rest
            while len(body) < min(length, 4096):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                body += chunk
            raise SignallingError(f"HTTP {status} instead of a WebSocket upgrade", status,
                                  body.decode(errors="replace").strip())
        if headers.get("sec-websocket-accept") != websocket_accept(key):
            raise SignallingError("the WebSocket upgrade answered with a wrong Sec-WebSocket-Accept", status)
        ws = WebSocket(sock)
        ws.buffer = rest
        return ws
    except BaseException:
        raw.close()
        raise


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


def join_and_offer(ws: WebSocket, linger: float = 0.5, timeout: float = 10) -> Join:
    """Reads the JoinResponse, sends a publisher offer, and collects LiveKit's answer and the
    candidates it trickles for it (until `linger` seconds pass without a new one, once it has one)."""
    from livekit.protocol import rtc as signal

    deadline = time.monotonic() + timeout
    ws.sock.settimeout(timeout)
    response = signal.SignalResponse.FromString(ws.receive())
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
        ws.sock.settimeout(max(0.05, until - time.monotonic()))
        try:
            message = signal.SignalResponse.FromString(ws.receive())
        except socket.timeout:
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


def _attribute(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + b"\x00" * (-len(value) % 4)


def ice_binding_request(remote: IceCredentials, local: IceCredentials, transaction: bytes) -> bytes:
    """A STUN Binding request as an ICE controlling agent sends it (RFC 8445 §7.1.2): USERNAME
    `remote:local`, PRIORITY, ICE-CONTROLLING, MESSAGE-INTEGRITY keyed with the remote password,
    FINGERPRINT."""
    priority = (110 << 24) | (65535 << 8) | 255  # a peer-reflexive candidate's priority
    body = (_attribute(_USERNAME, f"{remote.ufrag}:{local.ufrag}".encode())
            + _attribute(_PRIORITY, struct.pack("!I", priority))
            + _attribute(_ICE_CONTROLLING, secrets.token_bytes(8)))
    header = struct.pack("!HHI", _BINDING_REQUEST, len(body) + 24, _MAGIC) + transaction
    body += _attribute(_MESSAGE_INTEGRITY, hmac.new(remote.pwd.encode(), header + body, hashlib.sha1).digest())
    header = struct.pack("!HHI", _BINDING_REQUEST, len(body) + 8, _MAGIC) + transaction
    crc = (zlib.crc32(header + body) ^ _FINGERPRINT_XOR) & 0xFFFFFFFF
    return header + body + _attribute(_FINGERPRINT, struct.pack("!I", crc))


@dataclass
class IceResult:
    ok: bool
    detail: str
    refused: bool = False  # ICMP port unreachable: nothing listens there
    answered: bool = False  # any STUN answer came back


def _parse(data: bytes) -> tuple[int, bytes, dict[int, bytes]]:
    method, length, magic = struct.unpack("!HHI", data[:8])
    attributes, offset = {}, 20
    while offset + 4 <= min(len(data), 20 + length):
        kind, size = struct.unpack("!HH", data[offset:offset + 4])
        attributes.setdefault(kind, data[offset + 4:offset + 4 + size])
        offset += 4 + size + (-size % 4)
    return method, data[8:20], attributes


def _xor_mapped(value: bytes) -> str:
    port = struct.unpack("!H", value[2:4])[0] ^ (_MAGIC >> 16)
    if value[1] == 1:
        address = socket.inet_ntoa(struct.pack("!I", struct.unpack("!I", value[4:8])[0] ^ _MAGIC))
        return f"{address}:{port}"
    return f"[ipv6]:{port}"


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
            if len(data) < 20 or data[8:20] != transaction:
                continue
            method, _, attributes = _parse(data)
            if method == _BINDING_SUCCESS:
                mapped = _xor_mapped(attributes[_XOR_MAPPED_ADDRESS]) if _XOR_MAPPED_ADDRESS in attributes else "?"
                return IceResult(True, f"ICE check answered (sees us as {mapped})", answered=True)
            if method == _BINDING_ERROR and _ERROR_CODE in attributes:
                raw = attributes[_ERROR_CODE]
                return IceResult(False, f"STUN error {raw[2] * 100 + raw[3]} {raw[4:].decode(errors='replace')}",
                                 answered=True)
            return IceResult(False, f"unexpected STUN method {method:#06x}", answered=True)
    except OSError as exc:
        return IceResult(False, f"cannot send: {exc}")
    finally:
        sock.close()
    return IceResult(False, f"no answer to {attempts} ICE checks in {attempts * wait:.0f} s")
