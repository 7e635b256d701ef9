"""Shared by the doctor tests: one way to build doctor's arguments and targets, and real HTTP
servers on loopback for the answers a deployment can give."""

from __future__ import annotations

import argparse
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional

import pytest

from commstack.checks import doctor

# Environment doctor reads besides its flags; a developer's shell must not leak into the tests.
DOCTOR_ENV = ("COMMSTACK_SHARED_SECRET", "COMMSTACK_ACCESS_TOKEN", "COMMSTACK_LIVEKIT_TOKEN")


def _parse(**flags) -> argparse.Namespace:
    """`doctor`'s parsed command line: each flag=value (True for a switch) as `--flag value`."""
    parser = argparse.ArgumentParser()
    doctor.add_arguments(parser)
    argv = []
    for key, value in flags.items():
        argv += [f"--{key.replace('_', '-')}"] + ([] if value is True else [value])
    return parser.parse_args(argv)


@pytest.fixture
def doctor_args(monkeypatch) -> Callable[..., argparse.Namespace]:
    for name in DOCTOR_ENV:
        monkeypatch.delenv(name, raising=False)
    return _parse


@pytest.fixture
def doctor_target(doctor_args) -> Callable[..., doctor.Target]:
    """target_from_args as the CLI runs it, with `outputs` standing in for `pulumi stack output`."""

    def build(outputs: Optional[dict] = None, **flags) -> doctor.Target:
        return doctor.target_from_args(doctor_args(**flags), outputs=lambda stack: dict(outputs or {}))

    return build


@pytest.fixture
def loopback_http() -> Callable[[type[BaseHTTPRequestHandler]], str]:
    """Starts a real HTTP server on 127.0.0.1 with the handler; returns its base URL. Stopped after the test."""
    servers: list[ThreadingHTTPServer] = []

    def serve(handler: type[BaseHTTPRequestHandler]) -> str:
        handler.log_message = lambda self, *args: None  # quiet test output
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


class UdpResponder:
    """A real UDP socket on loopback answering each datagram with `reply(request, source)` (None: no answer)."""

    def __init__(self, reply):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.address = self.sock.getsockname()
        self.received: list[bytes] = []
        self.stopped = False
        threading.Thread(target=self._serve, args=(reply,), daemon=True).start()

    def _serve(self, reply):
        while not self.stopped:
            try:
                data, source = self.sock.recvfrom(2048)
            except (socket.timeout, OSError):
                continue
            self.received.append(data)
            answer = reply(data, source)
            if answer:
                self.sock.sendto(answer, source)

    def close(self):
        self.stopped = True
        time.sleep(0.25)
        self.sock.close()


@pytest.fixture
def udp_responder():
    """Starts UdpResponder(reply) on loopback; closed after the test."""
    started: list[UdpResponder] = []

    def start(reply) -> UdpResponder:
        started.append(UdpResponder(reply))
        return started[-1]

    yield start
    for responder in started:
        responder.close()
