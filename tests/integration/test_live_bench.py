"""The bench's live measurements, run small on the session's harness: they must measure what they
say (the real programs on the paths named), whatever the times; `python -m commstack bench`
runs them at full size and prints the figures."""

from __future__ import annotations

import json

from tests.integration import calls_backend, live_bench


def _routed(harness, router_prefix: str, method: str) -> int:
    return sum(1 for entry in harness.proxy_access_entries()
               if entry.get("RouterName", "").startswith(router_prefix) and entry.get("RequestMethod") == method)


def _router(harness, host_prefix: str) -> str:
    """The Traefik router name of the public host `host_prefix`.<domain> (and its path, if any)."""
    names = [name for name in harness.proxy_dynamic["http"]["routers"] if name.startswith(host_prefix)]
    assert names, f"no router for {host_prefix}"
    return names[0]


def test_call_setups_take_each_user_through_synapse_and_lk_jwt_service_into_one_room(harness):
    lk_jwt = harness.calls.lk_jwt_booted
    assert lk_jwt == (calls_backend.lk_jwt_binary() is not None)
    jwt_router, = [name for name in harness.proxy_dynamic["http"]["routers"] if name.endswith("livekit-jwt")]
    before = _routed(harness, jwt_router, "POST")
    calls = live_bench.measure_joins(harness, 3)
    assert calls["mode"] == ("lk-jwt-service" if lk_jwt else "minted")
    assert len(calls["samples"]) == 3 and all(0 < s < live_bench.JOIN_TIMEOUT for s in calls["samples"])
    # Each join: two clients, each saw the other; nobody is reused across joins.
    assert all(len(set(pair)) == 2 for pair in calls["identities"])
    assert len({identity for pair in calls["identities"] for identity in pair}) == 6
    assert len(calls["parts"]["connect"]) == len(calls["parts"]["publish"]) == 6
    if lk_jwt:
        # Both users' token exchanges went through Traefik to lk-jwt-service, once per join.
        assert _routed(harness, jwt_router, "POST") - before == 6
        assert len(calls["parts"]["openid"]) == len(calls["parts"]["lk_jwt"]) == 6
    else:
        assert calls["reason"] == calls_backend.LK_JWT_SKIP_REASON


def test_without_lk_jwt_service_the_joins_are_measured_from_minted_tokens_and_say_so(harness, monkeypatch):
    monkeypatch.setattr(harness.calls, "lk_jwt_booted", False)
    calls = live_bench.measure_joins(harness, 1)
    assert calls["mode"] == "minted" and "openid" not in calls["parts"] and len(calls["samples"]) == 1
    assert calls["identities"] == [["bench-caller-0", "bench-callee-0"]]


def test_round_trips_go_through_traefik_and_nginx_on_one_path_and_straight_to_synapse_on_the_other(harness):
    matrix_router = _router(harness, "matrix-")
    before = _routed(harness, matrix_router, "PUT")
    measured = live_bench.measure_round_trips(harness, messages=5, warmup=1)
    assert measured["bases"] == {"chain": live_bench._public_baseurl(harness), "direct": harness.synapse_url}
    assert measured["bases"]["chain"].startswith("https://")
    for path in live_bench.PATHS:
        assert len(measured[path]["samples"]) == len(measured[path]["send"]) == 5
        # The receiver's /sync may return the event before the sender's PUT answers, so neither
        # time bounds the other; both are real, positive durations.
        assert all(send > 0 and whole > 0 for send, whole in zip(measured[path]["send"], measured[path]["samples"]))
    # Interleaved: every iteration measured both paths, in alternating order.
    assert measured["order"] == ["direct", "chain", "chain", "direct", "direct", "chain", "chain", "direct",
                                 "direct", "chain"]
    # Only the chain's sends (warm-up included) passed Traefik.
    assert _routed(harness, matrix_router, "PUT") - before == 6
    # Every message the receiver saw is in the room, as sent.
    sender = measured["users"][0]
    history = [e for e in _room_messages(harness, measured["room_id"]) if e["sender"] == sender]
    ids = {path: measured[path]["event_ids"] for path in live_bench.PATHS}
    assert len(set(ids["chain"]) | set(ids["direct"])) == 10
    by_id = {e["event_id"]: e["content"]["body"] for e in history}
    for path in live_bench.PATHS:
        assert [by_id[i] for i in ids[path]] == measured[path]["bodies"]
        assert all(body.startswith(f"bench {path} ") for body in measured[path]["bodies"])


def _room_messages(harness, room_id: str) -> list[dict]:
    """The room's message events as Synapse stored them (its Postgres, not its API)."""
    done = harness.psql_superuser("-d", "synapse", "-At", "-F", "\t", "-c",
                                  "SELECT e.event_id, j.json FROM event_json j JOIN events e USING (event_id) "
                                  f"WHERE e.room_id = '{room_id}' AND e.type = 'm.room.message'")
    assert done.returncode == 0, done.stderr
    rows = [line.split("\t", 1) for line in done.stdout.splitlines() if line]
    return [{**json.loads(event), "event_id": event_id} for event_id, event in rows]
