"""A MatrixRTC client for the loopback tests and the bench, as Element Call does it:
a Matrix OpenID token from Synapse, a LiveKit token for it from lk-jwt-service (or minted with
livekit-api from the program's key file), then LiveKit's real-time SDK (PyPI `livekit`) in the room.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import struct
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Optional

import requests
from livekit import api, rtc

from commstack.operations.admin import register_user

SAMPLE_RATE = 48000
FRAME_SAMPLES = 480  # 10 ms
TONE_HZ = 440


def new_user(harness, name: str) -> tuple[str, str]:
    """A fresh real Matrix user on the harness's Synapse: (user_id, access_token)."""
    secret = harness.rendered.yaml("synapse", "/data/homeserver.yaml")["registration_shared_secret"]
    password = secrets.token_urlsafe(18)
    user_id = register_user(harness.synapse_url, secret, f"{name}-{secrets.token_hex(3)}", password, admin=False)
    login = requests.post(f"{harness.synapse_url}/_matrix/client/v3/login", timeout=10, json={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user_id}, "password": password})
    login.raise_for_status()
    return user_id, login.json()["access_token"]


def openid_token(base_url: str, user_id: str, access_token: str) -> dict:
    """POST /_matrix/client/v3/user/{userId}/openid/request_token: what Element Call sends on."""
    response = requests.post(f"{base_url}/_matrix/client/v3/user/{user_id}/openid/request_token", json={},
                             headers={"Authorization": f"Bearer {access_token}"}, timeout=10)
    response.raise_for_status()
    return response.json()


def sfu_request(openid: dict, room_id: str, user_id: str, device_id: str = "DEVICE") -> dict:
    """lk-jwt-service's /get_token body (its SFURequest: room, slot, OpenID token, member)."""
    return {"room_id": room_id, "slot_id": "m.call#ROOM", "openid_token": openid,
            "member": {"id": secrets.token_hex(8), "claimed_user_id": user_id, "claimed_device_id": device_id}}


def get_token(service_url: str, body: dict, session: Optional[requests.Session] = None) -> requests.Response:
    return (session or requests).post(f"{service_url}/get_token", json=body, timeout=20)


def key_pair(key_file_text: str) -> tuple[str, str]:
    """The program's LiveKit key file (`key: secret`)."""
    key, _, secret = key_file_text.partition(":")
    return key.strip(), secret.strip()


def mint_token(key: str, secret: str, room: str, identity: str, ttl_seconds: int = 600) -> str:
    """A LiveKit join token minted with livekit-api from the program's own key and secret."""
    return (api.AccessToken(key, secret).with_identity(identity).with_ttl(timedelta(seconds=ttl_seconds))
            .with_grants(api.VideoGrants(room_join=True, room=room, can_publish=True, can_subscribe=True))
            .to_jwt())


def tone_frame(index: int) -> rtc.AudioFrame:
    samples = [int(12000 * math.sin(2 * math.pi * TONE_HZ * (index * FRAME_SAMPLES + n) / SAMPLE_RATE))
               for n in range(FRAME_SAMPLES)]
    return rtc.AudioFrame(struct.pack(f"<{FRAME_SAMPLES}h", *samples), SAMPLE_RATE, 1, FRAME_SAMPLES)


@dataclass
class CallResult:
    data_received: list[bytes] = field(default_factory=list)
    audio_frames: int = 0
    audio_peak: int = 0
    # (address, port, candidate type) of every remote (LiveKit-side) candidate both clients saw.
    remote_candidates: set[tuple[str, int, int]] = field(default_factory=set)
    join_seconds: float = 0.0


async def _remote_candidates(room: rtc.Room) -> set[tuple[str, int, int]]:
    stats = await room.get_rtc_stats()
    found = set()
    for entry in [*stats.publisher_stats, *stats.subscriber_stats]:
        if entry.HasField("remote_candidate"):
            c = entry.remote_candidate.candidate
            found.add((c.address, c.port, c.candidate_type))
    return found


async def call(url: str, token_a: str, token_b: str, *, audio: bool = True, timeout: float = 20.0,
               relay_only: bool = False) -> CallResult:
    """Two clients join the same room through the SFU; A sends data (and a 440 Hz tone), B receives."""
    result = CallResult()
    options = rtc.RoomOptions(auto_subscribe=True)
    if relay_only:
        options = rtc.RoomOptions(auto_subscribe=True, rtc_config=rtc.RtcConfiguration(
            ice_transport_type=rtc.IceTransportType.TRANSPORT_RELAY))
    a, b = rtc.Room(), rtc.Room()
    got_data, got_audio = asyncio.Event(), asyncio.Event()
    audio_tasks: list[asyncio.Task] = []

    @b.on("data_received")
    def _on_data(packet: rtc.DataPacket) -> None:
        result.data_received.append(bytes(packet.data))
        got_data.set()

    async def _read(track: rtc.Track) -> None:
        async for event in rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1):
            pcm = memoryview(event.frame.data).cast("B").cast("h")
            peak = max((abs(s) for s in pcm), default=0)
            result.audio_frames += 1
            result.audio_peak = max(result.audio_peak, peak)
            if result.audio_frames >= 20 and result.audio_peak > 1000:
                got_audio.set()
                return

    @b.on("track_subscribed")
    def _on_track(track: rtc.Track, *_args) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            audio_tasks.append(asyncio.ensure_future(_read(track)))

    started = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(a.connect(url, token_a, options), b.connect(url, token_b, options)),
                               timeout)
        result.join_seconds = time.perf_counter() - started
        if audio:
            source = rtc.AudioSource(SAMPLE_RATE, 1)
            track = rtc.LocalAudioTrack.create_audio_track("tone", source)
            await a.local_participant.publish_track(
                track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
        deadline = time.monotonic() + timeout
        frame = 0
        while time.monotonic() < deadline and not (got_data.is_set() and (got_audio.is_set() or not audio)):
            if not got_data.is_set():
                await a.local_participant.publish_data(b"hello through the SFU", reliable=True, topic="commstack")
            if audio:
                for _ in range(5):
                    await source.capture_frame(tone_frame(frame))
                    frame += 1
            await asyncio.sleep(0.05)
        result.remote_candidates = await _remote_candidates(a) | await _remote_candidates(b)
    finally:
        for task in audio_tasks:
            task.cancel()
        await asyncio.gather(a.disconnect(), b.disconnect(), return_exceptions=True)
    return result


async def join_both(url: str, token_a: str, token_b: str, timeout: float = 20.0) -> float:
    """Seconds until both clients are connected to the room (for the bench)."""
    a, b = rtc.Room(), rtc.Room()
    started = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(a.connect(url, token_a), b.connect(url, token_b)), timeout)
        return time.perf_counter() - started
    finally:
        await asyncio.gather(a.disconnect(), b.disconnect(), return_exceptions=True)


def signalling_status(port: int, host: str, cafile: str, token: str) -> bytes:
    """The status line of LiveKit's signalling WebSocket upgrade (`/livekit/sfu/rtc?access_token=…`)
    through Traefik on loopback `port`, TLS verified for `host` against `cafile`."""
    import base64
    import socket
    import ssl

    context = ssl.create_default_context(cafile=cafile)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall((f"GET /livekit/sfu/rtc?access_token={token}&protocol=16 HTTP/1.1\r\nHost: {host}\r\n"
                         "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                         f"Sec-WebSocket-Key: {base64.b64encode(secrets.token_bytes(16)).decode()}\r\n\r\n").encode())
            return tls.recv(4096).split(b"\r\n", 1)[0]

