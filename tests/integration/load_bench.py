"""Load through the whole chain (`python -m commstack bench --load`): N senders and M users
long-polling /sync, through Traefik (443, TLS), nginx and Synapse, on the monolith and on a worker
preset, on one machine in one run.

    python -m tests.integration.load_bench --senders 20 --syncers 10 --seconds 30 --json

boots the harness's Matrix core twice (the test stack as it is, and with commstack:synapseWorkers;
tests/integration/harness.py), loads each in turn (monolith, preset, and again for each further
round, so that the shared machine's other load hits both alike) and prints the raw figures as JSON;
commstack/bench.py turns them into the table and the ratio.

Each phase: `rooms` public rooms; every sender joins one (round robin) and every syncer all of them.
Senders send back to back (each waits for its own answer); syncers long-poll /sync with a filter
that keeps only the rooms' timelines. A message counts as persisted when the sender's PUT answered
200 with its event ID inside the measured window (after `warmup` seconds), and as delivered once
per syncer whose /sync returned it inside the window; send-to-sync is from just before the PUT to
the /sync response that carried it. CPU is each process's user+system time over the window
(/proc/<pid>/stat), the Postgres backends summed under `postgres`, the load generator's own too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import ssl
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from urllib.parse import quote, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from commstack.operations.admin import register_user  # noqa: E402
from tests.integration.loopback import LOOPBACK  # noqa: E402

DEFAULT_SENDERS = 20
DEFAULT_SYNCERS = 10
DEFAULT_ROOMS = 5
DEFAULT_SECONDS = 30.0
DEFAULT_WARMUP = 5.0
SYNC_TIMEOUT_MS = 10000
REQUEST_TIMEOUT = 60
# Only the load rooms' timelines; room for every message of a busy long poll.
SYNC_FILTER = json.dumps({
    "presence": {"not_types": ["*"]}, "account_data": {"not_types": ["*"]},
    "room": {"timeline": {"limit": 1000}, "state": {"not_types": ["*"]}, "ephemeral": {"not_types": ["*"]},
             "account_data": {"not_types": ["*"]}},
}, separators=(",", ":"))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class _ToTraefik(AbstractResolver):
    """Every public host name -> the harness's Traefik (curl's --connect-to, for aiohttp)."""

    def __init__(self, port: int):
        self.port = port

    async def resolve(self, host: str, port: int = 0, family: int = 0):
        return [{"hostname": host, "host": LOOPBACK, "port": self.port, "family": 2, "proto": 0, "flags": 0}]

    async def close(self) -> None:
        pass


# -- CPU per process --------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14 and 15)


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def process_groups(harness) -> dict[str, list[int]]:
    """Each harness process of the Matrix core, by name: Synapse's (main and workers), Postgres with its
    backends, Redis, nginx with its workers, Traefik."""
    groups: dict[str, list[int]] = {}
    wanted = {"synapse", "postgres", "nginx", "proxy", "synapse-redis", *harness.workers}
    for service in harness.services:
        if service.name in wanted and service.process.poll() is None:
            pid = service.process.pid
            groups[service.name] = [pid, *children(pid)] if service.name in ("postgres", "nginx") else [pid]
    return groups


def cpu_snapshot(groups: dict[str, list[int]]) -> dict[str, dict[int, float]]:
    return {name: {pid: cpu_seconds(pid) for pid in pids} for name, pids in groups.items()}


def cpu_used(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> dict[str, float]:
    return {name: sum(max(0.0, after[name].get(pid, 0.0) - start) for pid, start in pids.items())
            for name, pids in before.items()}


# -- one phase ------------------------------------------------------------------------------------


@dataclass
class Phase:
    deployment: str
    started: float = 0.0
    window: tuple[float, float] = (0.0, 0.0)
    sent_at: dict[str, float] = field(default_factory=dict)  # message id -> just before its PUT
    acked_at: dict[str, float] = field(default_factory=dict)  # message id -> its 200
    seen: list[tuple[str, int, float]] = field(default_factory=list)  # (message id, syncer, when)
    errors: list[str] = field(default_factory=list)
    prefix: str = ""  # every message body starts with it
    room_ids: list[str] = field(default_factory=list)


def _homeserver(harness) -> dict:
    return harness.rendered.yaml("synapse", "/data/homeserver.yaml")


async def _login(session: aiohttp.ClientSession, base: str, user_id: str, password: str) -> str:
    async with session.post(f"{base}/_matrix/client/v3/login", json={
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user_id},
            "password": password}) as response:
        response.raise_for_status()
        return (await response.json())["access_token"]


async def _call(session: aiohttp.ClientSession, method: str, url: str, token: str, wait_out_limits: bool = False,
                **kwargs) -> dict:
    """One request; with `wait_out_limits`, a 429 is retried after the time Synapse names (the set-up's
    joins: Synapse limits joins per room, rc_joins_per_room)."""
    while True:
        async with session.request(method, url, headers={"Authorization": f"Bearer {token}"}, **kwargs) as response:
            if response.status == 429 and wait_out_limits:
                await asyncio.sleep((await response.json()).get("retry_after_ms", 1000) / 1000)
                continue
            if response.status != 200:
                raise RuntimeError(f"{method} {url}: {response.status} {(await response.text())[:200]}")
            return await response.json()


async def run_phase(harness, name: str, senders: int, syncers: int, rooms: int, seconds: float,
                    warmup: float) -> dict:
    """Sets up users and rooms on `harness` through its chain, then loads it for warmup + seconds."""
    config = _homeserver(harness)
    base = config["public_baseurl"].rstrip("/")
    context = ssl.create_default_context(cafile=str(harness.proxy_certificate))
    connector = aiohttp.TCPConnector(resolver=_ToTraefik(harness.ports.proxy["websecure"]), ssl=context,
                                     limit=0, force_close=False)
    phase = Phase(deployment=name)
    secret = config["registration_shared_secret"]
    loop = asyncio.get_running_loop()

    def new_user(kind: str, index: int) -> tuple[str, str]:
        password = secrets.token_urlsafe(12)
        user_id = register_user(harness.synapse_url, secret, f"load-{kind}{index}-{secrets.token_hex(3)}", password,
                                admin=False)
        return user_id, password

    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        accounts = await asyncio.gather(*(loop.run_in_executor(None, new_user, kind, i)
                                          for kind, count in (("sender", senders), ("syncer", syncers))
                                          for i in range(count)))
        tokens = await asyncio.gather(*(_login(session, base, u, p) for u, p in accounts))
        sender_tokens, syncer_tokens = tokens[:senders], tokens[senders:]
        room_ids = []
        for index in range(rooms):
            created = await _call(session, "POST", f"{base}/_matrix/client/v3/createRoom", sender_tokens[index % senders],
                                  json={"preset": "public_chat", "name": f"load {index}"})
            room_ids.append(created["room_id"])
        joins = [(token, room_ids[i % rooms]) for i, token in enumerate(sender_tokens) if i >= rooms]
        joins += [(token, room) for token in syncer_tokens for room in room_ids]
        for chunk in range(0, len(joins), 10):
            await asyncio.gather(*(_call(session, "POST", f"{base}/_matrix/client/v3/join/{quote(room)}", token,
                                         wait_out_limits=True, json={}) for token, room in joins[chunk:chunk + 10]))
        first = await asyncio.gather(*(_call(session, "GET", f"{base}/_matrix/client/v3/sync", token,
                                             params={"filter": SYNC_FILTER, "timeout": "0"})
                                       for token in syncer_tokens))
        stop = asyncio.Event()
        prefix = phase.prefix = f"load-{secrets.token_hex(3)}"
        phase.room_ids = room_ids

        async def sender(index: int, token: str) -> None:
            room = quote(room_ids[index % rooms])
            sequence = 0
            while not stop.is_set():
                message = f"{prefix}-{index}-{sequence}"
                sequence += 1
                phase.sent_at[message] = time.perf_counter()
                try:
                    await _call(session, "PUT", f"{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/{message}",
                                token, json={"msgtype": "m.text", "body": message})
                    phase.acked_at[message] = time.perf_counter()
                except (aiohttp.ClientError, asyncio.TimeoutError, RuntimeError) as error:
                    phase.errors.append(f"send: {error}"[:200])

        async def syncer(index: int, token: str, since: str) -> None:
            while not stop.is_set():
                try:
                    data = await _call(session, "GET", f"{base}/_matrix/client/v3/sync", token,
                                       params={"filter": SYNC_FILTER, "since": since, "timeout": str(SYNC_TIMEOUT_MS)})
                except (aiohttp.ClientError, asyncio.TimeoutError, RuntimeError) as error:
                    phase.errors.append(f"sync: {error}"[:200])
                    continue
                now = time.perf_counter()
                since = data["next_batch"]
                for room in data.get("rooms", {}).get("join", {}).values():
                    for event in room.get("timeline", {}).get("events", []):
                        body = event.get("content", {}).get("body", "")
                        if body.startswith(prefix):
                            phase.seen.append((body, index, now))

        groups = process_groups(harness)
        tasks = [asyncio.create_task(syncer(i, t, f["next_batch"])) for i, (t, f) in enumerate(zip(syncer_tokens, first))]
        tasks += [asyncio.create_task(sender(i, t)) for i, t in enumerate(sender_tokens)]
        phase.started = time.perf_counter()
        await asyncio.sleep(warmup)
        cpu_before, own_before, window_start = cpu_snapshot(groups), time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        window_end = time.perf_counter()
        cpu_after, own_after = cpu_snapshot(groups), time.process_time()
        phase.window = (window_start, window_end)
        stop.set()
        await asyncio.wait(tasks, timeout=SYNC_TIMEOUT_MS / 1000 + 5)
        for task in tasks:
            task.cancel()
    return summarise(phase, senders, syncers, rooms, {**cpu_used(cpu_before, cpu_after),
                                                      "load generator": own_after - own_before})


def summarise(phase: Phase, senders: int, syncers: int, rooms: int, cpu: dict[str, float]) -> dict:
    """The phase's raw figures: counts in the window, send-to-sync samples, CPU seconds per process."""
    start, end = phase.window
    inside = lambda t: start <= t <= end  # noqa: E731
    persisted = [m for m, t in phase.acked_at.items() if inside(t)]
    first_seen: dict[tuple[str, int], float] = {}
    for message, syncer, when in phase.seen:
        first_seen.setdefault((message, syncer), when)
    delivered = [(m, s, t) for (m, s), t in first_seen.items() if inside(t) and m in phase.sent_at]
    latencies = [t - phase.sent_at[m] for m, _, t in delivered if phase.sent_at[m] >= start - 1]
    return {"deployment": phase.deployment, "senders": senders, "syncers": syncers, "rooms": rooms,
            "seconds": end - start, "persisted": len(persisted), "delivered": len(delivered),
            "send_to_sync": latencies, "cpu_seconds": cpu, "errors": phase.errors[:20],
            "error_count": len(phase.errors), "prefix": phase.prefix, "room_ids": phase.room_ids,
            "sent": len(phase.acked_at)}


# -- the command -------------------------------------------------------------------------------------


def measure(monolith, preset, preset_name: str, senders: int, syncers: int, rooms: int, seconds: float,
            warmup: float, rounds: int) -> dict:
    phases = []
    for _ in range(rounds):
        for name, harness in (("monolith", monolith), (preset_name, preset)):
            phases.append(asyncio.run(run_phase(harness, name, senders, syncers, rooms, seconds, warmup)))
    return {"phases": phases, "preset": preset_name, "load_average": os.getloadavg(), "cpus": os.cpu_count()}


def boot_preset(preset: str):
    from tests.integration.harness import render, start, workers_config

    return start(render(workers_config(preset)), core_only=True)


def main(argv: Optional[list[str]] = None) -> int:
    from tests.integration.harness import render, start

    parser = argparse.ArgumentParser(prog="python -m tests.integration.load_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="balanced", help="the worker preset measured against the monolith")
    parser.add_argument("--senders", type=int, default=DEFAULT_SENDERS)
    parser.add_argument("--syncers", type=int, default=DEFAULT_SYNCERS)
    parser.add_argument("--rooms", type=int, default=DEFAULT_ROOMS)
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=DEFAULT_WARMUP, help="unmeasured seconds first, per phase")
    parser.add_argument("--rounds", type=int, default=1, help="monolith and preset phases, alternating")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    monolith = start(render(), core_only=True)
    try:
        preset = boot_preset(args.preset)
        try:
            report = measure(monolith, preset, args.preset, args.senders, args.syncers, args.rooms, args.seconds,
                             args.warmup, args.rounds)
        finally:
            preset.stop()
    finally:
        monolith.stop()
    print(json.dumps(report) if args.json else json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
