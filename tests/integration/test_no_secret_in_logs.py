"""No secret in any log of the harness: after a registration with a registration token, OpenID
checks of a call join, an access token in a query and a call in LiveKit through Traefik, no token
appears in any program's stdout/stderr (the harness's `docker logs`) or access log."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests

from commstack.operations.admin import register_user
from tests.integration import calls_backend, rtc_client
from tests.integration.loopback import LOOPBACK

LIVEKIT_KEYS = "/etc/livekit/keys.yaml"


def _admin_token(harness) -> str:
    secret = harness.rendered.yaml("synapse", "/data/homeserver.yaml")["registration_shared_secret"]
    name, password = f"logadmin-{secrets.token_hex(3)}", secrets.token_urlsafe(18)
    register_user(harness.synapse_url, secret, name, password, admin=True)
    login = requests.post(f"{harness.synapse_url}/_matrix/client/v3/login", timeout=15, json={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": name}, "password": password})
    login.raise_for_status()
    return login.json()["access_token"]


def _register_with_token(base_url: str, token: str, session: requests.Session) -> str:
    """What Element does: checks the token (a query string), then registers through its stage."""
    validity = session.get(f"{base_url}/_matrix/client/v1/register/m.login.registration_token/validity",
                           params={"token": token})
    assert validity.status_code == 200 and validity.json() == {"valid": True}, validity.text
    body = {"username": f"logged-{secrets.token_hex(3)}", "password": secrets.token_urlsafe(18)}
    first = session.post(f"{base_url}/_matrix/client/v3/register", json=body)
    assert first.status_code == 401, first.text
    answer = session.post(f"{base_url}/_matrix/client/v3/register", json={
        **body, "auth": {"type": "m.login.registration_token", "token": token, "session": first.json()["session"]}})
    if answer.status_code == 401:
        answer = session.post(f"{base_url}/_matrix/client/v3/register", json={
            **body, "auth": {"type": "m.login.dummy", "session": first.json()["session"]}})
    assert answer.status_code == 200, answer.text
    return answer.json()["access_token"]


def _jwt_room(token: str) -> str:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["video"]["room"]


async def _create_room(harness, key: str, secret: str, name: str) -> None:
    from livekit import api

    async with api.LiveKitAPI(f"http://{LOOPBACK}:{harness.ports.livekit}", key, secret) as lk:
        await lk.room.create_room(api.CreateRoomRequest(name=name, empty_timeout=60))


def _log_files(root: Path) -> list[Path]:
    """Every log the harness's programs wrote: their stdout/stderr (logs/*.log, what `docker logs`
    shows) and the files they log to themselves (Traefik's and nginx's access logs, coturn's log)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and (p.suffix == ".log" or p.parent.name == "logs"))


def test_no_token_reaches_any_log(harness):
    public = harness.public()
    homeserver = harness.rendered.yaml("synapse", "/data/homeserver.yaml")
    base_url = homeserver["public_baseurl"].rstrip("/")
    # A registration token issued through the admin API, used as a newcomer's client uses it.
    admin = _admin_token(harness)
    issued = requests.post(f"{harness.synapse_url}/_synapse/admin/v1/registration_tokens/new", timeout=15,
                           headers={"Authorization": f"Bearer {admin}"}, json={"uses_allowed": 1})
    issued.raise_for_status()
    registration_token = issued.json()["token"]
    user_token = _register_with_token(base_url, registration_token, public)
    whoami = public.get(f"{base_url}/_matrix/client/v3/account/whoami", params={"access_token": user_token})
    assert whoami.status_code == 200, whoami.text
    user_id = whoami.json()["user_id"]
    # A call join: the OpenID token lk-jwt-service checks at our well-known delegation (a query string).
    openid = rtc_client.openid_token(harness.synapse_url, user_id, user_token)
    server_name = homeserver["server_name"]
    userinfo = public.get(f"https://{server_name}/_matrix/federation/v1/openid/userinfo",
                          params={"access_token": openid["access_token"]})
    assert userinfo.json() == {"sub": user_id}, userinfo.text
    secrets_seen = {"registration": registration_token, "access": user_token, "admin": admin,
                    "openid": openid["access_token"]}
    key, secret = rtc_client.key_pair(harness.rendered.text("livekit", LIVEKIT_KEYS))
    secrets_seen["livekit-secret"] = secret
    rtc_host = urlsplit(homeserver["matrix_rtc"]["transports"][0]["livekit_service_url"]).hostname
    if calls_backend.lk_jwt_binary() is not None:  # the real token exchange, through Traefik
        answer = rtc_client.get_token(f"https://{rtc_host}/livekit/jwt", rtc_client.sfu_request(
            rtc_client.openid_token(harness.synapse_url, user_id, user_token), f"!logs:{server_name}", user_id),
            session=public)
        assert answer.status_code == 200, answer.text
        first = answer.json()["jwt"]
        room = _jwt_room(first)
    else:  # without the binary: a room made through LiveKit's API, a token minted from the key file
        room = f"logs-{secrets.token_hex(4)}"
        asyncio.run(_create_room(harness, key, secret, room))
        first = rtc_client.mint_token(key, secret, room, "first")
    second = rtc_client.mint_token(key, secret, room, "second")
    secrets_seen.update(livekit_first=first, livekit_second=second)
    # Signalling as clients open it, through Traefik: wss://rtc.<domain>/livekit/sfu/rtc?access_token=…
    assert rtc_client.signalling_status(harness.ports.proxy["websecure"], rtc_host, str(harness.proxy_certificate),
                                        first) == b"HTTP/1.1 101 Switching Protocols"
    asyncio.run(rtc_client.join_both(harness.livekit_url, first, second))
    time.sleep(1)  # let every program flush its log
    found = {}
    for path in _log_files(harness.root):
        text = path.read_text(errors="replace")
        leaked = [name for name, value in secrets_seen.items() if value in text]
        if leaked:
            found[str(path.relative_to(harness.root))] = leaked
    assert found == {}, found
    assert (harness.root / "logs" / "synapse.log").stat().st_size > 0
