"""The live half of `python -m commstack bench`: call setup and message round trips on the
loopback harness, with the real programs (Synapse, nginx, Traefik, LiveKit, lk-jwt-service).

    python -m tests.integration.live_bench --joins 20 --messages 50 --json

boots the harness once, measures, prints the raw samples as JSON (commstack/devtools/bench.py turns them
into p50/p95) and shuts everything down.

Call setup, per join: two fresh users each ask Synapse for an OpenID token and lk-jwt-service for
a LiveKit token, both through Traefik on 443 (the public URLs Element Call uses), then connect
LiveKit's SDK to the room; a join ends when each client sees the other in the room. The SDK
connects to LiveKit's loopback port itself: it cannot be pointed at Traefik under the public
name here (no DNS for it). Without lk-jwt-service (it cannot be built in CI, see calls_backend)
the join is measured from tokens minted with livekit-api instead, and labelled so.

Message round trip: one user sends (PUT …/send/m.room.message) while the other long-polls
/sync; a sample is the time from the send until the other's /sync returns the event. Through
the chain (https://matrix.<domain> on Traefik's 443 with TLS -> nginx -> Synapse, as production
routes it) and direct to Synapse's client listener, interleaved, on kept-alive connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import requests
from livekit import rtc

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.integration import calls_backend, rtc_client  # noqa: E402
from tests.integration.loopback import LOOPBACK  # noqa: E402

LIVEKIT_KEYS = "/etc/livekit/keys.yaml"
HOMESERVER = "/data/homeserver.yaml"
JOIN_TIMEOUT = 20.0
SYNC_TIMEOUT_MS = 10000
# Only the bench room's timeline: presence, receipts and account data would end a long poll early.
SYNC_FILTER = json.dumps({
    "presence": {"not_types": ["*"]},
    "account_data": {"not_types": ["*"]},
    "room": {"timeline": {"limit": 20}, "state": {"not_types": ["*"]}, "ephemeral": {"not_types": ["*"]},
             "account_data": {"not_types": ["*"]}},
}, separators=(",", ":"))
PATHS = ("chain", "direct")


def _homeserver(harness) -> dict:
    return harness.rendered.yaml("synapse", HOMESERVER)


def _public_baseurl(harness) -> str:
    return _homeserver(harness)["public_baseurl"].rstrip("/")


def _lk_jwt_public_url(harness) -> str:
    return _homeserver(harness)["matrix_rtc"]["transports"][0]["livekit_service_url"].rstrip("/")


# -- call setup ------------------------------------------------------------------------------------


async def _meet(url: str, tokens: list[asyncio.Future], timeout: float, parts: dict) -> list[str]:
    """Each client connects as soon as its token is there; returns their identities once each
    client sees every other one in the room."""
    rooms = [rtc.Room() for _ in tokens]
    try:
        async def connect(room: rtc.Room, token: asyncio.Future) -> None:
            token = await token
            started = time.perf_counter()
            await room.connect(url, token)
            connected = time.perf_counter()
            # A microphone track, as Element Call publishes on joining. LiveKit tells the others
            # of a participant that publishes nothing only in its 3 s batch (v1.13.5
            # pkg/rtc/room.go, subscriberUpdateInterval), of a publisher at once.
            source = rtc.AudioSource(rtc_client.SAMPLE_RATE, 1)
            await room.local_participant.publish_track(
                rtc.LocalAudioTrack.create_audio_track("microphone", source),
                rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
            parts.setdefault("connect", []).append(connected - started)
            parts.setdefault("publish", []).append(time.perf_counter() - connected)

        await asyncio.wait_for(asyncio.gather(*(connect(r, t) for r, t in zip(rooms, tokens))), timeout)
        identities = [r.local_participant.identity for r in rooms]
        deadline = time.monotonic() + timeout

        def all_see_each_other() -> bool:
            return all({i for i in identities if i != r.local_participant.identity}
                       <= set(p.identity for p in r.remote_participants.values()) for r in rooms)

        while not all_see_each_other():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the clients did not see each other within {timeout} s")
            await asyncio.sleep(0.002)
        return identities
    finally:
        await asyncio.gather(*(r.disconnect() for r in rooms), return_exceptions=True)


def _openid_token(session: requests.Session, base_url: str, user_id: str, access_token: str) -> dict:
    response = session.post(f"{base_url}/_matrix/client/v3/user/{user_id}/openid/request_token", json={},
                            headers={"Authorization": f"Bearer {access_token}"}, timeout=10)
    response.raise_for_status()
    return response.json()


def _member_token(session: requests.Session, harness, user: tuple[str, str], matrix_room: str,
                  parts: dict) -> str:
    """OpenID token from Synapse, then the LiveKit token from lk-jwt-service, both via Traefik."""
    user_id, access_token = user
    started = time.perf_counter()
    openid = _openid_token(session, _public_baseurl(harness), user_id, access_token)
    got_openid = time.perf_counter()
    response = rtc_client.get_token(_lk_jwt_public_url(harness), rtc_client.sfu_request(openid, matrix_room, user_id),
                                    session=session)
    if response.status_code != 200:
        raise RuntimeError(f"lk-jwt-service answered {response.status_code}: {response.text[:300]}")
    done = time.perf_counter()
    parts.setdefault("openid", []).append(got_openid - started)
    parts.setdefault("lk_jwt", []).append(done - got_openid)
    return response.json()["jwt"]


async def _joins_via_lk_jwt(harness, joins: int, timeout: float) -> dict:
    users = [rtc_client.new_user(harness, "bench-caller"), rtc_client.new_user(harness, "bench-callee")]
    sessions = [harness.public() for _ in users]  # one kept-alive client per user, as each phone has
    server_name = _homeserver(harness)["server_name"]
    samples, parts, seen = [], {}, []
    with ThreadPoolExecutor(max_workers=len(users)) as pool:
        loop = asyncio.get_running_loop()
        for index in range(joins):
            matrix_room = f"!bench-{index}-{secrets.token_hex(4)}:{server_name}"
            started = time.perf_counter()
            tokens = [loop.run_in_executor(pool, _member_token, session, harness, user, matrix_room, parts)
                      for session, user in zip(sessions, users)]
            identities = await _meet(harness.livekit_url, tokens, timeout, parts)
            samples.append(time.perf_counter() - started)
            seen.append(identities)
    for session in sessions:
        session.close()
    return {"mode": "lk-jwt-service", "samples": samples, "parts": parts, "identities": seen,
            "users": [user_id for user_id, _ in users]}


async def _joins_with_minted_tokens(harness, joins: int, timeout: float) -> dict:
    from livekit import api

    key, secret = rtc_client.key_pair(harness.rendered.text("livekit", LIVEKIT_KEYS))
    samples, parts, seen = [], {}, []
    async with api.LiveKitAPI(f"http://{LOOPBACK}:{harness.ports.livekit}", key, secret) as lk:
        for index in range(joins):
            room = f"bench-{index}-{secrets.token_hex(4)}"
            await lk.room.create_room(api.CreateRoomRequest(name=room, empty_timeout=60))
            started = time.perf_counter()
            tokens = [asyncio.get_running_loop().create_future() for _ in range(2)]
            for future, identity in zip(tokens, (f"bench-caller-{index}", f"bench-callee-{index}")):
                future.set_result(rtc_client.mint_token(key, secret, room, identity))
            seen.append(await _meet(harness.livekit_url, tokens, timeout, parts))
            samples.append(time.perf_counter() - started)
    return {"mode": "minted", "samples": samples, "parts": parts, "identities": seen,
            "reason": calls_backend.LK_JWT_SKIP_REASON}


def measure_joins(harness, joins: int, timeout: float = JOIN_TIMEOUT) -> dict:
    """`joins` call setups, one after another (raw seconds; bench computes the percentiles)."""
    booted = getattr(harness.calls, "lk_jwt_booted", False)
    if booted:
        return asyncio.run(_joins_via_lk_jwt(harness, joins, timeout))
    return asyncio.run(_joins_with_minted_tokens(harness, joins, timeout))


# -- message round trip ----------------------------------------------------------------------------


class _Client:
    """One user on one path, on a kept-alive connection."""

    def __init__(self, session: requests.Session, base_url: str, user: tuple[str, str]):
        self.session, self.base_url = session, base_url
        self.user_id, token = user
        self.session.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, **kwargs) -> dict:
        response = self.session.request(method, f"{self.base_url}/_matrix/client/v3{path}", timeout=30, **kwargs)
        if response.status_code != 200:
            raise RuntimeError(f"{method} {path} via {self.base_url}: {response.status_code} {response.text[:300]}")
        return response.json()


def _wait_for(receiver: _Client, room_id: str, since: str, body: str) -> tuple[float, str, str]:
    """Long-polls /sync until the message `body` is in the room's timeline: (when, event id, next since)."""
    while True:
        data = receiver.call("GET", "/sync", params={"since": since, "timeout": SYNC_TIMEOUT_MS,
                                                     "filter": SYNC_FILTER})
        since = data["next_batch"]
        events = data.get("rooms", {}).get("join", {}).get(room_id, {}).get("timeline", {}).get("events", [])
        for event in events:
            if event.get("content", {}).get("body") == body:
                return time.perf_counter(), event["event_id"], since


def measure_round_trips(harness, messages: int, warmup: int = 5) -> dict:
    """`messages` round trips on each path after `warmup` discarded ones, interleaved
    (chain, direct, direct, chain, …) so that load on the machine hits both alike."""
    sender, receiver = rtc_client.new_user(harness, "bench-sender"), rtc_client.new_user(harness, "bench-receiver")
    bases = {"chain": _public_baseurl(harness), "direct": harness.synapse_url}
    clients = {path: (_Client(harness.public() if path == "chain" else requests.Session(), bases[path], sender),
                      _Client(harness.public() if path == "chain" else requests.Session(), bases[path], receiver))
               for path in PATHS}
    setup_sender, setup_receiver = clients["direct"]
    room_id = setup_sender.call("POST", "/createRoom", json={"preset": "private_chat", "invite": [receiver[0]]})["room_id"]
    setup_receiver.call("POST", f"/join/{room_id}", json={})
    since = setup_receiver.call("GET", "/sync", params={"filter": SYNC_FILTER, "timeout": 0})["next_batch"]
    results: dict = {path: {"samples": [], "send": [], "event_ids": [], "bodies": []} for path in PATHS}
    order = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        for index in range(warmup + messages):
            for path in (PATHS if index % 2 == 0 else PATHS[::-1]):
                send, receive = clients[path]
                body = f"bench {path} {index} {secrets.token_hex(4)}"
                seen = pool.submit(_wait_for, receive, room_id, since, body)
                started = time.perf_counter()
                sent = send.call("PUT", f"/rooms/{room_id}/send/m.room.message/{secrets.token_hex(8)}",
                                 json={"msgtype": "m.text", "body": body})
                sent_at = time.perf_counter()
                seen_at, event_id, since = seen.result(timeout=60)
                if event_id != sent["event_id"]:
                    raise RuntimeError(f"the receiver saw {event_id}, the sender sent {sent['event_id']}")
                if index >= warmup:
                    results[path]["samples"].append(seen_at - started)
                    results[path]["send"].append(sent_at - started)
                    results[path]["event_ids"].append(event_id)
                    results[path]["bodies"].append(body)
                    order.append(path)
    for send, receive in clients.values():
        send.session.close()
        receive.session.close()
    return {**results, "order": order, "warmup": warmup, "room_id": room_id,
            "bases": bases, "users": [sender[0], receiver[0]]}


# -- load: the monolith and a worker preset (tests/integration/load_bench.py) ----------------------


def measure_load(harness, preset: str, senders: int, syncers: int, rooms: int, seconds: float, warmup: float,
                 rounds: int) -> dict:
    """The load phases on this harness (the monolith) and on the preset's deployment, booted beside it."""
    from tests.integration import load_bench

    deployment = load_bench.boot_preset(preset)
    try:
        return load_bench.measure(harness, deployment, preset, senders, syncers, rooms, seconds, warmup, rounds)
    finally:
        deployment.stop()


# -- the command -----------------------------------------------------------------------------------


def measure(harness, joins: int, messages: int, warmup: int, load: Optional[dict] = None) -> dict:
    report: dict = {"cold_boot_seconds": round(harness.cold_boot_seconds, 2)}
    if joins:
        report["calls"] = measure_joins(harness, joins)
    if messages:
        report["messages"] = measure_round_trips(harness, messages, warmup)
    if load:
        report["load"] = measure_load(harness, **load)
    # The machine is shared: how busy it was over the last minute of measuring.
    report["load_average"], report["cpus"] = os.getloadavg()[0], os.cpu_count()
    return report


def main(argv: Optional[list[str]] = None) -> int:
    from tests.integration.harness import render, start

    parser = argparse.ArgumentParser(prog="python -m tests.integration.live_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--joins", type=int, default=20, help="call setups to time (0: none)")
    parser.add_argument("--messages", type=int, default=50, help="round trips per path to time (0: none)")
    parser.add_argument("--warmup", type=int, default=5, help="round trips per path done first and not counted")
    parser.add_argument("--json", action="store_true", help="print the raw samples as one line of JSON")
    parser.add_argument("--load", metavar="PRESET", help="also load the monolith and this worker preset "
                                                         "(tests/integration/load_bench.py)")
    parser.add_argument("--senders", type=int, default=20)
    parser.add_argument("--syncers", type=int, default=10)
    parser.add_argument("--rooms", type=int, default=5)
    parser.add_argument("--load-seconds", type=float, default=30.0, help="measured seconds per load phase")
    parser.add_argument("--load-warmup", type=float, default=5.0, help="unmeasured seconds before each phase")
    parser.add_argument("--load-rounds", type=int, default=1, help="monolith and preset phases, alternating")
    args = parser.parse_args(argv)
    load = None
    if args.load:
        load = {"preset": args.load, "senders": args.senders, "syncers": args.syncers, "rooms": args.rooms,
                "seconds": args.load_seconds, "warmup": args.load_warmup, "rounds": args.load_rounds}
    started = time.perf_counter()
    harness = start(render())
    booted = time.perf_counter() - started
    try:
        report = {"boot_wall_seconds": round(booted, 2),
                  **measure(harness, args.joins, args.messages, args.warmup, load)}
    finally:
        harness.stop()
    print(json.dumps(report) if args.json else json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
