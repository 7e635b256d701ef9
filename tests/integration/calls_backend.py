"""MatrixRTC on loopback: boots the program's LiveKit (and lk-jwt-service, when this session has
built it) beside the harness, from the rendered files adapted by loopback.py.

LiveKit server is built from the Go module proxy at the pinned tag (gobuild, `livekit-server`).
lk-jwt-service's go.mod declares the module `lk-jwt-service`, not a path the Go module proxy can
serve (and the proxy refuses github.com/element-hq/lk-jwt-service, 403), so it cannot be built in
CI; a session that built it from the pinned tag's source points COMMSTACK_LK_JWT_SERVICE_BIN at the
binary, and the tests that need it skip without it, saying so.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Optional

import requests
import yaml

from tests.integration import gobuild, loopback
from tests.integration.loopback import LOOPBACK, host_path

LIVEKIT = "livekit"
LK_JWT = "lk-jwt-service"
LIVEKIT_CONFIG = "/etc/livekit/livekit.yaml"
LK_JWT_BINARY_ENV = "COMMSTACK_LK_JWT_SERVICE_BIN"
LK_JWT_SKIP_REASON = (
    "lk-jwt-service cannot be built in CI: its go.mod declares the module `lk-jwt-service` (not a "
    "resolvable path) and the Go module proxy refuses github.com/element-hq/lk-jwt-service (403). "
    f"Build it from the pinned tag's source in a session and set {LK_JWT_BINARY_ENV} to the binary.")
# A homeserver that is not ours, for the full-access check: answers OpenID userinfo for anyone.
FOREIGN_SERVER_NAME = "elsewhere.localhost"


def lk_jwt_binary() -> Optional[str]:
    path = os.environ.get(LK_JWT_BINARY_ENV)
    return path if path and os.access(path, os.X_OK) else None


def container_envs(rendered, container: str) -> dict[str, str]:
    """The rendered container's environment (Docker's KEY=VALUE list) as a dict."""
    return rendered.env_of(container)


class ConnectTunnel:
    """An HTTP CONNECT proxy on loopback that sends each public `host:443` to where it listens
    here (Traefik, or the foreign homeserver stand-in) and refuses every other destination."""

    def __init__(self, port: int, targets: dict[str, int]):
        self.targets = targets
        self.tunnelled: list[str] = []
        self.server = socket.create_server((LOOPBACK, port))
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self._stopped = False
        self.thread.start()

    def _serve(self) -> None:
        while not self._stopped:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(client,), daemon=True).start()

    def _tunnel(self, client: socket.socket) -> None:
        try:
            self._pipe(client)
        except OSError:  # either side hung up mid-stream
            pass

    def _pipe(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 8192:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            method, authority, *_ = head.split(b"\r\n", 1)[0].decode().split(" ")
            port = self.targets.get(authority)
            if method != "CONNECT" or port is None:
                client.sendall(b"HTTP/1.1 403 Forbidden\r\n\r\n")
                return
            self.tunnelled.append(authority)
            with socket.create_connection((LOOPBACK, port), timeout=10) as upstream:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                sockets = [client, upstream]
                while True:
                    readable, _, _ = select.select(sockets, [], [], 30)
                    if not readable:
                        return
                    for source in readable:
                        data = source.recv(65536)
                        if not data:
                            return
                        (upstream if source is client else client).sendall(data)

    def stop(self) -> None:
        self._stopped = True
        self.server.close()


def _self_signed(host: str, directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for the foreign homeserver stand-in (test only)."""
    from tests.certificates import self_signed

    return self_signed(directory, host, dns=(host,), stem=host)


class ForeignHomeserver:
    """Stands in for a homeserver that is not ours: its well-known delegates to itself and its
    OpenID userinfo vouches for @visitor:<its name> for any token, over TLS with its own certificate."""

    def __init__(self, port: int, ca_dir: Path, server_name: str = FOREIGN_SERVER_NAME):
        self.server_name = server_name
        self.user_id = f"@visitor:{server_name}"
        cert, key = _self_signed(server_name, ca_dir)
        user_id = self.user_id

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/.well-known/matrix/server":
                    body = {"m.server": f"{server_name}:443"}
                elif self.path.startswith("/_matrix/federation/v1/openid/userinfo"):
                    body = {"sub": user_id}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, port), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class CallsServices:
    """What boot() started, for the harness to stop."""

    tunnel: Optional[ConnectTunnel] = None
    foreign: Optional[ForeignHomeserver] = None
    lk_jwt_booted: bool = False
    lk_jwt_env: dict = field(default_factory=dict)  # the environment it was started with (for a second instance)

    def stop(self) -> None:
        for part in (self.tunnel, self.foreign):
            if part is not None:
                part.stop()


def boot(harness, spawn: Callable, wait_until: Callable) -> CallsServices:
    """Boots LiveKit (and lk-jwt-service when built) from the rendered files; returns the stand-ins."""
    rendered, root, ports = harness.rendered, harness.root, harness.ports
    services = CallsServices()
    if LIVEKIT not in rendered.files:
        return services
    turn_host = yaml.safe_load(rendered.text(LIVEKIT, LIVEKIT_CONFIG))["rtc"]["turn_servers"][0]["host"]
    for path, content in rendered.files[LIVEKIT].items():
        if path == LIVEKIT_CONFIG:
            content = yaml.safe_dump(loopback.livekit_config(yaml.safe_load(content), root=root, ports=ports,
                                                             turn_host=turn_host), sort_keys=False)
        harness.write(LIVEKIT, path, content, mode=0o600)  # LiveKit refuses key files others can read
    livekit = spawn(LIVEKIT, [str(gobuild.binary("livekit-server")), "--config",
                              str(host_path(root, LIVEKIT, LIVEKIT_CONFIG))])
    wait_until("livekit", lambda: requests.get(f"http://{LOOPBACK}:{ports.livekit}/", timeout=1).ok,
               livekit.process, livekit.log)

    binary = lk_jwt_binary()
    if binary is None or LK_JWT not in rendered.files:
        return services
    extra_ca_dir = root / "lk-jwt-extra-ca"
    extra_ca_dir.mkdir()
    for path, content in rendered.files[LK_JWT].items():
        target = harness.write(LK_JWT, path, content, mode=0o600)
        if path.endswith(".pem"):
            (extra_ca_dir / target.name).write_text(content)
    services.foreign = ForeignHomeserver(harness_free_port(), extra_ca_dir)
    public = {f"{host}:443": ports.proxy["websecure"] for host in harness.proxy_hosts}
    public[f"{FOREIGN_SERVER_NAME}:443"] = services.foreign.server.server_address[1]
    services.tunnel = ConnectTunnel(ports.connect_proxy, public)
    env = loopback.lk_jwt_environment(container_envs(rendered, LK_JWT), root=root, ports=ports,
                                      extra_ca_dir=extra_ca_dir)
    services.lk_jwt_env = {"PATH": os.environ.get("PATH", ""), **env}
    jwt = spawn(LK_JWT, [binary], env=services.lk_jwt_env)
    wait_until("lk-jwt-service", lambda: requests.get(f"http://{LOOPBACK}:{ports.lk_jwt}/healthz", timeout=1).ok,
               jwt.process, jwt.log)
    services.lk_jwt_booted = True
    return services


def harness_free_port() -> int:
    from tests.integration.harness import free_port

    return free_port()


def _start_lk_jwt(harness, name: str, env: dict[str, str]):
    from tests.integration.harness import wait_until

    service = harness.spawn(name, [lk_jwt_binary()], env=env)
    wait_until(name, lambda: requests.get(f"http://{LOOPBACK}:{harness.ports.lk_jwt}/healthz", timeout=1).ok,
               service.process, service.log)
    return service


@contextlib.contextmanager
def lk_jwt_replaced(harness, overrides: dict[str, str]):
    """For one test: the harness's lk-jwt-service restarted with `overrides` in its environment (on
    its own port, so behind Traefik's route), then restarted as booted."""
    original, = [s for s in harness.services if s.name == LK_JWT and s.process.poll() is None]
    original.process.terminate()
    original.process.wait(timeout=10)
    harness.services.remove(original)
    replaced = _start_lk_jwt(harness, f"{LK_JWT}-replaced", {**harness.calls.lk_jwt_env, **overrides})
    try:
        yield replaced
    finally:
        replaced.process.terminate()
        replaced.process.wait(timeout=10)
        harness.services.remove(replaced)
        _start_lk_jwt(harness, LK_JWT, harness.calls.lk_jwt_env)
