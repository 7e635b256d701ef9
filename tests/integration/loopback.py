"""The ONE place that adapts the program's rendered files for loopback.

The harness boots real programs on 127.0.0.1 without Docker, so a few
things that Docker provides must change: listener addresses and ports,
the container hostnames of upstreams, absolute paths inside containers,
where Traefik writes its access log and, for tests only, rate limits and
coturn's loopback-peer guard. Every other
byte is the program's rendered content, unmodified. Each adaptation below
says why in one line.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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
    signal_server: int = 0  # nothing listens here: Signal-Server (a JVM service) is not booted


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


def homeserver_config(config: dict, *, root: Path, ports: LoopbackPorts, data_dir: str = "/data") -> dict:
    """Synapse's homeserver.yaml for loopback."""
    adapted = _relocate(config, data_dir, root, "synapse")  # no /data volume outside Docker
    http_listeners = [listener for listener in adapted["listeners"] if listener.get("type") == "http"]
    assert len(http_listeners) == 1, "the harness expects one HTTP listener (client + federation)"
    # Docker's published port -> a free loopback port; no other interface.
    adapted["listeners"] = [{**http_listeners[0], "port": ports.synapse, "bind_addresses": [LOOPBACK]}]
    # Container hostname `postgres` -> the harness's PostgreSQL on loopback.
    adapted["database"] = {**adapted["database"],
                           "args": {**adapted["database"]["args"], "host": LOOPBACK, "port": ports.postgres}}
    adapted.update(TEST_RATE_LIMITS)  # tests only: no throttling of bursts
    return adapted


def log_config(config: dict, *, root: Path, data_dir: str = "/data") -> dict:
    """Synapse's log config: file handlers (if any) write under the temp dir."""
    return _relocate(config, data_dir, root, "synapse")


def appservice_registration(registration: dict, *, bridge_port: int) -> dict:
    """The bridge container's hostname -> the real bridge listening on a free loopback port."""
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
    # Container hostname `synapse` -> the harness's Synapse on loopback.
    adapted["homeserver"]["address"] = f"http://{LOOPBACK}:{ports.synapse}"
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
    for line in _conf_lines_without(text, {"listening-port", "tls-listening-port", "listening-ip", "relay-ip",
                                           "log-file", "pidfile"}):
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
    # Container hostname `synapse` -> the harness's Synapse on loopback.
    return text.replace(synapse_upstream, f"{LOOPBACK}:{ports.synapse}")


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
PROXY_UPSTREAMS = {"wellknown": "nginx", "element": "element", "signal-server": "signal_server"}
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
               repository: str | None = None, s3_credentials: str | None = None) -> str:
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
    for key in ("RESTIC_PASSWORD_FILE", "PGPASSFILE", "STAGING_DIR", "RESTIC_CACHE_DIR", "ACME_DIR"):
        if values.get(key):
            values[key] = str(host_path(job_root, "backup", values[key]))
    if values["RESTIC_REPOSITORY"].startswith("/"):
        values["RESTIC_REPOSITORY"] = str(host_path(job_root, "backup", values["RESTIC_REPOSITORY"]))
    if repository is not None:  # another repository for this run (moto's S3 on loopback)
        values["RESTIC_REPOSITORY"] = repository
    if s3_credentials is not None:
        values["S3_CREDENTIALS_FILE"] = s3_credentials
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
