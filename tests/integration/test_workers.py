"""Synapse's balanced worker preset, booted for real (tests/integration/conftest.py `worker_harness`):
the main process, every worker and their Redis from the program's rendered files, behind the
rendered nginx and Traefik, with the real mautrix-whatsapp bridge. Every request here goes through
Traefik on 443 (TLS) and nginx, as clients' do; the checks read nginx's routing log, each Synapse
process's own log and Synapse's database.

The tests run in file order: the last one stops workers.
"""

from __future__ import annotations

import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
import redis
import requests
import yaml

from commstack.operations.admin import register_user
from components.matrix import workers
from components.matrix.bridges import BRIDGE_SPECS
from tests.integration import loopback
from tests.integration.harness import SYNAPSE_REDIS, SYNAPSE_REDIS_CONF

HOMESERVER = "/data/homeserver.yaml"
TIMEOUT = 30
# nginx's synapse_routing log line (components/matrix/workers.py render_nginx_routing).
# After a failed try nginx lists each address it tried, and each one's status: "a:1, b:2 502, 200".
ROUTING_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+)" (?P<status>\d{3}) (?P<group>\S+) '
                          r'(?P<upstream>[^\s,]+(?:, [^\s,]+)*) (?P<upstream_status>[^\s,]+(?:, [^\s,]+)*) ')


# -- helpers -------------------------------------------------------------------------------------------


def _config(wh, container: str = "synapse") -> dict:
    return wh.rendered.yaml(container, HOMESERVER)


class Client:
    """A Matrix user on the public URL, through Traefik (TLS) and nginx."""

    def __init__(self, wh, name: str):
        config = _config(wh)
        self.base = config["public_baseurl"].rstrip("/")
        self.session = wh.public()
        password = secrets.token_urlsafe(12)
        self.user_id = register_user(wh.synapse_url, config["registration_shared_secret"],
                                     f"{name}-{secrets.token_hex(3)}", password, admin=False)
        login = self.call("POST", "/_matrix/client/v3/login", json={
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": self.user_id},
            "password": password})
        self.session.headers["Authorization"] = f"Bearer {login['access_token']}"
        self.device_id = login["device_id"]

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        return self.session.request(method, self.base + path, timeout=TIMEOUT, **kwargs)

    def call(self, method: str, path: str, **kwargs) -> dict:
        response = self.request(method, path, **kwargs)
        assert response.status_code == 200, f"{method} {path}: {response.status_code} {response.text[:300]}"
        return response.json()


def _routed(wh) -> list[dict]:
    """nginx's routing log so far: one dict per proxied request (method, path, status, group, process)."""
    by_port = {str(port): name for name, port in wh.ports.workers.items()}
    by_port[str(wh.ports.synapse)] = "synapse"
    entries = []
    for line in wh.nginx_log.read_text(errors="replace").splitlines():
        matched = ROUTING_LINE.search(line)
        if matched:
            entry = matched.groupdict()
            entry["tried"] = [by_port.get(a.strip().rpartition(":")[2]) for a in entry["upstream"].split(",")]
            entry["process"] = entry["tried"][-1]  # the last one tried answered
            entries.append(entry)
    return entries


def _served(wh, method: str, path: str, since: int = 0, expected: int = 1, prefix: bool = False) -> list[dict]:
    """The routing log's entries for a request (or, with `prefix`, every path under it); nginx writes
    the line just after the response went out, so this waits (briefly) for `expected` of them."""
    deadline = time.monotonic() + 5
    while True:
        found = [e for e in _routed(wh)[since:] if e["method"] == method
                 and (e["path"].startswith(path) if prefix else e["path"] == path)]
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _synapse_log(wh, process: str) -> str:
    service = wh.workers.get(process) if process != "synapse" else next(s for s in wh.services if s.name == "synapse")
    log = service.log if service else wh.root / "logs" / f"{process}.log"
    return log.read_text(errors="replace")


SYNAPSE_ACCESS = re.compile(r'Processed request: .* "(?P<method>[A-Z]+) (?P<uri>\S+) HTTP/')


def _processed(wh, process: str, method: str, path: str) -> bool:
    """Whether that Synapse process's own access log (synapse.access.http) has a request for `path`
    (decoded, as nginx logs it; a longer path with it as its prefix counts too)."""
    for line in _synapse_log(wh, process).splitlines():
        matched = SYNAPSE_ACCESS.search(line)
        if matched and matched["method"] == method and unquote(matched["uri"].split("?", 1)[0]).startswith(path):
            return True
    return False


def _psql(wh, sql: str) -> list[str]:
    done = wh.psql_superuser("-d", "synapse", "-At", "-c", sql)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line]


def _room(alice: Client, bob: Client) -> str:
    room_id = alice.call("POST", "/_matrix/client/v3/createRoom",
                         json={"preset": "private_chat", "invite": [bob.user_id]})["room_id"]
    bob.call("POST", f"/_matrix/client/v3/join/{quote(room_id)}", json={})
    return room_id


def _wait_for_event(client: Client, room_id: str, since: str, predicate, timeout: float = TIMEOUT) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = client.call("GET", "/_matrix/client/v3/sync", params={"since": since, "timeout": 5000})
        since = data["next_batch"]
        for event in data.get("rooms", {}).get("join", {}).get(room_id, {}).get("timeline", {}).get("events", []):
            if predicate(event):
                return event
    raise AssertionError(f"no such event reached {client.user_id}'s /sync within {timeout} s")


@pytest.fixture(scope="module")
def users(worker_harness) -> tuple[Client, Client, str]:
    alice, bob = Client(worker_harness, "alice"), Client(worker_harness, "bob")
    return alice, bob, _room(alice, bob)


# -- loopback.py changes nothing else in the worker deployment's files ----------------------------------

PORTS = loopback.LoopbackPorts(postgres=1, synapse=2, nginx=3, turn=4, turn_tls=5, synapse_replication=6,
                               synapse_redis=7, workers={"synapse-writer-1": 8, "synapse-sync-1": 9,
                                                         "synapse-client-1": 10, "synapse-media-1": 11,
                                                         "synapse-tasks-1": 12},
                               # Monitoring: each process's metrics listener on a port of its own.
                               synapse_metrics=13, worker_metrics={"synapse-writer-1": 14, "synapse-sync-1": 15,
                                                                   "synapse-client-1": 16, "synapse-media-1": 17,
                                                                   "synapse-tasks-1": 18}, smtp=19)
ROOT = Path("/tmp/harness-root")


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in set(before) | set(after) if before.get(k) != after.get(k)}


def test_loopback_moves_only_each_process_s_addresses_paths_and_test_limits(worker_harness):
    untouched = set(loopback.TEST_RATE_LIMITS) | set(loopback.TEST_PASSWORD_HASHING)
    main = worker_harness.rendered.yaml("synapse", HOMESERVER)
    adapted = loopback.homeserver_config(main, root=ROOT, ports=PORTS)
    # email: the harness's SMTP server (test_loopback.py checks that adaptation).
    assert _changed(main, adapted) - untouched == {"listeners", "instance_map", "redis", "database", "signing_key_path",
                                                   "log_config", "media_store_path", "app_service_config_files", "email"}
    assert [(l["port"], l.get("resources")) for l in adapted["listeners"]] == [
        (2, main["listeners"][0]["resources"]), (6, [{"names": ["replication"], "compress": False}]), (13, None)]
    assert adapted["instance_map"] == {"main": {"host": "127.0.0.1", "port": 6},
                                       "synapse-writer-1": {"host": "127.0.0.1", "port": 8}}
    assert adapted["redis"] == {**main["redis"], "host": "127.0.0.1", "port": 7}
    worker = worker_harness.rendered.yaml("synapse-media-1", HOMESERVER)
    adapted = loopback.homeserver_config(worker, root=ROOT, ports=PORTS, container="synapse-media-1")
    assert _changed(worker, adapted) - untouched == {"worker_listeners", "instance_map", "redis", "database",
                                                     "signing_key_path", "log_config", "worker_log_config",
                                                     "media_store_path", "app_service_config_files", "email"}
    listener, metrics = adapted["worker_listeners"]
    # Its metrics listener (monitoring on): its own loopback port, nothing else changed.
    assert metrics == {**worker["worker_listeners"][1], "port": 17, "bind_addresses": ["127.0.0.1"]}
    assert {k: v for k, v in listener.items() if k not in ("port", "bind_addresses")} == \
        {k: v for k, v in worker["worker_listeners"][0].items() if k not in ("port", "bind_addresses")}
    assert listener["port"] == 11
    # Its own files in its own directory; the media volume is the one it shares with the main process.
    assert adapted["signing_key_path"] == str(ROOT / "synapse-media-1" / "data" / "signing.key")
    assert adapted["media_store_path"] == str(ROOT / "synapse" / "data" / "media_store")


def test_loopback_changes_only_nginx_s_listen_and_upstream_servers_and_redis_s_address(worker_harness):
    rendered = worker_harness.rendered.text("wellknown", "/etc/nginx/conf.d/default.conf").splitlines()
    adapted = loopback.nginx_conf("\n".join(rendered), ports=PORTS).splitlines()
    assert len(adapted) == len(rendered)
    differing = [(a.strip(), b.strip()) for a, b in zip(rendered, adapted) if a != b]
    assert differing and all(a.startswith(("listen ", "server synapse")) for a, _ in differing)
    assert all(re.fullmatch(r"(listen|server) 127\.0\.0\.1:\d+[^;]*;", b) for _, b in differing)
    assert all(a.endswith(" resolve;") and not b.endswith(" resolve;") for a, b in differing if a.startswith("server"))
    conf = worker_harness.rendered.text(SYNAPSE_REDIS, SYNAPSE_REDIS_CONF)
    adapted = loopback.redis_conf(conf, root=ROOT, ports=PORTS).splitlines()
    kept = [line for line in conf.splitlines() if not line.startswith(("port ", "bind "))]
    assert adapted == kept + ["port 7", "bind 127.0.0.1", f"dir {ROOT / SYNAPSE_REDIS / 'data'}"]


# -- the processes ---------------------------------------------------------------------------------------


def test_every_process_of_the_preset_runs_from_its_rendered_config(worker_harness):
    wh = worker_harness
    plan = workers.worker_plan("balanced")
    assert sorted(wh.workers) == sorted(p.name for p in plan.processes)
    for process in plan.processes:
        config = _config(wh, process.name)
        assert config["worker_name"] == process.name
        assert requests.get(f"{wh.worker_url(process.name)}/health", timeout=5).text == "OK"
    # They share one Redis, which asks for its password: each process holds its connections there.
    password = re.search(r"^requirepass (\S+)$", wh.rendered.text(SYNAPSE_REDIS, SYNAPSE_REDIS_CONF), re.M).group(1)
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=wh.ports.synapse_redis, socket_timeout=5).ping()
    clients = redis.Redis(port=wh.ports.synapse_redis, password=password, socket_timeout=5).client_list()
    assert len(clients) >= 2 * (1 + len(plan.processes)), clients  # a publisher and a subscriber each
    # Postgres limits the Synapse role to the pools the preset gives every process.
    limit, = _psql(wh, "select rolconnlimit from pg_roles where rolname = 'synapse'")
    assert int(limit) == workers.synapse_connection_limit(plan)


def test_a_message_is_persisted_by_the_event_writer_and_reaches_the_other_user_on_the_sync_worker(
        worker_harness, users):
    wh = worker_harness
    alice, bob, room_id = users
    since = bob.call("GET", "/_matrix/client/v3/sync", params={"timeout": 0})["next_batch"]
    before = len(_routed(wh))
    body = f"through every worker {secrets.token_hex(4)}"
    with ThreadPoolExecutor(max_workers=1) as pool:
        seen = pool.submit(_wait_for_event, bob, room_id, since, lambda e: e.get("content", {}).get("body") == body)
        sent = alice.call("PUT", f"/_matrix/client/v3/rooms/{quote(room_id)}/send/m.room.message/{secrets.token_hex(6)}",
                          json={"msgtype": "m.text", "body": body})
        event = seen.result(timeout=TIMEOUT + 10)
    assert event["event_id"] == sent["event_id"] and event["sender"] == alice.user_id
    # Persisted by the events stream writer, the process Synapse's own table names.
    writer, = [p.name for p in workers.worker_plan("balanced").with_role("events")]
    assert _psql(wh, f"select instance_name from events where event_id = '{sent['event_id']}'") == [writer]
    # The send went to the writer (balanced creates events where it persists them), the long poll that
    # returned it to the sync worker.
    send_path = f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/"
    sends = _served(wh, "PUT", send_path, since=before, prefix=True)
    assert [(e["group"], e["process"], e["status"]) for e in sends] == [("synapse_writer", "synapse-writer-1", "200")]
    syncs = _served(wh, "GET", "/_matrix/client/v3/sync", since=before)
    assert syncs and {(e["group"], e["process"]) for e in syncs} == {("synapse_sync", "synapse-sync-1")}
    assert _processed(wh, "synapse-sync-1", "GET", "/_matrix/client/v3/sync")
    assert _processed(wh, "synapse-writer-1", "PUT", send_path)
    assert not _processed(wh, "synapse", "GET", "/_matrix/client/v3/sync")


# (method, path template, JSON body or None, the worker meant for it): each routed request type of the preset.
ROUTED_REQUESTS = [
    ("GET", "/_matrix/client/versions", None, "synapse-client-1"),
    ("GET", "/_matrix/client/v3/joined_rooms", None, "synapse-client-1"),
    ("GET", "/_matrix/client/v3/rooms/{room}/members", None, "synapse-client-1"),
    ("GET", "/_matrix/client/v3/rooms/{room}/messages", None, "synapse-writer-1"),
    ("POST", "/_matrix/client/v3/keys/query", {"device_keys": {"{user}": []}}, "synapse-client-1"),
    ("PUT", "/_matrix/client/v3/rooms/{room}/state/m.room.topic/", {"topic": "routed"}, "synapse-writer-1"),
    ("GET", "/_matrix/federation/v1/version", None, "synapse-client-1"),
    ("PUT", "/_matrix/client/v3/rooms/{room}/typing/{user}", {"typing": True, "timeout": 1000}, "synapse-writer-1"),
    ("PUT", "/_matrix/client/v3/sendToDevice/m.test/{txn}", {"messages": {"{user}": {"*": {"hello": 1}}}},
     "synapse-writer-1"),
    ("PUT", "/_matrix/client/v3/user/{user}/account_data/m.test", {"routed": True}, "synapse-writer-1"),
    ("POST", "/_matrix/client/v3/rooms/{room}/read_markers", {"m.fully_read": "{event}"}, "synapse-writer-1"),
    ("POST", "/_matrix/client/v3/keys/upload", {}, "synapse-writer-1"),
    ("GET", "/_matrix/client/v3/pushrules/", None, "synapse-writer-1"),
    ("PUT", "/_matrix/client/v3/presence/{user}/status", {"presence": "online"}, "synapse-writer-1"),
    ("GET", "/_matrix/client/v3/devices", None, "synapse-writer-1"),
    ("GET", "/_matrix/client/v1/media/config", None, "synapse-media-1"),
    ("GET", "/_matrix/client/unstable/org.matrix.msc4140/delayed_events", None, "synapse"),
    ("GET", "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports", None, "synapse"),
]


def test_each_routed_request_type_reaches_the_worker_meant_for_it(worker_harness, users):
    wh = worker_harness
    alice, bob, room_id = users
    event_id = alice.call("PUT", f"/_matrix/client/v3/rooms/{quote(room_id)}/send/m.room.message/{secrets.token_hex(6)}",
                          json={"msgtype": "m.text", "body": "to mark read"})["event_id"]
    before = len(_routed(wh))
    values = {"{room}": room_id, "{user}": alice.user_id, "{txn}": secrets.token_hex(6), "{event}": event_id}

    def fill(text: str) -> str:
        for key, value in values.items():
            text = text.replace(key, value)
        return text

    for method, template, body, process in ROUTED_REQUESTS:
        path = fill(template)
        json_body = yaml.safe_load(fill(yaml.safe_dump(body))) if body is not None else None
        response = alice.request(method, path.replace(room_id, quote(room_id)), json=json_body)
        assert response.status_code == 200, f"{method} {path} via {process}: {response.status_code} {response.text[:300]}"
        served = _served(wh, method, path, since=before)
        assert [(e["process"], e["status"]) for e in served] == [(process, "200")], (method, path, served)
        assert _processed(wh, process, method, path), (method, path, process)


def test_media_upload_and_download_go_through_the_media_worker(worker_harness, users):
    wh = worker_harness
    alice, bob, _ = users
    content = secrets.token_bytes(4096)
    before = len(_routed(wh))
    uploaded = alice.call("POST", "/_matrix/media/v3/upload", params={"filename": "worker.bin"}, data=content,
                          headers={"Content-Type": "application/octet-stream"})
    server_name, media_id = uploaded["content_uri"].removeprefix("mxc://").split("/")
    download = f"/_matrix/client/v1/media/download/{server_name}/{media_id}"
    fetched = bob.request("GET", download)
    assert fetched.status_code == 200 and fetched.content == content
    for method, path in (("POST", "/_matrix/media/v3/upload"), ("GET", download)):
        assert [(e["group"], e["process"]) for e in _served(wh, method, path, since=before)] == \
            [("synapse_media", "synapse-media-1")], path
        assert _processed(wh, "synapse-media-1", method, path)
    # Stored on the media volume the media worker shares with the main process (and the backup).
    store = wh.root / "synapse" / "data" / "media_store" / "local_content" / media_id[:2] / media_id[2:4] / media_id[4:]
    assert store.read_bytes() == content


def test_the_bridge_receives_its_transactions_from_the_appservice_sender(worker_harness):
    wh = worker_harness
    if "whatsapp" in wh.bridges_not_booted:
        pytest.skip(wh.bridges_not_booted["whatsapp"])
    user = Client(wh, "bridged")
    bot = f"@{BRIDGE_SPECS['whatsapp'].bot_username}:{_config(wh)['server_name']}"
    room_id = user.call("POST", "/_matrix/client/v3/createRoom",
                        json={"preset": "trusted_private_chat", "is_direct": True, "invite": [bot]})["room_id"]
    deadline = time.monotonic() + TIMEOUT
    while bot not in user.call("GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/joined_members")["joined"]:
        assert time.monotonic() < deadline, "the bridge bot did not join the direct chat"
        time.sleep(0.3)
    sender, = [p.name for p in workers.worker_plan("balanced").with_role("appservice")]
    pushed = re.compile(r"push_bulk to http://127\.0\.0\.1:" + str(wh.ports.bridges["whatsapp"]) + " succeeded!")
    pushes_before = len(pushed.findall(_synapse_log(wh, sender)))
    sent = user.call("PUT", f"/_matrix/client/v3/rooms/{quote(room_id)}/send/m.room.message/{secrets.token_hex(6)}",
                     json={"msgtype": "m.text", "body": "help"})
    deadline = time.monotonic() + TIMEOUT
    replies = []
    while not replies:
        assert time.monotonic() < deadline, "the bridge bot did not answer help"
        context = user.call("GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/context/{quote(sent['event_id'])}",
                            params={"limit": 10})
        replies = [e for e in context["events_after"] if e["sender"] == bot and e["type"] == "m.room.message"]
        time.sleep(0.3)
    assert "login" in replies[0]["content"]["body"]
    # The bridge got the user's message in a transaction, and every transaction to it came from the
    # appservice sender ("push_bulk … succeeded!", synapse/appservice/api.py): none from another process.
    assert len(pushed.findall(_synapse_log(wh, sender))) > pushes_before
    assert not any(pushed.search(_synapse_log(wh, p)) for p in ["synapse", *wh.workers] if p != sender)
    assert "Starting appservice scheduler" not in _synapse_log(wh, "synapse")


def test_a_matrix_rtc_delayed_event_still_works_through_the_chain(worker_harness, users):
    """Element Call's call membership: a state event scheduled to be sent after a delay (MSC4140), kept
    alive with restarts; one is cancelled. Management goes to the main process, which sends it."""
    wh = worker_harness
    alice, _, room_id = users
    member_type = "org.matrix.msc3401.call.member"
    before = len(_routed(wh))

    def schedule(key: str, delay_ms: int) -> str:
        return alice.call("PUT", f"/_matrix/client/v3/rooms/{quote(room_id)}/state/{member_type}/{key}",
                          params={"org.matrix.msc4140.delay": delay_ms}, json={"left": key})["delay_id"]

    fires, cancelled = schedule(f"_{alice.user_id}_fires", 3000), schedule(f"_{alice.user_id}_cancelled", 3000)
    management = "/_matrix/client/unstable/org.matrix.msc4140/delayed_events"
    alice.call("POST", f"{management}/{fires}/restart", json={})
    alice.call("POST", f"{management}/{cancelled}/cancel", json={})
    listed = alice.call("GET", management)["delayed_events"]
    assert [e["delay_id"] for e in listed] == [fires]
    for path in (f"{management}/{fires}/restart", f"{management}/{cancelled}/cancel"):
        assert [(e["group"], e["process"]) for e in _served(wh, "POST", path, since=before)] == \
            [("synapse_main", "synapse")]
    state = f"/_matrix/client/v3/rooms/{quote(room_id)}/state/{member_type}/"
    deadline = time.monotonic() + TIMEOUT
    while alice.request("GET", state + quote(f"_{alice.user_id}_fires")).status_code != 200:
        assert time.monotonic() < deadline, "the delayed event was never sent"
        time.sleep(0.2)
    assert alice.call("GET", management)["delayed_events"] == []
    assert alice.request("GET", state + quote(f"_{alice.user_id}_cancelled")).status_code == 404
    event_id, = _psql(wh, f"select event_id from current_state_events where room_id = '{room_id}' "
                          f"and type = '{member_type}' and state_key = '_{alice.user_id}_fires'")
    writer, = [p.name for p in workers.worker_plan("balanced").with_role("events")]
    assert _psql(wh, f"select instance_name from events where event_id = '{event_id}'") == [writer]


def test_the_load_bench_loads_the_monolith_and_the_preset_with_real_traffic(harness, worker_harness, monkeypatch):
    """`bench --load`, small, as the live bench runs it on its boot (the preset's deployment is this
    session's, not a third boot): both deployments get real sends and long polls through their
    chains, and every figure it reports is backed by what Synapse stored and what the processes used."""
    from tests.integration import live_bench, load_bench

    class Borrowed:  # the session's worker deployment, which the bench must not stop
        def __getattr__(self, name):
            return getattr(worker_harness, name)

        def stop(self):
            pass

    monkeypatch.setattr(load_bench, "boot_preset", lambda preset: Borrowed() if preset == "balanced" else None)
    report = live_bench.measure(harness, joins=0, messages=0, warmup=0, load={
        "preset": "balanced", "senders": 3, "syncers": 2, "rooms": 2, "seconds": 1.5, "warmup": 0.5, "rounds": 1})
    assert set(report) == {"cold_boot_seconds", "load", "load_average", "cpus"}
    monolith, preset = report["load"]["phases"]
    assert (monolith["deployment"], preset["deployment"]) == ("monolith", "balanced")
    for phase, deployment in ((monolith, harness), (preset, worker_harness)):
        assert phase["error_count"] == 0, phase["errors"]
        assert phase["persisted"] > 0 and 0 < phase["delivered"] <= phase["sent"] * 2
        assert len(phase["send_to_sync"]) <= phase["delivered"] and all(0 < x < 30 for x in phase["send_to_sync"])
        rooms = ",".join(f"'{r}'" for r in phase["room_ids"])
        stored = deployment.psql_superuser("-d", "synapse", "-At", "-c", (
            "select count(*) from event_json j join events e using (event_id) where e.type = 'm.room.message' "
            f"and e.room_id in ({rooms}) and j.json::json->'content'->>'body' like '{phase['prefix']}-%'"))
        assert stored.returncode == 0 and int(stored.stdout) >= phase["persisted"], stored
        assert phase["cpu_seconds"]["synapse"] > 0 and phase["cpu_seconds"]["postgres"] > 0
        assert phase["cpu_seconds"]["load generator"] > 0
    assert set(preset["cpu_seconds"]) >= {*worker_harness.workers, "synapse-redis", "nginx", "proxy"}
    # commstack bench turns it into its table and ratio.
    from commstack.devtools import bench

    assert "balanced / monolith:" in "\n".join(bench.format_load(report["load"]))
    assert not any(name.startswith("synapse-") for name in monolith["cpu_seconds"])
    # The work really moved: the preset's sync worker answered the long polls, the writer persisted.
    assert preset["cpu_seconds"]["synapse-sync-1"] > 0 and preset["cpu_seconds"]["synapse-writer-1"] > 0


def test_the_redis_exporter_reads_the_workers_redis(worker_harness):
    """Monitoring with workers: the pinned redis_exporter (built from the Go module proxy) with its rendered
    flags and password file reads this deployment's Redis (redis_up 1), and a wrong password reads nothing."""
    import json

    import requests

    from components.matrix import monitoring
    from tests.integration import gobuild
    from tests.integration.harness import free_port, wait_until

    rendered = worker_harness.rendered
    passwords = rendered.text(monitoring.REDIS_EXPORTER, monitoring.REDIS_PASSWORD_FILE)
    for password, expected in ((None, "redis_up 1"), ("not-the-password", "redis_up 0")):
        port = free_port()
        command, file_content = loopback.redis_exporter_files(
            rendered.commands[monitoring.REDIS_EXPORTER], passwords, root=worker_harness.root,
            ports=worker_harness.ports, listen_port=port)
        if password is not None:
            file_content = json.dumps({key: password for key in json.loads(file_content)})
        worker_harness.write(monitoring.REDIS_EXPORTER, monitoring.REDIS_PASSWORD_FILE, file_content, mode=0o600)
        service = worker_harness.spawn(f"redis-exporter-{port}", [str(gobuild.binary("redis-exporter")), *command])
        try:
            wait_until("redis_exporter", lambda: requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok,
                       service.process, service.log)
            metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            assert expected in metrics.splitlines(), [line for line in metrics.splitlines() if "redis_up" in line]
        finally:
            service.process.terminate()
            service.process.wait(timeout=10)


def test_a_stopped_worker_is_routed_around_or_reported(worker_harness, users):
    """Last in the file: it stops two workers for good (nothing after this file uses the deployment)."""
    wh = worker_harness
    alice, bob, room_id = users
    before = len(_routed(wh))
    # The sync worker stops: nginx sends /sync to the main process meanwhile.
    assert wh.stop_worker("synapse-sync-1") == 0
    bob.call("GET", "/_matrix/client/v3/sync", params={"timeout": 0})
    served = _served(wh, "GET", "/_matrix/client/v3/sync", since=before)
    assert [(e["group"], e["tried"], e["status"]) for e in served] == [
        ("synapse_sync", ["synapse-sync-1", "synapse"], "200")]
    # The media worker stops: nobody else may serve media, so the client gets 502 and nginx's log names the worker.
    assert wh.stop_worker("synapse-media-1") == 0
    mark = len(_routed(wh))
    response = alice.request("GET", "/_matrix/client/v1/media/config")
    assert response.status_code == 502
    # Its routing access log line names it (nginx's error log keeps only critical entries, see docs/security.md).
    served = _served(wh, "GET", "/_matrix/client/v1/media/config", since=mark)
    assert [(e["group"], e["tried"], e["upstream_status"], e["status"]) for e in served] == [
        ("synapse_media", ["synapse-media-1"], "502", "502")]
