"""Two users exchange a message with matrix-nio: through nginx (the program's proxy config), and
through the full public chain Traefik (TLS, the program's certificate) -> nginx -> Synapse."""

from __future__ import annotations

import asyncio
import secrets
import socket
import ssl
from typing import Callable
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from nio import AsyncClient, JoinResponse, LoginResponse, RoomCreateResponse, RoomMessageText, RoomSendResponse

from commstack.operations.admin import register_user


def _new_user(harness, name: str) -> tuple[str, str]:
    secret = harness.rendered.yaml("synapse", "/data/homeserver.yaml")["registration_shared_secret"]
    password = secrets.token_urlsafe(18)
    user_id = register_user(harness.synapse_url, secret, f"{name}-{secrets.token_hex(3)}", password, admin=False)
    return user_id, password


class ConnectToResolver(AbstractResolver):
    """Resolves a public host:port to where the harness serves it (curl's --connect-to), so the
    client keeps the public URL, Host header and SNI."""

    def __init__(self, connect_to: dict[str, str]):
        self.connect_to = connect_to

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        address, _, local_port = self.connect_to[f"{host}:{port}"].rpartition(":")
        return [ResolveResult(hostname=host, host=address, port=int(local_port), family=socket.AF_INET,
                              proto=0, flags=socket.AI_NUMERICHOST)]

    async def close(self) -> None:
        pass


async def _exchange(new_client: Callable[[str], AsyncClient], alice: tuple[str, str], bob: tuple[str, str],
                    text: str) -> list[RoomMessageText]:
    a, b = new_client(alice[0]), new_client(bob[0])
    try:
        assert isinstance(await a.login(alice[1]), LoginResponse)
        assert isinstance(await b.login(bob[1]), LoginResponse)
        room = await a.room_create(invite=[bob[0]], name="harness")
        assert isinstance(room, RoomCreateResponse), room
        await b.sync(timeout=0)
        assert isinstance(await b.join(room.room_id), JoinResponse)
        await a.sync(timeout=0)
        sent = await a.room_send(room.room_id, "m.room.message", {"msgtype": "m.text", "body": text})
        assert isinstance(sent, RoomSendResponse), sent
        received: list[RoomMessageText] = []
        for _ in range(10):
            response = await b.sync(timeout=3000)
            timeline = response.rooms.join.get(room.room_id)
            if timeline:
                received += [e for e in timeline.timeline.events if isinstance(e, RoomMessageText)]
            if any(e.body == text for e in received):
                break
        return received
    finally:
        await a.close()
        await b.close()


def _assert_delivered_once(harness, new_client: Callable[[str], AsyncClient], via: str) -> None:
    alice, bob = _new_user(harness, "alice"), _new_user(harness, "bob")
    text = f"hello through {via} {secrets.token_hex(4)}"
    received = asyncio.run(_exchange(new_client, alice, bob, text))
    matching = [e for e in received if e.body == text]
    assert len(matching) == 1
    assert matching[0].sender == alice[0]


def test_two_users_exchange_a_message_through_nginx(harness):
    _assert_delivered_once(harness, lambda user: AsyncClient(harness.nginx_url, user), "nginx")


def test_two_users_exchange_a_message_through_traefik_tls(harness):
    base_url = harness.rendered.yaml("synapse", "/data/homeserver.yaml")["public_baseurl"].rstrip("/")
    trust = ssl.create_default_context(cafile=str(harness.proxy_certificate))  # hostname checked

    def new_client(user: str) -> AsyncClient:
        client = AsyncClient(base_url, user, ssl=trust)
        # The public URL as is; only the address it connects to is the harness's Traefik.
        client.client_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=ConnectToResolver(harness.connect_to)))
        return client

    logged_before = len(harness.proxy_access_entries())
    _assert_delivered_once(harness, new_client, "traefik")
    # Login, room creation, join, send and syncs all went through Traefik's TLS entry point.
    through_traefik = [e for e in harness.proxy_access_entries()[logged_before:]
                       if e["RequestHost"] == urlsplit(base_url).hostname and e["entryPointName"] == "websecure"]
    assert len(through_traefik) >= 8 and {e["RequestMethod"] for e in through_traefik} >= {"POST", "PUT", "GET"}
