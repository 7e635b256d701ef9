"""Two users exchange a message through nginx (the program's proxy config) with matrix-nio."""

from __future__ import annotations

import asyncio
import secrets

from nio import AsyncClient, JoinResponse, LoginResponse, RoomCreateResponse, RoomMessageText, RoomSendResponse

from commstack.admin import register_user


def _new_user(harness, name: str) -> tuple[str, str]:
    secret = harness.rendered.yaml("synapse", "/data/homeserver.yaml")["registration_shared_secret"]
    password = secrets.token_urlsafe(18)
    user_id = register_user(harness.synapse_url, secret, f"{name}-{secrets.token_hex(3)}", password, admin=False)
    return user_id, password


async def _exchange(harness, alice: tuple[str, str], bob: tuple[str, str], text: str) -> list[RoomMessageText]:
    a = AsyncClient(harness.nginx_url, alice[0])
    b = AsyncClient(harness.nginx_url, bob[0])
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


def test_two_users_exchange_a_message_through_nginx(harness):
    alice, bob = _new_user(harness, "alice"), _new_user(harness, "bob")
    text = f"hello through nginx {secrets.token_hex(4)}"
    received = asyncio.run(_exchange(harness, alice, bob, text))
    matching = [e for e in received if e.body == text]
    assert len(matching) == 1
    assert matching[0].sender == alice[0]
