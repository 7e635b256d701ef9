"""doctor's monitoring rows against stand-ins (the real Prometheus, Alertmanager and relay are in
tests/integration/test_monitoring.py): what the target row says for up and down targets, and the
`docker exec` way in when no private URL is given."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from commstack.checks import doctor_monitoring as dm


def serve(body: dict):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def targets(*health: tuple[str, str]) -> dict:
    return {"status": "success", "data": {"activeTargets": [
        {"labels": {"job": job, "instance": f"{job}:1"}, "health": state, "lastError": "" if state == "up" else "connection refused"}
        for job, state in health]}}


@pytest.mark.parametrize("health, status, fragment", [
    ((("synapse", "up"), ("node", "up")), "PASS", "2 targets up (node, synapse)"),
    ((("synapse", "up"), ("bridges", "down")), "FAIL", "1 of 2 down: bridges bridges:1: down connection refused"),
    ((), "FAIL", "Prometheus scrapes nothing"),
])
def test_the_target_row(health, status, fragment):
    server = serve(targets(*health))
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        name, got, detail, hint = dm.check_targets(dm.MonitoringTarget(prometheus_url=url))
    finally:
        server.shutdown()
    assert (name, got) == ("prometheus targets", status)
    assert fragment in detail
    assert (hint == "") == (status == "PASS")


def test_without_urls_doctor_goes_through_docker_exec(tmp_path, monkeypatch):
    calls = tmp_path / "calls"
    docker = tmp_path / "docker"
    docker.write_text(f"#!/bin/sh\necho \"$DOCKER_HOST $*\" >> {calls}\necho '{json.dumps(targets(('node', 'up')))}'\n")
    docker.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    row = dm.check_targets(dm.MonitoringTarget(docker_host="ssh://deploy@host.example.org"))
    assert row[1] == "PASS"
    assert calls.read_text().strip() == ("ssh://deploy@host.example.org exec prometheus wget -q -O - "
                                         "http://localhost:9090/api/v1/targets")


def test_delivery_needs_a_room_and_a_reader():
    target = dm.MonitoringTarget(prometheus_url="http://127.0.0.1:9", alertmanager_url="http://127.0.0.1:9")
    assert dm.check_delivery(target, "https://matrix.example.org", "token")[1] == "SKIP"
    target.alert_room = "#alerts:example.org"
    row = dm.check_delivery(target, "https://matrix.example.org", None)
    assert row[1] == "SKIP" and "COMMSTACK_ACCESS_TOKEN" in row[3]
