"""The real mautrix bridges boot the program's rendered config.yaml and registration.yaml against the
harness's Synapse and PostgreSQL; Synapse loads each registration and enforces its namespace.

WhatsApp is built from the Go module proxy at the pinned tag (tests/integration/gobuild.py). The proxy
does not serve mautrix-telegram, so its checks run only in a session that passes a binary built from
the pinned tag (COMMSTACK_MAUTRIX_TELEGRAM_BIN) and otherwise skip, saying so.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time

import psycopg2
import pytest
import requests
import yaml
from nio import AsyncClient, JoinedMembersResponse, LoginResponse, RoomCreateResponse, RoomSendResponse

from commstack.operations.admin import register_user
from components.matrix.bridges import BRIDGE_SPECS, CONFIG_PATH, OWN_REGISTRATION_PATH
from tests.integration import loopback
from tests.integration.harness import host_path, listening_pids
from tests.values import different

BRIDGES = ["whatsapp", "telegram"]
# Tables only this bridge's network connector creates (its store's own schema).
CONNECTOR_TABLES = {"whatsapp": "whatsmeow_device", "telegram": "telegram_file"}
# Tables every bridgev2 bridge creates in its own database: bridgev2, its Matrix state store, its crypto store.
BRIDGEV2_TABLES = {"portal", "ghost", "user_login", "database_owner", "mx_room_state", "crypto_account"}
# How long after its start a bridge must still run, with no warning or error in its log.
STAYS_UP_SECONDS = 5
REPLY_TIMEOUT = 30


def _registration(harness, kind: str) -> dict:
    return harness.rendered.yaml(f"bridge-{kind}", OWN_REGISTRATION_PATH)


def _server_name(harness) -> str:
    return harness.rendered.yaml("synapse", "/data/homeserver.yaml")["server_name"]


def _bot(harness, kind: str) -> str:
    return f"@{BRIDGE_SPECS[kind].bot_username}:{_server_name(harness)}"


def _booted(harness, kind: str):
    """The bridge's running process; skips (with the reason) when the harness could not boot it."""
    if kind in harness.bridges_not_booted:
        pytest.skip(harness.bridges_not_booted[kind])
    service = harness.bridges.get(kind)
    assert service is not None and service.process.poll() is None, f"mautrix-{kind} is not running"
    return service


def _register_as(harness, as_token: str, localpart: str) -> requests.Response:
    return requests.post(f"{harness.nginx_url}/_matrix/client/v3/register", timeout=10,
                         headers={"Authorization": f"Bearer {as_token}"},
                         json={"type": "m.login.application_service", "username": localpart})


def _database(harness, name: str):
    return psycopg2.connect(host=str(harness.pg_socket_dir), port=harness.ports.postgres, user="postgres",
                            dbname=name)


def _tables(harness, database: str, owner: str | None = None) -> set[str]:
    with _database(harness, database) as connection, connection.cursor() as cursor:
        cursor.execute("select tablename from pg_tables where schemaname = 'public'"
                       + (" and tableowner = %s" if owner else ""), (owner,) if owner else ())
        return {row[0] for row in cursor.fetchall()}


def _databases(harness) -> list[str]:
    with _database(harness, "postgres") as connection, connection.cursor() as cursor:
        cursor.execute("select datname from pg_database where not datistemplate and datname <> 'postgres'")
        return sorted(row[0] for row in cursor.fetchall())


def _problems_in_log(service) -> list[str]:
    """Warnings and worse: zerolog's pretty writer marks them WRN, ERR, FTL and PNC; a Go panic prints
    `panic:`. (A warning found a real problem: the default bot avatar made Synapse fetch from maunium.net.)"""
    return [line for line in service.log.read_text(errors="replace").splitlines()
            if re.search(r"\s(WRN|ERR|FTL|PNC)\s", line) or line.startswith("panic:")]


# -- Synapse and the registrations ---------------------------------------------------------


def test_both_bridges_are_rendered(harness):
    assert sorted(k for k in harness.rendered.files if k.startswith("bridge-")) == [f"bridge-{b}" for b in sorted(BRIDGES)]


@pytest.mark.parametrize("kind", BRIDGES)
def test_synapse_accepts_the_bridge_as_token_as_its_bot(harness, kind):
    # The token the bridge itself uses (its config.yaml) is the one Synapse loaded.
    bridge_config = harness.rendered.yaml(f"bridge-{kind}", CONFIG_PATH)
    whoami = requests.get(f"{harness.nginx_url}/_matrix/client/v3/account/whoami", timeout=10,
                          headers={"Authorization": f"Bearer {bridge_config['appservice']['as_token']}"})
    assert whoami.status_code == 200, whoami.text
    assert whoami.json()["user_id"] == _bot(harness, kind)


@pytest.mark.parametrize("kind", BRIDGES)
def test_the_bridge_may_claim_its_own_namespace(harness, kind):
    response = _register_as(harness, _registration(harness, kind)["as_token"], f"{kind}_own_claim")
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("kind", BRIDGES)
def test_another_bridge_cannot_claim_the_namespace(harness, kind):
    other = next(b for b in BRIDGES if b != kind)
    response = _register_as(harness, _registration(harness, other)["as_token"], f"{kind}_stolen")
    assert response.status_code == 400
    assert response.json()["errcode"] == "M_EXCLUSIVE"


@pytest.mark.parametrize("kind", BRIDGES)
def test_a_normal_user_cannot_take_a_namespaced_name(harness, kind):
    response = requests.get(f"{harness.nginx_url}/_matrix/client/v3/register/available", timeout=10,
                            params={"username": f"{kind}_someone"})
    assert response.status_code == 400
    assert response.json()["errcode"] == "M_EXCLUSIVE"


# -- the real bridges ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", BRIDGES)
def test_the_bridge_starts_migrates_its_own_database_and_stays_up(harness, kind):
    service = _booted(harness, kind)
    database = BRIDGE_SPECS[kind].database  # its own database, and the role of the same name
    own = _tables(harness, database, owner=database)
    assert BRIDGEV2_TABLES | {CONNECTOR_TABLES[kind]} <= own, own
    with _database(harness, database) as connection, connection.cursor() as cursor:
        cursor.execute("select owner from database_owner")
        assert cursor.fetchall() == [(f"megabridge/mautrix-{kind}",)]
    for other in _databases(harness):
        if other != database:
            assert _tables(harness, other, owner=database) == set(), f"mautrix-{kind} created tables in {other}"
            assert CONNECTOR_TABLES[kind] not in _tables(harness, other)
    time.sleep(max(0.0, service.started + STAYS_UP_SECONDS - time.monotonic()))
    assert service.process.poll() is None, service.log.read_text()[-3000:]
    ready = requests.get(f"{harness.bridge_url(kind)}/_matrix/mau/ready", timeout=5)
    assert ready.status_code == 200
    assert _problems_in_log(service) == []


@pytest.mark.parametrize("kind", BRIDGES)
def test_synapse_appservice_ping_reaches_the_real_bridge(harness, kind):
    service = _booted(harness, kind)
    registration = _registration(harness, kind)
    # What Synapse calls (its loaded registration's url) is a socket the bridge's own process holds.
    loaded = yaml.safe_load(host_path(harness.root, "synapse", f"/data/appservices/{kind}.yaml").read_text())
    port = int(loaded["url"].rpartition(":")[2])
    assert listening_pids(port) == {service.process.pid}
    response = requests.post(f"{harness.nginx_url}/_matrix/client/v1/appservice/{registration['id']}/ping",
                             headers={"Authorization": f"Bearer {registration['as_token']}"},
                             json={"transaction_id": f"harness-{kind}-{secrets.token_hex(3)}"}, timeout=10)
    assert response.status_code == 200, response.text
    assert isinstance(response.json()["duration_ms"], int)


@pytest.mark.parametrize("kind", BRIDGES)
def test_the_bridge_refuses_a_wrong_hs_token(harness, kind):
    _booted(harness, kind)
    hs_token = harness.rendered.yaml(f"bridge-{kind}", CONFIG_PATH)["appservice"]["hs_token"]
    url = f"{harness.bridge_url(kind)}/_matrix/app/v1/transactions/harness-{secrets.token_hex(4)}"
    wrong = requests.put(url, headers={"Authorization": f"Bearer {secrets.token_urlsafe(48)}"},
                         json={"events": []}, timeout=5)
    assert wrong.status_code == 401, wrong.text
    assert wrong.json()["errcode"] == "M_UNKNOWN_TOKEN"
    missing = requests.put(url, json={"events": []}, timeout=5)
    assert missing.status_code == 401 and missing.json()["errcode"] == "M_MISSING_TOKEN"
    ping = requests.post(f"{harness.bridge_url(kind)}/_matrix/app/v1/ping", json={},
                         headers={"Authorization": f"Bearer {different(hs_token)}"}, timeout=5)
    assert ping.status_code == 401 and ping.json()["errcode"] == "M_UNKNOWN_TOKEN"
    # The same request with the rendered hs_token is accepted: the refusal was the token's.
    right = requests.put(url, headers={"Authorization": f"Bearer {hs_token}"}, json={"events": []}, timeout=5)
    assert right.status_code == 200, right.text


# -- a Matrix user and the bridge bot ------------------------------------------------------


def _run(coroutine):
    """Runs the coroutine on a loop of its own; unlike asyncio.run, it leaves the thread's current
    event loop alone, which the Pulumi mock tests that may run later in the session need."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()


def _new_user(harness, name: str) -> tuple[str, str]:
    secret = harness.rendered.yaml("synapse", "/data/homeserver.yaml")["registration_shared_secret"]
    password = secrets.token_urlsafe(18)
    user_id = register_user(harness.synapse_url, secret, f"{name}-{secrets.token_hex(3)}", password, admin=False)
    return user_id, password


async def _login(harness, user: tuple[str, str]) -> AsyncClient:
    client = AsyncClient(harness.nginx_url, user[0])
    assert isinstance(await client.login(user[1]), LoginResponse)
    return client


async def _open_dm(harness, user: tuple[str, str], bot: str) -> str:
    """A direct chat with the bot, as Element opens one; returns once the bot has joined."""
    client = await _login(harness, user)
    try:
        room = await client.room_create(is_direct=True, invite=[bot])
        assert isinstance(room, RoomCreateResponse), room
        deadline = time.monotonic() + REPLY_TIMEOUT
        while time.monotonic() < deadline:
            members = await client.joined_members(room.room_id)
            if isinstance(members, JoinedMembersResponse) and bot in {m.user_id for m in members.members}:
                return room.room_id
            await asyncio.sleep(0.2)
        raise AssertionError(f"{bot} did not join the direct chat within {REPLY_TIMEOUT} s")
    finally:
        await client.close()


async def _ask(harness, user: tuple[str, str], room_id: str, bot: str, text: str) -> list[dict]:
    """Sends `text` in the room; returns the bot's messages that follow it."""
    client = await _login(harness, user)
    try:
        sent = await client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": text})
        assert isinstance(sent, RoomSendResponse), sent
        deadline = time.monotonic() + REPLY_TIMEOUT
        while time.monotonic() < deadline:
            # /messages after our event: everything the bot said in reply.
            response = requests.get(
                f"{harness.nginx_url}/_matrix/client/v3/rooms/{room_id}/context/{sent.event_id}",
                params={"limit": 20}, headers={"Authorization": f"Bearer {client.access_token}"}, timeout=10)
            response.raise_for_status()
            replies = [e for e in response.json()["events_after"]
                       if e["sender"] == bot and e["type"] == "m.room.message"]
            if replies:
                return replies
            await asyncio.sleep(0.3)
        return []
    finally:
        await client.close()


@pytest.fixture(scope="module")
def direct_chats(harness) -> dict:
    """kind -> (user, room id) of a direct chat a real user opened with the bridge bot (made once)."""
    return {}


def _direct_chat(harness, direct_chats: dict, kind: str) -> tuple[tuple[str, str], str]:
    if kind not in direct_chats:
        user = _new_user(harness, f"{kind}-user")
        direct_chats[kind] = (user, _run(_open_dm(harness, user, _bot(harness, kind))))
    return direct_chats[kind]


def _assert_help_lists_login(replies: list[dict], kind: str) -> None:
    assert replies, f"the {kind} bridge bot did not answer `help`"
    text = "\n".join(e["content"].get("body", "") for e in replies)
    # bridgev2's help lists each command as "**name** ...": the login command must be among them.
    assert re.search(r"\*\*login\*\*", text), text
    assert re.search(r"\*\*help\*\*", text), text


@pytest.mark.parametrize("kind", BRIDGES)
def test_a_user_gets_the_bridge_help_in_a_direct_chat(harness, direct_chats, kind):
    _booted(harness, kind)
    user, room_id = _direct_chat(harness, direct_chats, kind)
    replies = _run(_ask(harness, user, room_id, _bot(harness, kind), "help"))
    _assert_help_lists_login(replies, kind)


MEGOLM = "m.megolm.v1.aes-sha2"


async def _encrypted_help(harness, user: tuple[str, str], bot: str, store: str) -> tuple[str, str, list]:
    """An end-to-end encrypted direct chat with the bot, as Element opens one (m.room.encryption in
    the initial state), a `help` sent encrypted, and the bot's replies as this client decrypted them.
    The room key reaches the bot's device only as an olm-encrypted to-device event, which Synapse
    pushes to the bridge in a transaction (MSC2409): without that, the bot cannot read `help`.
    Returns the room, this client's curve25519 identity key and the bot's messages."""
    from nio import AsyncClientConfig, MegolmEvent, RoomMessageNotice, RoomMessageText

    texts = (RoomMessageText, RoomMessageNotice)  # the bot greets with m.text and answers with m.notice

    client = AsyncClient(harness.nginx_url, user[0], store_path=store,
                         config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False))
    try:
        assert isinstance(await client.login(user[1]), LoginResponse)
        if client.should_upload_keys:
            await client.keys_upload()
        room = await client.room_create(is_direct=True, invite=[bot], initial_state=[
            {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}}])
        assert isinstance(room, RoomCreateResponse), room
        deadline = time.monotonic() + REPLY_TIMEOUT
        while room.room_id not in client.rooms or bot not in client.rooms[room.room_id].users:
            assert time.monotonic() < deadline, f"{bot} did not join the encrypted direct chat"
            await client.sync(timeout=1000, full_state=True)
        if client.should_query_keys:
            await client.keys_query()
        sent = await client.room_send(room.room_id, "m.room.message", {"msgtype": "m.text", "body": "help"},
                                      ignore_unverified_devices=True)
        assert isinstance(sent, RoomSendResponse), sent
        replies: list = []

        def answered() -> bool:  # the bot greets the room on join; wait for its answer to `help`
            return any(isinstance(e, texts) and "**login**" in e.body for e in replies)

        deadline = time.monotonic() + REPLY_TIMEOUT
        while time.monotonic() < deadline and not answered():
            response = await client.sync(timeout=1000)
            timeline = getattr(response, "rooms", None) and response.rooms.join.get(room.room_id)
            if timeline:
                replies += [e for e in timeline.timeline.events if e.sender == bot
                            and isinstance(e, (*texts, MegolmEvent))]
        return room.room_id, client.olm.account.identity_keys["curve25519"], replies
    finally:
        await client.close()


def _room_keys_from(harness, kind: str, room_id: str, sender_key: str) -> int:
    """Megolm sessions for the room that the device with `sender_key` shared with the bridge: the only way
    one gets into its crypto store is an olm-encrypted to-device event (its own sessions have its key)."""
    with _database(harness, BRIDGE_SPECS[kind].database) as connection, connection.cursor() as cursor:
        cursor.execute("select count(*) from crypto_megolm_inbound_session where room_id = %s and sender_key = %s",
                       (room_id, sender_key))
        return cursor.fetchone()[0]


@pytest.mark.parametrize("kind", BRIDGES)
def test_the_bot_answers_an_encrypted_direct_chat_with_calls_on(harness, kind, tmp_path):
    """With calls on (MatrixRTC's experimental flags) and the bridges' MSC2409/MSC3202 flags merged,
    Synapse pushes the bot's to-device events to the real bridge: it gets the room key, reads an
    encrypted `help` and answers it encrypted, and this client decrypts the answer."""
    _booted(harness, kind)
    homeserver = harness.rendered.yaml("synapse", "/data/homeserver.yaml")
    assert homeserver["matrix_rtc"]["transports"], "the harness stack must have calls on"
    assert {"msc2409_to_device_messages_enabled", "msc3202_transaction_extensions", "msc4143_enabled"} \
        <= {k for k, v in homeserver["experimental_features"].items() if v is True}
    user = _new_user(harness, f"{kind}-e2ee")
    room_id, identity_key, replies = _run(_encrypted_help(harness, user, _bot(harness, kind), str(tmp_path)))
    assert _room_keys_from(harness, kind, room_id, identity_key) >= 1, \
        "the bridge never received this client's room key (a to-device event)"
    texts = [e for e in replies if type(e).__name__ in ("RoomMessageText", "RoomMessageNotice")]
    assert [e.body for e in texts if not e.decrypted] == [], "the bot wrote in plaintext in an encrypted room"
    _assert_help_lists_login([{"content": {"body": e.body}} for e in texts], kind)


def _bot_devices(harness, kind: str) -> list[str]:
    as_token = _registration(harness, kind)["as_token"]
    response = requests.get(f"{harness.synapse_url}/_matrix/client/v3/devices", timeout=10,
                            headers={"Authorization": f"Bearer {as_token}"})
    assert response.status_code == 200, response.text
    return sorted(d["device_id"] for d in response.json()["devices"])


def _bridge_state(harness, kind: str) -> dict:
    database = BRIDGE_SPECS[kind].database
    with _database(harness, database) as connection, connection.cursor() as cursor:
        cursor.execute("select device_id from crypto_account")
        crypto_devices = cursor.fetchall()
        cursor.execute('select mxid, management_room from "user"')
        users = sorted(cursor.fetchall())
    container = f"bridge-{kind}"
    return {
        "crypto_devices": crypto_devices,
        "synapse_devices": _bot_devices(harness, kind),
        "users": users,
        "registration": host_path(harness.root, container, OWN_REGISTRATION_PATH).read_text(),
        "tokens": {k: v for k, v in yaml.safe_load(host_path(harness.root, container, CONFIG_PATH).read_text())
                   ["appservice"].items() if k in ("as_token", "hs_token", "id")},
    }


@pytest.mark.parametrize("kind", BRIDGES)
def test_a_restarted_bridge_keeps_its_state(harness, direct_chats, kind):
    _booted(harness, kind)
    user, room_id = _direct_chat(harness, direct_chats, kind)
    before = _bridge_state(harness, kind)
    # The bot has one device (its crypto account), and the user's direct chat is its management room.
    assert len(before["crypto_devices"]) == 1 and before["synapse_devices"] == [before["crypto_devices"][0][0]]
    assert (user[0], room_id) in before["users"]
    assert harness.stop_bridge(kind) == 0
    harness.start_bridge(kind)
    # Same bot, same device, same tokens; nothing registered anew, nothing forgotten.
    assert _bridge_state(harness, kind) == before
    whoami = requests.get(f"{harness.synapse_url}/_matrix/client/v3/account/whoami", timeout=10,
                          headers={"Authorization": f"Bearer {before['tokens']['as_token']}"})
    assert whoami.json()["user_id"] == _bot(harness, kind)
    # The direct chat still reaches it without any command prefix: the room is remembered.
    _assert_help_lists_login(_run(_ask(harness, user, room_id, _bot(harness, kind), "help")), kind)
    assert _problems_in_log(harness.bridges[kind]) == []


def _leaves(value, path=()):
    if isinstance(value, dict) and value:
        for key, inner in value.items():
            yield from _leaves(inner, (*path, key))
    else:
        yield path, value


@pytest.mark.parametrize("kind", BRIDGES)
def test_the_bridge_knows_every_key_the_program_writes(harness, kind):
    """At start the bridge merges its config into its own example config and saves the result
    (configupgrade), dropping keys it does not know: every rendered value must survive unchanged."""
    _booted(harness, kind)
    container = f"bridge-{kind}"
    saved = yaml.safe_load(host_path(harness.root, container, CONFIG_PATH).read_text())
    assert "backfill" in saved, "the bridge did not save its merged config"  # a section the program leaves out
    expected = loopback.bridge_config(harness.rendered.yaml(container, CONFIG_PATH), ports=harness.ports, kind=kind)
    for path, value in _leaves(expected):
        found = saved
        for key in path:
            assert isinstance(found, dict) and key in found, f"mautrix-{kind} dropped {'.'.join(path)}"
            found = found[key]
        if value == {}:  # an empty section (whatsapp's `network:`) takes the bridge's defaults
            assert isinstance(found, dict), f"{'.'.join(path)}: {found!r}"
        else:
            assert found == value, f"{'.'.join(path)}: the bridge saved {found!r}, the program wrote {value!r}"
