"""Synapse workers: each preset's processes, their homeserver.yaml (read by Synapse's own config
loader), the routes nginx takes to them (the real nginx, with stand-in upstreams), the connection
budget, the settings, and the whole program with workers on and off."""

from __future__ import annotations

import http.server
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from commstack.devtools import offline
from components.matrix import workers
from components.matrix.postgres import server_command
from components.matrix.synapse import render_homeserver_config
from components.matrix.wellknown import render_nginx_conf, well_known_client, well_known_server
from components.settings import SettingsError
from tests.components.matrix.test_synapse import load_with_synapse
from tests.conftest import evaluate, stack_config

CONTAINER = "docker:index/container:Container"
DB = {"user": "synapse", "password": "db-pw", "database": "synapse", "host": "postgres", "port": 5432}
REDIS = {"host": "synapse-redis", "port": 6379, "password": "redis-pw"}


def render(plan: workers.WorkerPlan, process: str = workers.MAIN, **overrides) -> dict:
    values = dict(server_name="example.org", public_baseurl="https://matrix.example.org/", database=DB,
                  registration="closed", federation=True, registration_shared_secret="rss",
                  macaroon_secret_key="mac", form_secret="form", workers=plan, process=process,
                  redis=REDIS if plan.enabled else None, replication_secret="repl" if plan.enabled else None)
    values.update(overrides)
    return render_homeserver_config(**values)


# -- the presets -------------------------------------------------------------------------------------


def test_the_presets_run_these_processes():
    assert workers.worker_plan("none").processes == ()
    balanced = workers.worker_plan("balanced")
    assert {p.name: p.roles for p in balanced.processes} == {
        "synapse-writer-1": ("events", "streams", "room"),
        "synapse-sync-1": ("sync",),
        "synapse-client-1": ("client", "federation_inbound"),
        "synapse-media-1": ("media",),
        "synapse-tasks-1": ("federation_sender", "pusher", "appservice", "user_dir", "background"),
    }
    specialized = workers.worker_plan("specialized")
    names = [p.name for p in specialized.processes]
    assert len(names) == len(set(names)) == 14
    assert [p.name for p in specialized.with_role("events")] == ["synapse-event-persister-1", "synapse-event-persister-2"]
    assert [p.name for p in specialized.with_role("sync")] == ["synapse-sync-1", "synapse-sync-2"]
    # Every role is somebody's, and each single-process role is one process's.
    for plan in (balanced, specialized):
        assert {r for p in plan.processes for r in p.roles} == set(workers.ROLES)
        for role, spec in workers.ROLES.items():
            if not spec.many:
                assert len(plan.with_role(role)) == 1, role


def test_counts_scale_only_the_groups_that_may_run_several():
    plan = workers.worker_plan("balanced", {"sync": 3, "client": 2})
    assert [p.name for p in plan.with_role("sync")] == ["synapse-sync-1", "synapse-sync-2", "synapse-sync-3"]
    assert len(plan.with_role("client")) == 2 and len(plan.with_role("events")) == 1
    assert workers.scalable_groups("balanced") == ["sync", "client"]
    assert workers.scalable_groups("none") == []
    with pytest.raises(ValueError, match="'writer' runs exactly one process"):
        workers.worker_plan("balanced", {"writer": 2})
    with pytest.raises(ValueError, match="no worker group 'room'"):
        workers.worker_plan("balanced", {"room": 2})
    with pytest.raises(ValueError, match="from 1 to 16"):
        workers.worker_plan("specialized", {"sync": 0})
    with pytest.raises(ValueError, match="from 1 to 16"):
        workers.worker_plan("specialized", {"sync": True})


@pytest.mark.parametrize("preset", ["balanced", "specialized"])
def test_every_process_config_is_one_synapse_accepts_and_they_agree(preset, tmp_path):
    plan = workers.worker_plan(preset)
    parsed = {}
    for name in [workers.MAIN, *(p.name for p in plan.processes)]:
        directory = tmp_path / name
        directory.mkdir()
        parsed[name] = load_with_synapse(render(plan, name), directory)
    main = parsed[workers.MAIN]
    assert main.worker.worker_app is None and main.worker.instance_name == "master"
    for process in plan.processes:
        config = parsed[process.name]
        assert config.worker.worker_app == workers.WORKER_APP and config.worker.instance_name == process.name
        listener, = config.worker.worker_listeners
        assert listener.port == workers.WORKER_PORT
        assert set(listener.http_options.resources[0].names) == set(process.resources)
    # Every process reads the same stream writers, and the duties land on exactly the processes meant.
    writers = {name: config.worker.writers for name, config in parsed.items()}
    assert len({repr(w) for w in writers.values()}) == 1
    events = writers[workers.MAIN].events
    assert events == [p.name for p in plan.with_role("events")]
    assert writers[workers.MAIN].typing == [plan.with_role("streams")[0].name]
    for duty, role in (("run_background_tasks", "background"), ("should_notify_appservices", "appservice"),
                       ("should_update_user_directory", "user_dir"), ("send_federation", "federation_sender"),
                       ("start_pushers", "pusher")):
        doing = {name for name, config in parsed.items() if getattr(config.worker, duty)}
        assert doing == {p.name for p in plan.with_role(role)}, duty
    loads_media = {name for name, config in parsed.items() if config.media.can_load_media_repo}
    assert loads_media == {plan.with_role("media")[0].name}
    # The main process answers replication on its own listener; workers know where.
    assert any("replication" in r.names for l in main.server.listeners for r in l.http_options.resources)
    for name, config in parsed.items():
        if name != workers.MAIN:
            assert config.worker.instance_map["master"].port == workers.MAIN_REPLICATION_PORT
            assert config.redis.redis_enabled and config.redis.redis_password == "redis-pw"
            assert config.worker.worker_replication_secret == "repl"


def test_every_process_gets_the_merged_features_of_bridges_and_calls():
    """The bridges' to-device and device-list pushes (MSC2409, MSC3202) and MatrixRTC's flags reach
    every process, the appservice sender's above all: worker configs come from the same merge."""
    plan = workers.worker_plan("balanced")
    transports = [{"type": "livekit", "livekit_service_url": "https://rtc.example.org/livekit/jwt"}]
    for name in [workers.MAIN, *(p.name for p in plan.processes)]:
        config = render(plan, name, app_service_config_files=["/data/appservices/whatsapp.yaml"],
                        matrix_rtc_transports=transports)
        assert config["experimental_features"] == {
            "msc2409_to_device_messages_enabled": True, "msc3202_transaction_extensions": True,
            "msc4143_enabled": True, "msc4222_enabled": True, "msc4354_enabled": True}, name
        assert config["max_event_delay_duration"] == "24h", name


def test_pool_sizes_come_from_the_preset():
    assert render(workers.worker_plan("none"))["database"]["args"]["cp_max"] == workers.MONOLITH_POOL
    plan = workers.worker_plan("balanced")
    pools = {name: render(plan, name)["database"]["args"]["cp_max"] for name in plan.pools}
    assert pools == {"main": 5, "synapse-writer-1": 10, "synapse-sync-1": 5, "synapse-client-1": 10,
                     "synapse-media-1": 3, "synapse-tasks-1": 5}
    assert workers.synapse_connection_limit(plan) == sum(pools.values()) + workers.ROLE_SLACK


def test_postgres_gets_room_for_every_pool_only_when_the_default_is_too_small():
    def budget(plan):
        limits = [workers.synapse_connection_limit(plan), 10, 10]  # two bridges
        return workers.max_connections(limits), limits

    for preset in ("none", "balanced"):
        connections, limits = budget(workers.worker_plan(preset))
        assert connections == 100 and sum(limits) + workers.SUPERUSER_SLOTS <= 100
        assert server_command(connections) == ["postgres"]  # the server keeps its own setting (and container)
    connections, limits = budget(workers.worker_plan("specialized", {"sync": 8}))
    assert connections > 100 and connections >= sum(limits) + workers.SUPERUSER_SLOTS
    assert server_command(connections) == ["postgres", "-c", f"max_connections={connections}"]
    with pytest.raises(ValueError, match="max_connections"):
        server_command(5)


def test_monolith_config_has_no_worker_keys():
    config = render(workers.worker_plan("none"))
    for key in ("redis", "instance_map", "stream_writers", "worker_app", "worker_replication_secret",
                "run_background_tasks_on", "enable_media_repo"):
        assert key not in config
    with pytest.raises(ValueError, match="no process"):
        render(workers.worker_plan("none"), "synapse-sync-1")
    with pytest.raises(ValueError, match="Redis"):
        render(workers.worker_plan("balanced"), redis=None)


def test_media_retention_is_rendered_only_as_set():
    config = render(workers.worker_plan("none"), media_retention={"remote_media_lifetime": "30d"})
    assert config["media_retention"] == {"remote_media_lifetime": "30d"}
    assert "media_retention" not in render(workers.worker_plan("none"))
    with pytest.raises(ValueError, match="media_retention"):
        render(workers.worker_plan("none"), media_retention={"local_lifetime": "1d"})


# -- routes -------------------------------------------------------------------------------------------

SAMPLE_ROUTES = {
    "/_matrix/client/v3/sync": "sync",
    "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync": "sync",
    "/_matrix/client/v3/rooms/!r:example.org/send/m.room.message/t1": "room",
    "/_matrix/client/v3/rooms/!r:example.org/state/m.room.name/": "room",
    "/_matrix/client/v3/rooms/!r:example.org/messages": "room",
    "/_matrix/client/v3/createRoom": "client",
    "/_matrix/client/v3/login": "client",
    "/_matrix/client/v3/keys/query": "client",
    "/_matrix/client/v3/rooms/!r:example.org/typing/@u:example.org": "streams",
    "/_matrix/client/v3/sendToDevice/m.room.encrypted/t2": "streams",
    "/_matrix/client/v3/keys/upload": "streams",
    "/_matrix/client/v3/user/@u:example.org/account_data/m.direct": "streams",
    "/_matrix/client/v3/rooms/!r:example.org/receipt/m.read/$e": "streams",
    "/_matrix/client/v3/pushrules/": "streams",
    "/_matrix/media/v3/upload": "media",
    "/_matrix/client/v1/media/download/example.org/abc": "media",
    "/_matrix/federation/v1/media/download/abc": "media",
    "/_matrix/federation/v1/send/txn1": "federation",
    "/_matrix/key/v2/query": "federation",
}
MAIN_ONLY = [
    "/_matrix/client/unstable/org.matrix.msc4140/delayed_events",
    "/_matrix/client/unstable/org.matrix.msc4140/delayed_events/syd_abc/restart",
    "/_matrix/client/unstable/org.matrix.msc4140/delayed_events/syd_abc/cancel",
    "/_matrix/client/unstable/org.matrix.msc4140/delayed_events/syd_abc",
    "/_matrix/client/v3/logout",
    "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports",
    "/_matrix/federation/v1/openid/userinfo",
    "/_synapse/client/pick_idp",
]


@pytest.mark.parametrize("preset,served_by", [
    ("balanced", {"sync": "synapse_sync", "room": "synapse_writer", "client": "synapse_client",
                  "streams": "synapse_writer", "media": "synapse_media", "federation": "synapse_client"}),
    ("specialized", {"sync": "synapse_sync", "room": "synapse_room", "client": "synapse_client_reader",
                     "streams": "synapse_stream_writer", "media": "synapse_media",
                     "federation": "synapse_federation_reader"}),
])
def test_each_endpoint_goes_to_its_worker_group_and_delayed_events_stay_on_main(preset, served_by):
    plan = workers.worker_plan(preset)
    for path, group in SAMPLE_ROUTES.items():
        assert workers.route_of(plan, path) == served_by[group], path
    for path in MAIN_ONLY:
        assert workers.route_of(plan, path) == workers.MAIN_UPSTREAM, path


def nginx_conf_for(plan: workers.WorkerPlan, listen: int, addresses: dict[str, int]) -> str:
    """The rendered server block with every Synapse address moved to a loopback stand-in (as the
    harness does; Debian's nginx predates `resolve`, which the image's nginx 1.29 has)."""
    conf = render_nginx_conf(server_name="example.org", matrix_host="matrix.example.org",
                             server_json=well_known_server("matrix.example.org", 443),
                             client_json=well_known_client("https://matrix.example.org/"),
                             synapse_upstream="http://synapse:8008", listen=f"127.0.0.1:{listen}",
                             trusted_proxies=["127.0.0.1/32"], workers=plan)
    assert re.search(r"server synapse-sync-1:8083 max_fails=1 fail_timeout=10s resolve;", conf)
    conf = conf.replace(" resolve;", ";").replace("resolver 127.0.0.11 valid=10s ipv6=off;", "")
    conf = conf.replace("resolver 127.0.0.11 valid=30s ipv6=off;", "")
    for address, port in addresses.items():
        conf = conf.replace(f" {address}", f" 127.0.0.1:{port}")
    return conf


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StandIn:
    """An HTTP server that answers every request with its own name (a Synapse process stand-in)."""

    def __init__(self, name: str):
        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                body = name.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = _answer

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def run_nginx(tmp_path: Path, conf: str) -> subprocess.Popen:
    (tmp_path / "matrix.conf").write_text(conf)
    temp = " ".join(f"{k}_temp_path {tmp_path / k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp_path / "nginx.conf").write_text(
        f"daemon off;\npid {tmp_path / 'nginx.pid'};\nerror_log {tmp_path / 'error.log'} notice;\nevents {{}}\n"
        f"http {{ access_log off; {temp} include {tmp_path / 'matrix.conf'}; }}\n")
    checked = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", "stderr"],
                             capture_output=True, text=True, timeout=20)
    assert checked.returncode == 0, checked.stderr
    return subprocess.Popen(["nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", "stderr"],
                            stdout=open(tmp_path / "stdout.log", "wb"), stderr=subprocess.STDOUT)


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed")
def test_real_nginx_routes_sticks_and_falls_back_as_planned(tmp_path: Path):
    plan = workers.worker_plan("balanced", {"sync": 2})
    names = ["synapse", *(p.name for p in plan.processes)]
    stand_ins = {name: StandIn(name) for name in names}
    addresses = {"synapse:8008": stand_ins["synapse"].port,
                 **{p.address: stand_ins[p.name].port for p in plan.processes}}
    port = free_port()
    nginx = run_nginx(tmp_path, nginx_conf_for(plan, port, addresses))

    def served(method: str, path: str, token: str = "") -> str:
        url = f"http://127.0.0.1:{port}{path}"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = b"{}" if method in ("PUT", "POST") else None
        for _ in range(100):
            try:
                request = urllib.request.Request(url, data=data, method=method, headers=headers)
                return urllib.request.urlopen(request, timeout=5).read().decode()
            except urllib.error.HTTPError as error:
                return str(error.code)
            except (ConnectionError, urllib.error.URLError):
                time.sleep(0.05)
        raise AssertionError((tmp_path / "stdout.log").read_text())

    try:
        assert served("GET", "/_matrix/client/v3/createRoom") == "synapse-client-1"
        # balanced creates events where it persists them: the writer.
        assert served("PUT", "/_matrix/client/v3/rooms/!r:x/send/m.room.message/1") == "synapse-writer-1"
        assert served("PUT", "/_matrix/client/v3/rooms/!r:x/typing/@a:x") == "synapse-writer-1"
        assert served("POST", "/_matrix/media/v3/upload") == "synapse-media-1"
        assert served("GET", "/_matrix/federation/v1/version") == "synapse-client-1"
        assert served("POST", "/_matrix/client/unstable/org.matrix.msc4140/delayed_events/x/restart") == "synapse"
        assert served("GET", "/_matrix/client/v3/logout") == "synapse"
        # /sync sticks to one worker per user: every token of a user (their localpart's prefix), the
        # header or the query parameter; users spread over both sync workers.
        chosen = {}
        for user in range(12):
            localpart = f"dXNlc{user}"
            seen = {served("GET", "/_matrix/client/v3/sync", f"syt_{localpart}_{t}abc_0x{t}") for t in range(3)}
            seen.add(served("GET", f"/_matrix/client/v3/sync?access_token=syt_{localpart}_q_0"))
            assert len(seen) == 1, (user, seen)
            chosen[user] = seen.pop()
        assert set(chosen.values()) == {"synapse-sync-1", "synapse-sync-2"}
        # A stopped worker: its group's other member takes its users, and with a lone worker the main
        # process stands in where it can; where it cannot (media), nginx answers 502 and logs it.
        stand_ins["synapse-sync-1"].stop()
        moved = [u for u, worker in chosen.items() if worker == "synapse-sync-1"]
        for user in moved:
            assert served("GET", "/_matrix/client/v3/sync", f"syt_dXNlc{user}_z_0") == "synapse-sync-2"
        stand_ins["synapse-client-1"].stop()
        assert served("POST", "/_matrix/client/v3/createRoom") == "synapse"
        stand_ins["synapse-media-1"].stop()
        assert served("POST", "/_matrix/media/v3/upload") == "502"
        # The access log names the group and the worker that failed (nginx's error log keeps only
        # critical entries: its error entries quote the request line, query string and all).
        def logged(pattern: str) -> str:
            """The access log once it has the line (nginx writes it just after the response)."""
            for _ in range(100):
                log = (tmp_path / "stdout.log").read_text()
                if re.search(pattern, log):
                    return log
                time.sleep(0.05)
            raise AssertionError(f"no {pattern!r} in nginx's access log:\n{log}")

        media_port = stand_ins["synapse-media-1"].port
        logged(rf'"POST /_matrix/media/v3/upload" 502 synapse_media 127\.0\.0\.1:{media_port} 502')
        # The access log names the group and the process (address) that served each request, without queries.
        log = logged(rf'"GET /_matrix/client/v3/sync" 200 synapse_sync 127\.0\.0\.1:{stand_ins["synapse-sync-2"].port}')
        assert "access_token" not in log
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)
        for stand_in in stand_ins.values():
            if stand_in.server.socket.fileno() != -1:
                stand_in.stop()


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed")
def test_real_nginx_accepts_the_specialized_routing(tmp_path: Path):
    plan = workers.worker_plan("specialized")
    conf = nginx_conf_for(plan, free_port(), {p.address: 9 for p in plan.processes} | {"synapse:8008": 9})
    (tmp_path / "matrix.conf").write_text(conf)
    (tmp_path / "nginx.conf").write_text(f"pid {tmp_path / 'nginx.pid'};\nerror_log stderr;\nevents {{}}\n"
                                         f"http {{ access_log off; include {tmp_path / 'matrix.conf'}; }}\n")
    result = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", "stderr"],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    # Several room workers share rooms by room ID, sync workers by user, federation readers by origin.
    assert "hash $synapse_user consistent;" in conf and "hash $remote_addr" not in conf
    plan = workers.worker_plan("specialized", {"room": 2, "federation-reader": 2})
    conf = nginx_conf_for(plan, 1, {})
    assert "hash $synapse_room consistent;" in conf and "hash $remote_addr consistent;" in conf


# -- settings -------------------------------------------------------------------------------------------

BAD_SETTINGS = [
    ({"synapseWorkers": "all"}, "commstack:synapseWorkers", "must be one of none, balanced, specialized",
     "pulumi config set commstack:synapseWorkers none"),
    ({"synapseWorkers": "balanced", "synapseWorkerCounts": "sync=2"}, "commstack:synapseWorkerCounts",
     "must be a JSON object", "pulumi config set commstack:synapseWorkerCounts '{\"sync\":2}'"),
    ({"synapseWorkers": "balanced", "synapseWorkerCounts": '{"writer": 2}'}, "commstack:synapseWorkerCounts",
     "'writer' runs exactly one process", "pulumi config set commstack:synapseWorkerCounts '{\"sync\":2}'"),
    ({"synapseWorkers": "balanced", "synapseWorkerCounts": '{"sync": 100}'}, "commstack:synapseWorkerCounts",
     "from 1 to 16", "pulumi config set commstack:synapseWorkerCounts '{\"sync\":2}'"),
    ({"synapseWorkerCounts": '{"sync": 2}'}, "commstack:synapseWorkerCounts", "it runs no workers",
     "pulumi config set commstack:synapseWorkerCounts '{}'"),
    ({"mediaRetentionRemote": "30 days"}, "commstack:mediaRetentionRemote", "not a lifetime such as 30d",
     "pulumi config set commstack:mediaRetentionRemote 30d"),
    ({"mediaRetentionLocal": "0d"}, "commstack:mediaRetentionLocal", "not a lifetime such as 30d",
     "pulumi config set commstack:mediaRetentionLocal forever"),
    ({"synapseWorkers": "balanced", "containerMemory": '{"synapse-sync-9": "1g"}'}, "commstack:containerMemory",
     "no container is named synapse-sync-9", "pulumi config set commstack:containerMemory"),
]


@pytest.mark.parametrize("overrides,key,what,fix", BAD_SETTINGS, ids=[c[1] + ":" + c[2][:20] for c in BAD_SETTINGS])
def test_bad_worker_and_media_settings_give_clear_errors_before_any_resource(overrides, key, what, fix):
    record = offline.Evaluation(stack="dev")
    with pytest.raises(SettingsError) as raised:
        offline.evaluate("dev", config=stack_config("dev", **overrides), record=record)
    lines = [p for p in raised.value.problems if p.startswith(f"{key}:")]
    assert any(what in line and fix in line for line in lines), raised.value.problems
    assert record.registrations == []


# -- the whole program ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def monolith() -> offline.Evaluation:
    return evaluate("dev", bridges='["whatsapp"]')


@pytest.fixture(scope="module")
def balanced() -> offline.Evaluation:
    return evaluate("dev", bridges='["whatsapp"]', synapseWorkers="balanced",
                    containerMemory='{"synapse-sync-1": "1536m"}')


def containers(ev: offline.Evaluation) -> dict[str, dict]:
    return {reg.plain_inputs["name"]: reg.plain_inputs for reg in ev.of_type(CONTAINER)}


def uploaded(props: dict, path: str) -> str:
    return next(u["content"] for u in props["uploads"] if u["file"] == path)


def networks(props: dict) -> set[str]:
    """A container's networks, without its own `metrics-<container>` network (Prometheus's way in,
    components/matrix/monitoring.py), which every scraped container has."""
    return {n["name"].removeprefix("commstack-matrix-") for n in props["networksAdvanced"]
            if not n["name"].removeprefix("commstack-matrix-").startswith("metrics-")}


def test_each_worker_is_a_hardened_service_with_its_own_config_health_and_memory(balanced):
    found = containers(balanced)
    plan = workers.worker_plan("balanced")
    main = yaml.safe_load(uploaded(found["synapse"], "/data/homeserver.yaml"))
    assert main["instance_map"]["main"] == {"host": "synapse", "port": workers.MAIN_REPLICATION_PORT}
    for process in plan.processes:
        props = found[process.name]
        config = yaml.safe_load(uploaded(props, "/data/homeserver.yaml"))
        assert config["worker_name"] == process.name and config["stream_writers"] == main["stream_writers"]
        assert config["database"]["args"]["cp_max"] == process.pool
        assert {u["file"] for u in props["uploads"]} == {u["file"] for u in found["synapse"]["uploads"]}
        assert uploaded(props, "/data/signing.key") == uploaded(found["synapse"], "/data/signing.key")
        assert "SYNAPSE_WORKER=synapse.app.generic_worker" in props["envs"]
        assert props["healthcheck"]["tests"] == ["CMD-SHELL", f"curl -fSs http://localhost:{workers.WORKER_PORT}/health || exit 1"]
        assert props["securityOpts"] == ["no-new-privileges:true"] and props["capabilities"]["drops"] == ["ALL"]
        expected = {"CHOWN", "SETGID", "SETUID"} if "media" in process.roles else {"SETGID", "SETUID"}
        assert set(props["capabilities"]["adds"]) == expected, process.name
        memory = 1536 if process.name == "synapse-sync-1" else process.memory_mb
        assert props["memory"] == props["memorySwap"] == memory, process.name
        assert props["restart"] == "unless-stopped" and not props.get("ports")
    # The workers start after the main process, which migrates the schema.
    main_urn = next(r.urn for r in balanced.of_type(CONTAINER) if r.plain_inputs["name"] == "synapse")
    for reg in balanced.of_type(CONTAINER):
        if reg.plain_inputs["name"] in {p.name for p in plan.processes}:
            assert main_urn in reg.dependencies


def test_workers_join_only_the_networks_their_roles_need_and_redis_only_theirs(balanced):
    found = containers(balanced)
    assert networks(found["synapse-redis"]) == {"replication"}

    def roles(name: str) -> set:  # each process also has its metrics-<process> network (monitoring on)
        return networks(found[name]) - {f"metrics-{name}"}

    # The writer creates events too, which may mean asking other homeservers (a remote join).
    assert roles("synapse-writer-1") == {"database", "replication", "synapse", "egress"}
    assert roles("synapse-sync-1") == {"database", "replication", "synapse"}
    assert roles("synapse-tasks-1") == {"database", "replication", "egress", "appservice"}
    assert roles("synapse-media-1") == {"database", "replication", "synapse", "egress"}
    members = {name for name, props in found.items() if "replication" in networks(props)}
    # redis_exporter reads Redis there (monitoring on).
    assert members == {"synapse", "synapse-redis", "redis-exporter", *(p.name for p in workers.worker_plan("balanced").processes)}
    network = next(r for r in balanced.of_type("docker:index/network:Network")
                   if r.plain_inputs["name"] == "commstack-matrix-replication")
    assert network.plain_inputs["internal"] is True
    # Redis keeps nothing and asks for the password the processes are given.
    redis = found["synapse-redis"]
    assert not redis.get("volumes") and redis["user"] == "999:999" and redis["capabilities"]["adds"] == []
    conf = uploaded(redis, "/usr/local/etc/redis/redis.conf")
    password = re.search(r"^requirepass (\S+)$", conf, re.M).group(1)
    assert yaml.safe_load(uploaded(found["synapse"], "/data/homeserver.yaml"))["redis"]["password"] == password
    assert 'save ""' in conf and "appendonly no" in conf


def test_the_bridges_reach_synapse_through_nginx_with_workers(monolith, balanced):
    def address(ev):
        config = yaml.safe_load(uploaded(containers(ev)["bridge-whatsapp"], "/data/config.yaml"))
        return config["homeserver"]["address"]

    assert address(monolith) == "http://synapse:8008"
    assert address(balanced) == "http://wellknown:80"
    assert "appservice" in networks(containers(balanced)["wellknown"])
    assert "appservice" not in networks(containers(monolith)["wellknown"])
    conf = uploaded(containers(balanced)["wellknown"], "/etc/nginx/conf.d/default.conf")
    assert "proxy_pass http://$synapse_upstream_group;" in conf
    assert "server synapse-media-1:8083 max_fails=1 fail_timeout=10s resolve;" in conf


def test_postgres_limits_each_role(balanced):
    init = uploaded(containers(balanced)["postgres-init"], "/commstack/init.sql")
    plan = workers.worker_plan("balanced")
    assert f"CONNECTION LIMIT {workers.synapse_connection_limit(plan)} PASSWORD" in init
    assert re.search(r"ALTER ROLE mautrix_whatsapp .* CONNECTION LIMIT 10 PASSWORD", init)


def test_the_backup_stops_every_synapse_process_before_a_restore(balanced):
    labels = {label["label"]: label["value"] for label in containers(balanced)["backup"]["labels"]}
    stopped = labels["commstack.backup.stop-before-restore"].split(",")
    assert stopped[:6] == ["synapse", *(p.name for p in workers.worker_plan("balanced").processes)]


def test_the_media_volume_is_the_main_process_and_media_worker_s(balanced):
    found = containers(balanced)
    volume, = [r for r in balanced.of_type("docker:index/volume:Volume") if r.plain_inputs["name"] == "synapse-media"]
    for name in ("synapse", "synapse-media-1"):
        assert [m["volumeName"] for m in found[name]["volumes"]] == [volume.plain_outputs["name"]], name
    assert not any(found[p]["volumes"] for p in ("synapse-sync-1", "synapse-writer-1", "synapse-tasks-1"))


STATEFUL = {"docker:index/volume:Volume", "tls:index/privateKey:PrivateKey", "random:index/randomPassword:RandomPassword"}


def test_turning_workers_on_and_off_keeps_every_stateful_resource_as_it_is(monolith, balanced):
    """One `pulumi up` either way: every volume, key and generated secret keeps its URN and inputs, so
    the engine neither replaces nor deletes any of them; only containers, Redis and a network come and go."""
    def stateful(ev):
        return {r.urn: r for r in ev.registrations if r.type in STATEFUL}

    before, after = stateful(monolith), stateful(balanced)
    added = set(after) - set(before)
    assert set(before) <= set(after)
    # Workers add only their generated secrets (replication, Redis), never a volume or a key.
    assert {after[u].type for u in added} == {"random:index/randomPassword:RandomPassword"}
    assert sorted(u.rsplit("::", 1)[1] for u in added) == ["matrix-synapse-redis-password",
                                                           "matrix-synapse-replication-secret"]
    for urn, reg in before.items():
        assert after[urn].inputs == reg.inputs, urn
        if reg.type == "docker:index/volume:Volume":
            assert reg.protect and reg.retain_on_delete and after[urn].protect
    # No resource of the monolith changes its URN (no rename, so no aliases are needed).
    kept = {r.urn for r in monolith.registrations} - {r.urn for r in balanced.registrations}
    assert kept == set(), kept
    # Going back to none removes only what workers added, none of it stateful beyond those two secrets.
    removed = {r.urn: r for r in balanced.registrations if r.urn not in {m.urn for m in monolith.registrations}}
    assert {r.type for r in removed.values()} <= {CONTAINER, "docker:index/remoteImage:RemoteImage",
                                                  "docker:index/network:Network", "commstack:matrix:SynapseRedis",
                                                  "random:index/randomPassword:RandomPassword"}
    assert not any(r.protect for r in removed.values())
