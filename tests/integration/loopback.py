"""The ONE place that adapts the program's rendered files for loopback.

The harness boots real programs on 127.0.0.1 without Docker, so a few
things that Docker provides must change: listener addresses and ports,
the container hostnames of upstreams, absolute paths inside containers,
where Traefik writes its access log and, for tests only, rate limits, bcrypt rounds,
coturn's loopback-peer guard and one debug logger (which Synapse process sent an appservice
transaction). Every other
byte is the program's rendered content, unmodified. Each adaptation below
says why in one line.
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit, urlunsplit

import yaml

LOOPBACK = "127.0.0.1"

# Tests log in and send in bursts; Synapse's default rc_* limits would
# throttle them with M_LIMIT_EXCEEDED. Keys from synapse/config/ratelimiting.py (v1.163.2).
_UNLIMITED = {"per_second": 1000, "burst_count": 1000}
TEST_RATE_LIMITS = {
    "rc_message": _UNLIMITED,
    "rc_registration": _UNLIMITED,
    "rc_login": {"address": _UNLIMITED, "account": _UNLIMITED, "failed_attempts": _UNLIMITED},
    "rc_joins": {"local": _UNLIMITED, "remote": _UNLIMITED},
    "rc_room_creation": _UNLIMITED,
    "rc_admin_redaction": _UNLIMITED,
}

# Tests register and log in dozens of throwaway users; at Synapse's default of 12 rounds each
# password hash or check costs ~0.3 s of CPU. 4 is bcrypt's minimum: the same code path, cheaper.
TEST_PASSWORD_HASHING = {"bcrypt_rounds": 4}


@dataclass(frozen=True)
class LoopbackPorts:
    """The free loopback ports the harness picked for this run."""

    postgres: int
    synapse: int
    nginx: int
    turn: int
    turn_tls: int
    bridges: dict[str, int] = field(default_factory=dict)  # bridge kind -> the real bridge's appservice port
    redis: tuple[int, ...] = ()
    proxy: dict[str, int] = field(default_factory=dict)  # Traefik entry point name -> port
    element: int = 0  # the stand-in serving Element's rendered files
    signal_server: int = 0  # Signal-Server listens here only in test_signal_jvm.py (session-built jars)
    livekit: int = 0  # LiveKit's HTTP/WebSocket port (7880 in the container)
    livekit_rtc: int = 0  # LiveKit's one UDP media port (its share of 49160-49200 when deployed)
    lk_jwt: int = 0  # lk-jwt-service (8080 in the container); only booted in sessions that built it
    connect_proxy: int = 0  # the CONNECT tunnel that takes lk-jwt-service's HTTPS to the public names
    # Monitoring (components/matrix/monitoring.py): the metrics endpoints and the alert pipeline.
    synapse_metrics: int = 0  # Synapse's metrics listener (9000 in the container)
    livekit_metrics: int = 0  # LiveKit's prometheus.port (6789)
    prometheus: int = 0
    alertmanager: int = 0
    relay: int = 0  # the alert relay (8080)
    smtp: int = 0  # the test SMTP server (aiosmtpd) that stands in for commstack:smtpHost
    node_exporter: int = 0
    blackbox: int = 0
    # Synapse workers (a stack with commstack:synapseWorkers): the main process's replication
    # listener, each worker's one listener (by its name, synapse-<group>-<n>), and their Redis.
    synapse_replication: int = 0
    workers: dict[str, int] = field(default_factory=dict)
    synapse_redis: int = 0
    worker_metrics: dict[str, int] = field(default_factory=dict)  # each worker's metrics listener (monitoring on)


def host_path(root: Path, container: str, path: str) -> Path:
    """Where a file placed at `path` inside `container` lives on this machine
    (the layout `python -m commstack render` writes: DIR/<container>/<path>)."""
    return root / container / path.lstrip("/")


def _relocate(value: Any, prefix: str, root: Path, container: str) -> Any:
    """Absolute in-container paths under `prefix` -> the container's directory in the temp dir."""
    if isinstance(value, dict):
        return {k: _relocate(v, prefix, root, container) for k, v in value.items()}
    if isinstance(value, list):
        return [_relocate(v, prefix, root, container) for v in value]
    if isinstance(value, str) and (value == prefix or value.startswith(prefix + "/")):
        return str(host_path(root, container, value))
    return value


MEDIA_VOLUME = "/data/media_store"


def homeserver_config(config: dict, *, root: Path, ports: LoopbackPorts, data_dir: str = "/data",
                      container: str = "synapse") -> dict:
    """A Synapse process's homeserver.yaml for loopback (the main process's, or a worker's in `container`)."""
    adapted = _relocate(config, data_dir, root, container)  # no /data volume outside Docker
    # The media volume the main process and the media worker share -> one directory, the main process's.
    adapted["media_store_path"] = str(host_path(root, "synapse", MEDIA_VOLUME))
    if "worker_listeners" in adapted:
        listener, = [l for l in adapted["worker_listeners"] if l["type"] == "http"]
        # Its container's port -> a free loopback port of its own; no other interface.
        adapted["worker_listeners"] = [{**listener, "port": ports.workers[container], "bind_addresses": [LOOPBACK]}]
        # Its metrics listener (monitoring on): another free loopback port of its own.
        adapted["worker_listeners"] += [{**l, "port": ports.worker_metrics[container], "bind_addresses": [LOOPBACK]}
                                        for l in config["worker_listeners"] if l["type"] == "metrics"]
    else:
        http_listeners = [listener for listener in adapted["listeners"] if listener.get("type") == "http"]
        client = [l for l in http_listeners if l["resources"][0]["names"] != ["replication"]]
        replication = [l for l in http_listeners if l["resources"][0]["names"] == ["replication"]]
        assert len(client) == 1 and len(replication) <= 1, "the harness expects one client listener (+ replication)"
        # Docker's published port -> a free loopback port; no other interface.
        adapted["listeners"] = [{**client[0], "port": ports.synapse, "bind_addresses": [LOOPBACK]}]
        if replication:
            adapted["listeners"].append({**replication[0], "port": ports.synapse_replication,
                                         "bind_addresses": [LOOPBACK]})
        # The metrics listener (monitoring on): its container port -> a free loopback port, loopback only.
        adapted["listeners"] += [{**listener, "port": ports.synapse_metrics, "bind_addresses": [LOOPBACK]}
                                 for listener in config["listeners"] if listener.get("type") == "metrics"]
    if "instance_map" in adapted:
        # Container hostnames -> the processes' loopback ports.
        adapted["instance_map"] = {name: {"host": LOOPBACK, "port": ports.synapse_replication if name == "main"
                                          else ports.workers[name]} for name in adapted["instance_map"]}
    if "redis" in adapted:
        # Container hostname `synapse-redis` -> the harness's redis-server on loopback.
        adapted["redis"] = {**adapted["redis"], "host": LOOPBACK, "port": ports.synapse_redis}
    # Container hostname `postgres` -> the harness's PostgreSQL on loopback.
    adapted["database"] = {**adapted["database"],
                           "args": {**adapted["database"]["args"], "host": LOOPBACK, "port": ports.postgres}}
    if "email" in adapted:
        # commstack:smtpHost -> the harness's SMTP server, which speaks plain SMTP on loopback (no
        # certificate Synapse would trust): TLS requirements off for the test only.
        adapted["email"] = {**adapted["email"], "smtp_host": LOOPBACK, "smtp_port": ports.smtp, "force_tls": False,
                            "require_transport_security": False}
    adapted.update(TEST_RATE_LIMITS)  # tests only: no throttling of bursts
    adapted.update(TEST_PASSWORD_HASHING)  # tests only: cheap password hashes for throwaway users
    return adapted


def synapse_environment(envs: dict[str, str], *, root: Path, container: str = "synapse") -> dict[str, str]:
    """The Synapse container's environment for loopback: PYTHONPATH's in-container directory (the log
    redaction filter's module) -> the temp dir; the config path is given on the command line instead."""
    return {"PYTHONPATH": os.pathsep.join(str(host_path(root, container, d)) for d in envs["PYTHONPATH"].split(":"))}


# Tests only: each appservice transaction's sender logs the events it pushed ("push_bulk to … succeeded!
# events=[…]", synapse/appservice/api.py), so a test can tell which Synapse process sent it.
TEST_LOGGERS = {"synapse.appservice.api": {"level": "DEBUG"}}


def log_config(config: dict, *, root: Path, data_dir: str = "/data", container: str = "synapse") -> dict:
    """Synapse's log config: file handlers (if any) write under the temp dir."""
    adapted = _relocate(config, data_dir, root, container)
    adapted["loggers"] = {**adapted.get("loggers", {}), **TEST_LOGGERS}
    return adapted


def appservice_registration(registration: dict, *, bridge_port: Optional[int]) -> dict:
    """The bridge container's hostname -> the real bridge listening on a free loopback port. The alert
    relay's registration has no URL (Synapse pushes it nothing) and stays as rendered."""
    if registration.get("url") is None:
        return registration
    return {**registration, "url": f"http://{LOOPBACK}:{bridge_port}"}


def _postgres_on_loopback(uri: str, ports: LoopbackPorts) -> str:
    """postgres://user:pw@postgres:5432/db?... -> the same URI at the harness's PostgreSQL."""
    parts = urlsplit(uri)
    credentials, _, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{credentials}@{LOOPBACK}:{ports.postgres}"))


def bridge_config(config: dict, *, ports: LoopbackPorts, kind: str) -> dict:
    """A mautrix bridge's config.yaml for loopback: only addresses and ports change."""
    adapted = copy.deepcopy(config)
    appservice = adapted["appservice"]
    # Container hostname `synapse` -> the harness's Synapse on loopback; with workers the bridge
    # calls nginx (`wellknown`), which routes to the processes -> the harness's nginx.
    front = adapted["homeserver"]["address"] == "http://wellknown:80"
    adapted["homeserver"]["address"] = f"http://{LOOPBACK}:{ports.nginx if front else ports.synapse}"
    # Container hostname `postgres` -> the harness's PostgreSQL on loopback (user, password, db, options kept).
    adapted["database"]["uri"] = _postgres_on_loopback(adapted["database"]["uri"], ports)
    # The bridge's container address (what Synapse is told in the registration) -> its loopback port.
    appservice["address"] = f"http://{LOOPBACK}:{ports.bridges[kind]}"
    # 0.0.0.0 inside its container -> loopback only, on a free port instead of the bridge's default.
    appservice["hostname"], appservice["port"] = LOOPBACK, ports.bridges[kind]
    return adapted


def _conf_lines_without(text: str, keys: set[str]) -> list[str]:
    kept = []
    for line in text.splitlines():
        key = re.split(r"[=\s]", line.strip(), maxsplit=1)[0]
        if key not in keys:
            kept.append(line)
    return kept


def turnserver_conf(text: str, *, root: Path, ports: LoopbackPorts) -> str:
    """coturn's turnserver.conf for loopback."""
    lines = []
    # `prometheus`: Debian's coturn is built without Prometheus support (the coturn image has it), so
    # it would refuse the option; its scrape target is not booted here (NOT_BOOTED_TARGETS).
    for line in _conf_lines_without(text, {"listening-port", "tls-listening-port", "listening-ip", "relay-ip",
                                           "log-file", "pidfile", "prometheus"}):
        key, sep, value = line.partition("=")
        if key.strip() in ("cert", "pkey") and value.strip().startswith("/"):
            line = f"{key}{sep}{host_path(root, 'turn', value.strip())}"  # in-container path -> temp dir
        lines.append(line)
    lines += [
        f"listening-port={ports.turn}",  # free loopback ports instead of the published 3478/5349
        f"tls-listening-port={ports.turn_tls}",
        f"listening-ip={LOOPBACK}",  # never listen on this machine's real interfaces
        f"relay-ip={LOOPBACK}",  # relays on loopback so a local peer can reach them
        "allow-loopback-peers",  # tests only: both TURN clients are on 127.0.0.1
        f"log-file={host_path(root, 'turn', '/var/log/turnserver.log')}",  # not the system's /var/log
        f"pidfile={host_path(root, 'turn', '/var/run/turnserver.pid')}",
    ]
    return "\n".join(lines) + "\n"


def nginx_conf(text: str, *, ports: LoopbackPorts, synapse_upstream: str = "synapse:8008") -> str:
    """The well-known server's nginx site for loopback."""
    # The container's port 80 -> a free loopback port (other listen flags kept).
    text = re.sub(r"(?m)^(\s*listen\s+)(?:[\d.]+:)?80\b", rf"\g<1>{LOOPBACK}:{ports.nginx}", text)
    # Worker containers' hostnames (synapse-<group>-<n>:8083) -> each worker's loopback port.
    for worker, port in ports.workers.items():
        text = re.sub(rf"\b{re.escape(worker)}:\d+\b", f"{LOOPBACK}:{port}", text)
    # Upstream servers re-resolved by name (`resolve`, nginx 1.27.3+ as in the image): Debian's nginx
    # 1.22 lacks the parameter, and loopback addresses need no resolving.
    text = re.sub(r"(?m)^(\s*server\s+[^;]*?) resolve;", r"\1;", text)
    # Container hostname `synapse` -> the harness's Synapse on loopback.
    return text.replace(synapse_upstream, f"{LOOPBACK}:{ports.synapse}")


def redis_conf(text: str, *, root: Path, ports: LoopbackPorts, container: str = "synapse-redis") -> str:
    """Synapse's Redis's redis.conf for loopback."""
    lines = _conf_lines_without(text, {"port", "bind"})
    return "\n".join(lines + [
        f"port {ports.synapse_redis}",  # the container's 6379 -> a free loopback port
        f"bind {LOOPBACK}",  # every interface of its container -> loopback only
        f"dir {host_path(root, container, '/data')}",  # the image's working directory -> temp dir
    ]) + "\n"


def _without_options(command: list[str], options: set[str]) -> list[str]:
    kept, skip = [], False
    for word in command:
        if skip:
            skip = False
        elif word in options:
            skip = True
        else:
            kept.append(word)
    return kept


def redis_node_command(command: list[str], *, root: Path, container: str, port: int) -> list[str]:
    """A Signal Redis node's command line for loopback."""
    # Container DNS names (redis-0 …) do not resolve here: nodes announce loopback addresses.
    adapted = _without_options(command, {"--port", "--dir", "--bind", "--cluster-announce-hostname",
                                         "--cluster-preferred-endpoint-type"})
    return adapted + [
        "--port", str(port),  # one free loopback port per node instead of 6379 in each container
        "--bind", LOOPBACK,
        "--dir", str(host_path(root, container, "/data")),  # the node's volume -> temp dir
    ]


# Each Traefik upstream's container hostname -> the LoopbackPorts field of what stands in for it.
PROXY_UPSTREAMS = {"wellknown": "nginx", "element": "element", "signal-server": "signal_server",
                   "livekit": "livekit", "lk-jwt-service": "lk_jwt"}
# Where Traefik writes its access log in the temp dir (the container logs it to stdout).
TRAEFIK_ACCESS_LOG = "/var/log/traefik/access.log"
_UPSTREAM_URL = re.compile(r"^http://([a-z0-9.-]+)(?::\d+)?$")


def traefik_static(config: dict, *, root: Path, ports: LoopbackPorts, config_dir: str = "/etc/traefik") -> dict:
    """Traefik's traefik.yml for loopback."""
    adapted = _relocate(config, config_dir, root, "proxy")  # the file provider's path -> temp dir (a fresh copy)
    for name, entry_point in adapted["entryPoints"].items():
        # Published :80/:443 and the container-only ping port -> free loopback ports (KeyError: a new entry point).
        entry_point["address"] = f"{LOOPBACK}:{ports.proxy[name]}"
    # Its own file instead of stdout, so tests read access entries apart from Traefik's log.
    adapted["accessLog"] = {**adapted["accessLog"], "filePath": str(host_path(root, "proxy", TRAEFIK_ACCESS_LOG))}
    return adapted


def traefik_dynamic(config: dict, *, root: Path, ports: LoopbackPorts, config_dir: str = "/etc/traefik") -> dict:
    """Traefik's dynamic.yml for loopback."""
    adapted = _relocate(config, config_dir, root, "proxy")  # certificate files -> temp dir (a fresh copy)
    for name, service in adapted["http"]["services"].items():
        for server in service["loadBalancer"]["servers"]:
            matched = _UPSTREAM_URL.match(server["url"])
            if not matched or matched.group(1) not in PROXY_UPSTREAMS:
                raise ValueError(f"Traefik service {name} has upstream {server['url']} with no loopback stand-in")
            # Container hostname on the Docker network -> its loopback program or stand-in.
            server["url"] = f"http://{LOOPBACK}:{getattr(ports, PROXY_UPSTREAMS[matched.group(1)])}"
    return adapted


def backup_env(text: str, *, root: Path, job_root: Path, ports: LoopbackPorts, tools: list[str],
               repository: str | None = None, credentials: str | None = None,
               extra: dict[str, str] | None = None) -> str:
    """The backup job's env.sh for loopback: each `export KEY=value` line re-quoted after its change."""
    import shlex

    values = {}
    for line in text.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            values[key] = shlex.split(value)[0] if value else ""
    # Container hostname `postgres` -> the harness's PostgreSQL on loopback.
    values.update(PGHOST=LOOPBACK, PGPORT=str(ports.postgres))
    # The job's volumes and secret files -> the temp dir; media and the signing key are Synapse's own
    # files there (in Docker the container mounts Synapse's media volume and holds the key's copy).
    values["MEDIA_DIR"] = str(host_path(root, "synapse", "/data/media_store"))
    values["SIGNING_KEY_FILE"] = str(host_path(root, "synapse", "/data/signing.key"))
    for key in ("RESTIC_PASSWORD_FILE", "PGPASSFILE", "STAGING_DIR", "RESTIC_CACHE_DIR", "ACME_DIR", "METRICS_DIR"):
        if values.get(key):
            values[key] = str(host_path(job_root, "backup", values[key]))
    if values["RESTIC_REPOSITORY"].startswith("/"):
        values["RESTIC_REPOSITORY"] = str(host_path(job_root, "backup", values["RESTIC_REPOSITORY"]))
    if repository is not None:  # another repository for this run (moto's S3 or rest-server on loopback)
        values["RESTIC_REPOSITORY"] = repository
    if credentials is not None:  # an off-host repository's credentials file
        values["CREDENTIALS_FILE"] = credentials
    values.update(extra or {})  # what the render of an off-host target sets (HOST_PRUNES, RESTIC_CACERT)
    # restic and the Postgres clients: the image's -> the Go build of the pinned restic and Debian's.
    values["PATH"] = os.pathsep.join([*tools, os.environ.get("PATH", "")])
    return "".join(f"export {key}={shlex.quote(value)}\n" for key, value in values.items())


def backup_pgpass(text: str, *, ports: LoopbackPorts) -> str:
    """The job's .pgpass: the container hostname and port -> the harness's PostgreSQL."""
    return text.replace("postgres:5432:", f"{LOOPBACK}:{ports.postgres}:", 1)


def synapse_exec_argv(command: list[str], *, scripts: str, root: str, synapse_url: str) -> list[str]:
    """A command `docker exec` would run in the Synapse container, for this machine (after the interpreter)."""
    program, *args = command
    # The image's console script -> the same script from this interpreter's matrix-synapse.
    adapted = [str(Path(scripts) / program)]
    for word in args:
        if word.startswith("/data/"):
            word = str(host_path(Path(root), "synapse", word))  # the container's /data -> the temp dir
        elif word == "http://localhost:8008":
            word = synapse_url  # the container's own listener -> the harness's Synapse on loopback
        adapted.append(word)
    return adapted


# -- Signal-Server and registration-service on a real JVM (tests/integration/test_signal_jvm.py) ----------------

# aws-local answers HTTPS on 443 as AWS does (the SDKs call https://<service>.<region>.amazonaws.com with no port),
# so it gets a loopback address of its own instead of a free port: nothing else here listens on it.
AWS_LOCAL_ADDRESS = "127.77.0.1"


@dataclass(frozen=True)
class SignalJvmPorts:
    """Free loopback ports for the Signal JVM boot."""

    dynamodb: int
    metadata: int
    registration: int
    server: int
    admin: int


def jvm_hosts_file(aws_hostnames: list[str], aws_local_alias: str, registration_alias: str) -> str:
    """The Docker network's names -> loopback, for the JVMs only (-Djdk.net.hosts.file). A name not listed
    does not resolve at all, so nothing the server tries to reach can leave this machine."""
    lines = [f"{AWS_LOCAL_ADDRESS} {name}" for name in [*aws_hostnames, aws_local_alias]]
    lines.append(f"{LOOPBACK} {registration_alias}")
    return "\n".join(lines) + "\n"


def _redis_uri(uri: str, redis_port: int) -> str:
    return re.sub(r"^(rediss?://)[^/]+", rf"\g<1>{LOOPBACK}:{redis_port}", uri)


def signal_server_config(config: dict, *, ports: SignalJvmPorts, redis_port: int, cluster_entries, standalone_entries,
                         get_dotted) -> dict:
    """Signal-Server's config.base.yml for loopback (before the program's own assemble step fills it)."""
    import copy

    adapted = copy.deepcopy(config)
    for entry in cluster_entries:
        # Container names (redis-0:6379) -> the harness's first cluster node; Lettuce finds the rest from it.
        section = get_dotted(adapted, entry)
        section["configurationUri"] = _redis_uri(section["configurationUri"], redis_port)
    for entry in standalone_entries:
        section = get_dotted(adapted, entry)  # the pub/sub client: the same node
        section["uri"] = _redis_uri(section["uri"], redis_port)
    # registration-service's container port -> its free loopback port (the name resolves by jvm_hosts_file).
    adapted["registrationService"]["port"] = ports.registration
    # The rendered connectors' ports -> free loopback ports; a bind on every interface (the Docker target's
    # application port, which the proxy reaches over its network) -> loopback, as every harness program binds.
    # A loopback bind stays as rendered: test_signal_jvm checks where the admin port really listens.
    for connectors, port in (("applicationConnectors", ports.server), ("adminConnectors", ports.admin)):
        connector, = adapted["server"][connectors]
        connector["port"] = port
        if connector["bindHost"] in ("0.0.0.0", "::"):
            connector["bindHost"] = LOOPBACK
    return adapted


def signal_secrets_manifest(manifest: dict, *, root: Path, container: str, jar: str, generic_zk_source: str) -> dict:
    """The server container's secrets manifest for loopback."""
    adapted = _relocate(_relocate(manifest, "/etc/signal", root, container), "/var/lib/signal", root, container)
    store_kind, _, store_path = manifest["store"].partition(":")
    adapted["store"] = f"{store_kind}:{host_path(root, container, store_path)}"  # the secrets volume -> temp dir
    adapted["jar"] = jar  # the image's jar -> the jar built in this session
    adapted["generic_zk_source"] = generic_zk_source  # the image's COPY of configs/signal/GenericZkParams.java
    return adapted


def signal_server_start(script: str, *, root: Path, container: str, jar: str, tool: str, truststore: str,
                        hosts_file: str) -> str:
    """The server container's start command (first boot, assemble, trust store, java) for loopback."""
    script = script.replace("/opt/signal/signal_secrets.py", tool)  # the image's COPY of configs/signal/signal_secrets.py
    script = script.replace("/opt/signal/TextSecureServer.jar", jar)  # the image's jar -> the session's build
    script = script.replace("/tmp/aws-local-truststore", truststore)  # the container's /tmp -> temp dir
    script = re.sub(r"/etc/signal/[^\s]+", lambda m: str(host_path(root, container, m.group(0))), script)
    # The container network's DNS -> the loopback hosts file (jvm_hosts_file), for the server JVM.
    assert script.count("exec java ") == 1
    return script.replace("exec java ", f"exec java -Djdk.net.hosts.file={hosts_file} ")


def signal_server_environment(envs: dict[str, str], *, metadata_port: int) -> dict[str, str]:
    """The server container's environment for loopback: aws-local's metadata port 80 -> its free port."""
    adapted = dict(envs)
    adapted["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = re.sub(r":\d+$", f":{metadata_port}",
                                                           envs["AWS_EC2_METADATA_SERVICE_ENDPOINT"])
    return adapted


def aws_local_command(command: list[str], *, root: Path, container: str, python: str, ports: SignalJvmPorts) -> list[str]:
    """aws-local's command for loopback."""
    adapted = _relocate(command, "/etc/aws-local", root, container)  # its files -> temp dir
    adapted[0] = python  # the python image -> this interpreter (aws_local.py is stdlib only)
    for option, value in (("--metadata-port", str(ports.metadata)),  # port 80 -> a free port
                          ("--dynamodb", f"http://{LOOPBACK}:{ports.dynamodb}")):  # the container name -> loopback
        adapted[adapted.index(option) + 1] = value
    return adapted + ["--bind", AWS_LOCAL_ADDRESS]  # every interface -> its own loopback address


def moto_dynamodb_command(python: str, *, port: int) -> list[str]:
    """The dynamodb container for loopback: moto's server (Apache-2.0, pinned in requirements.txt) in DynamoDB
    Local's place, whose vendor licence is not open source (the machine's package guide says not to use it).
    Its own process, so the server's load never holds the pytest process's GIL; on loopback, on a free port."""
    return [python, "-m", "moto.server", "--host", LOOPBACK, "--port", str(port)]


def registration_config(config: dict, *, root: Path, container: str, port: int) -> dict:
    """registration-service's application.yml for loopback."""
    adapted = _relocate(config, "/etc/registration", root, container)
    ssl = adapted["grpc"]["server"].get("ssl")
    if ssl:  # its TLS files (file:/etc/registration/...) -> temp dir
        adapted["grpc"]["server"]["ssl"] = {k: "file:" + str(host_path(root, container, v.removeprefix("file:")))
                                            for k, v in ssl.items()}
    # Its container port on every interface -> a free loopback port.
    adapted["grpc"]["server"] = {**adapted["grpc"]["server"], "port": port, "host": LOOPBACK}
    return adapted


def livekit_config(config: dict, *, root: Path, ports: LoopbackPorts, turn_host: str, container: str = "livekit",
                   config_dir: str = "/etc/livekit") -> dict:
    """LiveKit's livekit.yaml for loopback. node_ip (the stack's publicIp, 127.0.0.1 in dev) stays."""
    adapted = _relocate(config, config_dir, root, container)  # key file and TURN secret file -> temp dir
    adapted["port"] = ports.livekit  # the container's 7880 -> a free loopback port
    adapted["bind_addresses"] = [LOOPBACK]  # never listen on this machine's real interfaces
    if "prometheus" in adapted:
        adapted["prometheus"] = {**adapted["prometheus"], "port": ports.livekit_metrics}  # 6789 -> a free port
    rtc = adapted["rtc"]
    rtc["udp_port"] = str(ports.livekit_rtc)  # the published 49193-49200 -> one free loopback UDP port
    # Gather (and bind the UDP mux) on loopback only; in a container the interfaces are Docker's.
    rtc["ips"] = {"includes": [f"{LOOPBACK}/32"]}
    rtc["enable_loopback_candidate"] = True
    for server in rtc.get("turn_servers", []):
        if server["host"] == turn_host and server["protocol"] in ("udp", "tcp"):
            server.update(host=LOOPBACK, port=ports.turn)  # the public TURN name -> the harness's coturn
        elif server["host"] == turn_host:
            server.update(host=LOOPBACK, port=ports.turn_tls)
    return adapted


def lk_jwt_environment(envs: dict[str, str], *, root: Path, ports: LoopbackPorts, extra_ca_dir: Path,
                       container: str = "lk-jwt-service") -> dict[str, str]:
    """lk-jwt-service's environment for loopback; LIVEKIT_URL and the homeserver list stay."""
    adapted = {key: (str(host_path(root, container, value)) if value.startswith("/etc/lk-jwt-service") else value)
               for key, value in envs.items()}  # the key file -> temp dir
    adapted["LIVEKIT_JWT_BIND"] = f"{LOOPBACK}:{ports.lk_jwt}"  # the container's :8080 -> a loopback port
    if "SSL_CERT_DIR" in adapted:
        # The system bundle stays; the program's certificate comes from the temp dir, beside the
        # test-only certificate of the stand-in "other" homeserver.
        adapted["SSL_CERT_DIR"] = f"/etc/ssl/certs:{extra_ca_dir}"
    # Its HTTPS to the public names (https://<domain>/.well-known, matrix.<domain>, rtc.<domain>)
    # goes through a CONNECT tunnel to the harness's Traefik: the connect_to of curl or doctor.
    # Names, TLS and certificates are checked as in production (Go's ProxyFromEnvironment).
    adapted["HTTPS_PROXY"] = f"http://{LOOPBACK}:{ports.connect_proxy}"
    adapted["NO_PROXY"] = ""
    return adapted


# -- monitoring (components/matrix/monitoring.py) ------------------------------------------------------

# Scrape jobs and probes whose program the harness cannot boot, and why; the loopback Prometheus leaves
# them out (a job that can never be up would only fire TargetDown into the tests' alert room). Their
# rules are still exercised by promtool (tests/integration/test_alert_rules.py).
NOT_BOOTED_TARGETS = {
    "postgres": "postgres_exporter: the Go module proxy refuses github.com/prometheus-community/postgres_exporter "
                "(403), so it cannot be built here",
    "turn": "Debian's coturn (what the harness boots) is built without Prometheus support; the coturn image has it",
    "signal": "Signal-Server is a JVM service the harness boots only in sessions (tests/integration/test_signal_jvm.py)",
}
# Tests only: scrape, evaluate and notify within a second or two instead of the deployed 30 s and 5 m.
TEST_SCRAPE_INTERVAL = "1s"
TEST_RULE_FOR = "1s"
TEST_GROUP_TIMING = {"group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"}


def monitoring_addresses(ports: LoopbackPorts, bridges: dict) -> dict[str, str]:
    """Container host:port -> where the harness runs it on loopback (scrape targets and probe URLs)."""
    from components.matrix import monitoring
    from components.matrix.livekit import METRICS_PORT as LIVEKIT_METRICS_PORT
    from components.matrix.proxy import METRICS_PORT as PROXY_METRICS_PORT
    from components.matrix.synapse import METRICS_PORT as SYNAPSE_METRICS_PORT

    addresses = {
        f"{monitoring.PROMETHEUS}:{monitoring.PROMETHEUS_PORT}": f"{LOOPBACK}:{ports.prometheus}",
        f"{monitoring.ALERTMANAGER}:{monitoring.ALERTMANAGER_PORT}": f"{LOOPBACK}:{ports.alertmanager}",
        f"{monitoring.RELAY}:{monitoring.RELAY_PORT}": f"{LOOPBACK}:{ports.relay}",
        f"{monitoring.NODE_EXPORTER}:{monitoring.NODE_EXPORTER_PORT}": f"{LOOPBACK}:{ports.node_exporter}",
        f"{monitoring.BLACKBOX_EXPORTER}:{monitoring.BLACKBOX_PORT}": f"{LOOPBACK}:{ports.blackbox}",
        f"synapse:{SYNAPSE_METRICS_PORT}": f"{LOOPBACK}:{ports.synapse_metrics}",
        f"proxy:{PROXY_METRICS_PORT}": f"{LOOPBACK}:{ports.proxy.get('metrics', 0)}",
        f"livekit:{LIVEKIT_METRICS_PORT}": f"{LOOPBACK}:{ports.livekit_metrics}",
    }
    for container, port in bridges.items():
        addresses[f"{container}:{port}"] = f"{LOOPBACK}:{ports.bridges[container.removeprefix('bridge-')]}"
    return addresses


def _readdress(text: str, addresses: dict[str, str]) -> str:
    for container_address, loopback_address in addresses.items():
        text = re.sub(rf"(?<![\w.-]){re.escape(container_address)}(?![\d])", loopback_address, text)
    return text


def prometheus_config(config: dict, *, root: Path, addresses: dict[str, str], booted_bridges: set[str]) -> dict:
    """prometheus.yml for loopback: targets at their loopback ports, short intervals, files in the temp dir."""
    adapted = _relocate(config, "/etc/prometheus", root, "prometheus")  # the rule file -> temp dir
    adapted["global"] = {**adapted["global"], "scrape_interval": TEST_SCRAPE_INTERVAL,
                         "evaluation_interval": TEST_SCRAPE_INTERVAL, "scrape_timeout": TEST_SCRAPE_INTERVAL}
    jobs = []
    for job in adapted["scrape_configs"]:
        if job["job_name"] in NOT_BOOTED_TARGETS:
            continue  # the program is not booted here (NOT_BOOTED_TARGETS says why)
        job = yaml.safe_load(_readdress(yaml.safe_dump(job), addresses))  # container names -> loopback ports
        if job["job_name"] == "bridges":  # only the bridges the harness boots (telegram needs a session build)
            for group in job["static_configs"]:
                group["targets"] = [t for t in group["targets"] if any(f":{port}/" in t for port in booted_bridges)]
        jobs.append(job)
    adapted["scrape_configs"] = jobs
    adapted["alerting"] = yaml.safe_load(_readdress(yaml.safe_dump(adapted["alerting"]), addresses))
    return adapted


def alert_rules(rules: dict) -> dict:
    """The rule file for loopback: every `for` one second, so a stopped program alerts within the test."""
    adapted = copy.deepcopy(rules)
    for group in adapted["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = TEST_RULE_FOR
    return adapted


def alertmanager_config(config: dict, *, root: Path, addresses: dict[str, str], ports: LoopbackPorts) -> dict:
    """alertmanager.yml for loopback: the relay at its loopback port, notifications within a second."""
    adapted = yaml.safe_load(_readdress(yaml.safe_dump(config), addresses))
    adapted = _relocate(adapted, "/etc/alertmanager", root, "alertmanager")  # the token file -> temp dir
    adapted["route"] = {**adapted["route"], **TEST_GROUP_TIMING}
    if "global" in adapted:
        # commstack:smtpHost -> the harness's plain-SMTP server on loopback (TLS requirement off, test only).
        adapted["global"] = {**adapted["global"], "smtp_smarthost": f"{LOOPBACK}:{ports.smtp}",
                             "smtp_require_tls": False, "smtp_force_implicit_tls": False}
    return adapted


def relay_config(config: dict, *, root: Path, ports: LoopbackPorts) -> dict:
    """The alert relay's settings for loopback: Synapse and its own listener on loopback ports."""
    adapted = _relocate(config, "/commstack", root, "alert-relay")  # token files -> temp dir
    adapted["homeserver"] = f"http://{LOOPBACK}:{ports.synapse}"  # container `synapse` -> the harness's
    adapted["listen"] = {"host": LOOPBACK, "port": ports.relay}  # 0.0.0.0:8080 -> loopback only
    return adapted


def node_exporter_command(command: list[str], *, root: Path, ports: LoopbackPorts) -> list[str]:
    """node_exporter's flags for loopback: this machine's own root (no bind mount of it at /host), the
    textfile directory in the temp dir, and a loopback listener."""
    from components.matrix import monitoring

    adapted = []
    for flag in command:
        if flag.startswith("--path.rootfs="):
            flag = "--path.rootfs=/"
        elif flag.startswith("--collector.textfile.directory="):
            flag = f"--collector.textfile.directory={host_path(root, monitoring.NODE_EXPORTER, monitoring.TEXTFILE_DIR)}"
        elif flag.startswith("--web.listen-address="):
            flag = f"--web.listen-address={LOOPBACK}:{ports.node_exporter}"
        adapted.append(flag)
    return adapted


def listen_on_loopback(command: list[str], port: int) -> list[str]:
    """`--web.listen-address=...` (Prometheus, Alertmanager, blackbox_exporter) -> loopback only."""
    return [f"--web.listen-address={LOOPBACK}:{port}" if flag.startswith("--web.listen-address=") else flag
            for flag in command]


def redis_exporter_files(command: list[str], passwords: str, *, root: Path, ports: LoopbackPorts,
                         listen_port: int) -> tuple[list[str], str]:
    """redis_exporter's flags and password file for loopback: Synapse's Redis (container `synapse-redis`) at
    the harness's port, the password file in the temp dir, a loopback listener."""
    from components.matrix import monitoring

    redis = f"redis://{LOOPBACK}:{ports.synapse_redis}"
    adapted = []
    for flag in command:
        if flag.startswith("--redis.addr="):
            flag = f"--redis.addr={redis}"  # container hostname -> the harness's redis-server
        elif flag.startswith("--redis.password-file="):
            flag = f"--redis.password-file={host_path(root, monitoring.REDIS_EXPORTER, monitoring.REDIS_PASSWORD_FILE)}"
        adapted.append(flag)
    # The file's key is the address it scrapes: the same move.
    rekeyed = {redis: password for password in json.loads(passwords).values()}
    return listen_on_loopback(adapted, listen_port), json.dumps(rekeyed)
