"""MatrixRTC calls with real media on loopback: the program's LiveKit (built from the Go module
proxy at the pinned tag) and, in sessions that built it, its lk-jwt-service, beside the harness's
Synapse, Traefik and nginx; two clients of LiveKit's own SDK (PyPI `livekit`) in one room.

LiveKit-only checks run everywhere, with tokens minted by livekit-api from the program's key
file. The token-exchange checks need the lk-jwt-service binary (see calls_backend: it cannot be
built in CI) and skip without it, saying why.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from urllib.parse import urlsplit

import pytest
import requests
from livekit import api

from tests.integration import calls_backend, rtc_client
from tests.integration.loopback import LOOPBACK

LIVEKIT_KEYS = "/etc/livekit/keys.yaml"
needs_lk_jwt = pytest.mark.skipif(calls_backend.lk_jwt_binary() is None, reason=calls_backend.LK_JWT_SKIP_REASON)


def _keys(harness) -> tuple[str, str]:
    return rtc_client.key_pair(harness.rendered.text("livekit", LIVEKIT_KEYS))


def _jwt_claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


async def _create_room(harness, name: str) -> None:
    key, secret = _keys(harness)
    async with api.LiveKitAPI(f"http://{LOOPBACK}:{harness.ports.livekit}", key, secret) as lk:
        await lk.room.create_room(api.CreateRoomRequest(name=name, empty_timeout=60))


async def _room_names(harness) -> set[str]:
    key, secret = _keys(harness)
    async with api.LiveKitAPI(f"http://{LOOPBACK}:{harness.ports.livekit}", key, secret) as lk:
        return {room.name for room in (await lk.room.list_rooms(api.ListRoomsRequest())).rooms}


def _node_ip(harness) -> str:
    return harness.rendered.yaml("livekit", "/etc/livekit/livekit.yaml")["rtc"]["node_ip"]


# -- Synapse (CI) ------------------------------------------------------------------------------


def test_synapse_announces_lk_jwt_service_as_its_rtc_transport(harness):
    """The real Synapse loaded the MatrixRTC keys (msc4143 serves rtc/transports) and announces
    exactly lk-jwt-service's public URL; the token exchange's OpenID check answers too."""
    homeserver = harness.rendered.yaml("synapse", "/data/homeserver.yaml")
    user_id, access_token = rtc_client.new_user(harness, "caller")
    response = requests.get(f"{harness.synapse_url}/_matrix/client/unstable/org.matrix.msc4143/rtc/transports",
                            headers={"Authorization": f"Bearer {access_token}"}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json() == {"rtc_transports": homeserver["matrix_rtc"]["transports"]}
    assert response.json()["rtc_transports"][0]["livekit_service_url"].endswith("/livekit/jwt")
    # What lk-jwt-service asks, through nginx as from outside: the OpenID userinfo of a fresh token.
    openid = rtc_client.openid_token(harness.synapse_url, user_id, access_token)
    userinfo = requests.get(f"{harness.nginx_url}/_matrix/federation/v1/openid/userinfo",
                            params={"access_token": openid["access_token"]}, timeout=10)
    assert userinfo.status_code == 200 and userinfo.json() == {"sub": user_id}


# -- LiveKit alone (CI) -------------------------------------------------------------------------


def test_two_clients_exchange_data_and_audio_through_the_sfu(harness):
    key, secret = _keys(harness)
    room = f"harness-{secrets.token_hex(4)}"
    asyncio.run(_create_room(harness, room))
    result = asyncio.run(rtc_client.call(harness.livekit_url, rtc_client.mint_token(key, secret, room, "alice"),
                                         rtc_client.mint_token(key, secret, room, "bob")))
    assert b"hello through the SFU" in result.data_received
    # A real 440 Hz tone (peak 12000) arrived as decoded audio frames at the other client.
    assert result.audio_frames >= 20 and result.audio_peak > 1000, result


def test_ice_candidates_name_only_the_configured_address(harness):
    """LiveKit advertises node_ip (the stack's publicIp) and its media port, nothing else:
    no Docker bridge, private or STUN-discovered address (matrix-docker-ansible-deploy #4958)."""
    key, secret = _keys(harness)
    room = f"ice-{secrets.token_hex(4)}"
    asyncio.run(_create_room(harness, room))
    result = asyncio.run(rtc_client.call(harness.livekit_url, rtc_client.mint_token(key, secret, room, "a"),
                                         rtc_client.mint_token(key, secret, room, "b"), audio=False))
    assert result.remote_candidates, "the clients saw no LiveKit candidate"
    assert {(address, port) for address, port, _ in result.remote_candidates} == \
        {(_node_ip(harness), harness.ports.livekit_rtc)}


def test_clients_behind_strict_nats_relay_through_coturn(harness):
    """With only relayed candidates allowed, media still flows: LiveKit hands clients the program's
    coturn with time-limited credentials derived from the shared TURN secret."""
    key, secret = _keys(harness)
    room = f"relay-{secrets.token_hex(4)}"
    asyncio.run(_create_room(harness, room))
    result = asyncio.run(rtc_client.call(harness.livekit_url, rtc_client.mint_token(key, secret, room, "a"),
                                         rtc_client.mint_token(key, secret, room, "b"), relay_only=True))
    assert b"hello through the SFU" in result.data_received
    assert result.audio_frames >= 20 and result.audio_peak > 1000, result


def test_livekit_creates_no_room_on_its_own(harness):
    """room.auto_create is off: a valid token for a room nobody created opens nothing."""
    key, secret = _keys(harness)
    room = f"nobody-made-it-{secrets.token_hex(4)}"
    with pytest.raises(Exception):
        asyncio.run(rtc_client.join_both(harness.livekit_url, rtc_client.mint_token(key, secret, room, "a"),
                                         rtc_client.mint_token(key, secret, room, "b"), timeout=10))
    assert room not in asyncio.run(_room_names(harness))


def test_traefik_routes_livekit_signalling_websocket_on_443(harness):
    """wss://rtc.<domain>/livekit/sfu/rtc reaches LiveKit through Traefik (TLS, the program's
    certificate, the path stripped) and is upgraded to LiveKit's signalling WebSocket."""
    livekit_url = urlsplit(harness.rendered.yaml("synapse", "/data/homeserver.yaml")["matrix_rtc"]["transports"][0]
                           ["livekit_service_url"])
    host = livekit_url.hostname
    key, secret = _keys(harness)
    room = f"ws-{secrets.token_hex(4)}"
    asyncio.run(_create_room(harness, room))
    token = rtc_client.mint_token(key, secret, room, "ws-probe")
    status = rtc_client.signalling_status(harness.ports.proxy["websecure"], host, str(harness.proxy_certificate), token)
    assert status == b"HTTP/1.1 101 Switching Protocols", status


# -- the token exchange (sessions with the lk-jwt-service binary) -------------------------------


def _service_url(harness) -> str:
    return f"http://{LOOPBACK}:{harness.ports.lk_jwt}"


@needs_lk_jwt
def test_lk_jwt_service_exchanges_a_fresh_openid_token_and_both_join(harness):
    """A real user's OpenID token from Synapse; lk-jwt-service checks it against our Synapse through
    Traefik and nginx (well-known delegation, TLS verified) and returns a LiveKit token for the
    room it creates; two such users meet in that room and exchange data and audio."""
    alice, bob = rtc_client.new_user(harness, "alice"), rtc_client.new_user(harness, "bob")
    matrix_room = f"!call-{secrets.token_hex(6)}:{harness.rendered.yaml('synapse', '/data/homeserver.yaml')['server_name']}"
    answers = []
    for user_id, access_token in (alice, bob):
        openid = rtc_client.openid_token(harness.synapse_url, user_id, access_token)
        response = rtc_client.get_token(_service_url(harness), rtc_client.sfu_request(openid, matrix_room, user_id))
        assert response.status_code == 200, response.text
        answers.append(response.json())
    assert {a["url"] for a in answers} == {calls_backend.container_envs(harness.rendered, "lk-jwt-service")["LIVEKIT_URL"]}
    claims = [_jwt_claims(a["jwt"]) for a in answers]
    assert claims[0]["video"]["room"] == claims[1]["video"]["room"]
    assert claims[0]["video"].get("roomCreate") is not True  # joins, never creates by itself
    # lk-jwt-service itself created the room (full access for our server_name).
    assert claims[0]["video"]["room"] in asyncio.run(_room_names(harness))
    # Its calls went out as in production: the well-known of our domain, then matrix.<domain>, via Traefik.
    assert {f"{h}:443" for h in harness.proxy_hosts} >= set(harness.calls.tunnel.tunnelled)
    result = asyncio.run(rtc_client.call(harness.livekit_url, answers[0]["jwt"], answers[1]["jwt"]))
    assert b"hello through the SFU" in result.data_received
    assert result.audio_frames >= 20 and result.audio_peak > 1000, result


@needs_lk_jwt
def test_a_forged_openid_token_is_refused(harness):
    user_id, _ = rtc_client.new_user(harness, "mallory")
    server_name = user_id.split(":", 1)[1]
    forged = {"access_token": secrets.token_urlsafe(24), "token_type": "Bearer", "matrix_server_name": server_name,
              "expires_in": 3600}
    response = rtc_client.get_token(_service_url(harness), rtc_client.sfu_request(forged, "!r:x", user_id))
    assert response.status_code == 401 and response.json()["errcode"] == "M_UNAUTHORIZED", response.text


@needs_lk_jwt
def test_an_expired_openid_token_is_refused(harness):
    user_id, access_token = rtc_client.new_user(harness, "late")
    openid = rtc_client.openid_token(harness.synapse_url, user_id, access_token)
    # Synapse keeps each OpenID token with its expiry; move it into the past.
    done = harness.psql_superuser("-d", "synapse", "-c",
                                  f"UPDATE open_id_tokens SET ts_valid_until_ms = 1 WHERE token = '{openid['access_token']}'")
    assert done.returncode == 0, done.stderr
    response = rtc_client.get_token(_service_url(harness), rtc_client.sfu_request(openid, "!r:x", user_id))
    assert response.status_code == 401 and response.json()["errcode"] == "M_UNAUTHORIZED", response.text


@needs_lk_jwt
def test_a_token_for_someone_else_is_refused(harness):
    (alice, alice_token), (bob, _) = rtc_client.new_user(harness, "alice"), rtc_client.new_user(harness, "bob")
    openid = rtc_client.openid_token(harness.synapse_url, alice, alice_token)
    response = rtc_client.get_token(_service_url(harness), rtc_client.sfu_request(openid, "!r:x", bob))
    assert response.status_code == 401, response.text


@needs_lk_jwt
def test_a_user_of_another_homeserver_gets_no_full_access(harness):
    """lk-jwt-service lists only our server_name as full-access: a user another homeserver vouches
    for gets a join token but no room, so (auto_create off) it opens no call nobody of ours started."""
    foreign = harness.calls.foreign
    openid = {"access_token": secrets.token_urlsafe(16), "token_type": "Bearer",
              "matrix_server_name": foreign.server_name, "expires_in": 3600}
    matrix_room = f"!foreign-{secrets.token_hex(6)}:{foreign.server_name}"
    response = rtc_client.get_token(_service_url(harness), rtc_client.sfu_request(openid, matrix_room, foreign.user_id))
    assert response.status_code == 200, response.text
    room = _jwt_claims(response.json()["jwt"])["video"]["room"]
    assert room not in asyncio.run(_room_names(harness))
    key, secret = _keys(harness)
    with pytest.raises(Exception):
        asyncio.run(rtc_client.join_both(harness.livekit_url, response.json()["jwt"],
                                         rtc_client.mint_token(key, secret, room, "witness"), timeout=10))
    assert f"{foreign.server_name}:443" in harness.calls.tunnel.tunnelled


@needs_lk_jwt
def test_without_egress_a_foreign_user_is_refused_and_ours_still_joins(harness):
    """A stack without federation gives lk-jwt-service no egress network: it reaches only Traefik, which
    answers to our own names on its network (unit-tested in tests/components/matrix/test_calls.py). The
    real service in that shape, through a CONNECT map of our names only: a user another homeserver
    vouches for is refused (its server cannot be reached, nor fetched on anyone's behalf), and our own
    user still gets a token for a room the service creates, legacy endpoint included."""
    from tests.integration.harness import free_port

    our_names = {f"{host}:443": harness.ports.proxy["websecure"] for host in harness.proxy_hosts}
    tunnel = calls_backend.ConnectTunnel(free_port(), our_names)
    try:
        env = {"HTTPS_PROXY": f"http://{LOOPBACK}:{tunnel.server.getsockname()[1]}"}
        with calls_backend.lk_jwt_replaced(harness, env):
            foreign = harness.calls.foreign
            openid = {"access_token": secrets.token_urlsafe(16), "token_type": "Bearer",
                      "matrix_server_name": foreign.server_name, "expires_in": 3600}
            refused = rtc_client.get_token(_service_url(harness), rtc_client.sfu_request(
                openid, f"!r-{secrets.token_hex(4)}:{foreign.server_name}", foreign.user_id))
            assert refused.status_code == 401 and refused.json()["errcode"] == "M_UNAUTHORIZED", refused.text
            legacy = requests.post(f"{_service_url(harness)}/sfu/get", timeout=20, json={
                "room": f"!r-{secrets.token_hex(4)}:{foreign.server_name}", "openid_token": openid, "device_id": "D"})
            assert legacy.status_code >= 400 and "jwt" not in legacy.text, legacy.text
            assert f"{foreign.server_name}:443" not in tunnel.tunnelled
            user_id, access_token = rtc_client.new_user(harness, "local")
            server_name = user_id.split(":", 1)[1]
            ours = rtc_client.get_token(_service_url(harness), rtc_client.sfu_request(
                rtc_client.openid_token(harness.synapse_url, user_id, access_token),
                f"!call-{secrets.token_hex(4)}:{server_name}", user_id))
            assert ours.status_code == 200, ours.text
            assert _jwt_claims(ours.json()["jwt"])["video"]["room"] in asyncio.run(_room_names(harness))
    finally:
        tunnel.stop()


def test_livekit_caps_every_room_at_the_configured_participants(harness):
    """room.max_participants applies to rooms created without a cap of their own (as lk-jwt-service
    creates them), so one call cannot take the whole SFU."""
    room = f"capped-{secrets.token_hex(4)}"
    asyncio.run(_create_room(harness, room))
    key, secret = _keys(harness)

    async def cap() -> int:
        async with api.LiveKitAPI(f"http://{LOOPBACK}:{harness.ports.livekit}", key, secret) as lk:
            rooms = (await lk.room.list_rooms(api.ListRoomsRequest(names=[room]))).rooms
            return rooms[0].max_participants

    expected = harness.rendered.yaml("livekit", "/etc/livekit/livekit.yaml")["room"]["max_participants"]
    assert expected > 0 and asyncio.run(cap()) == expected
