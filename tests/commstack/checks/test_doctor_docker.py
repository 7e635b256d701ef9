"""doctor's throwaway user without a public admin API: registered by `docker exec` over the stack's
dockerHost (the same path as create-admin), then logged in through the public client API."""

from __future__ import annotations

import json
import os
import stat
import sys
from http.server import BaseHTTPRequestHandler

import pytest

from commstack.checks import doctor


@pytest.fixture
def client_api(loopback_http):
    """A client API on loopback that accepts one password login and records it."""
    logins = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            logins.append(body)
            data = json.dumps({"access_token": "tok", "user_id": "@x:example.org"}).encode()
            self.send_response(200 if self.path == "/_matrix/client/v3/login" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return loopback_http(Handler), logins


@pytest.fixture
def docker_stub(tmp_path, monkeypatch):
    record = tmp_path / "docker.json"
    script = tmp_path / "docker"
    script.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                      f"json.dump({{'argv': sys.argv[1:], 'host': os.environ.get('DOCKER_HOST'), "
                      f"'stdin': sys.stdin.read()}}, open({str(record)!r}, 'w'))\n")
    script.chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    return lambda: json.loads(record.read_text())


def test_the_throwaway_user_is_made_in_the_container_and_logs_in_publicly(client_api, docker_stub):
    base_url, logins = client_api
    target = doctor.Target(server_name="example.org", docker_host="ssh://deploy@host.example.org")
    user = doctor._test_user(target, base_url)
    assert user.check.status == doctor.PASS and user.token == "tok"
    call = docker_stub()
    assert call["host"] == "ssh://deploy@host.example.org"
    assert call["argv"][4:6] == ["synapse", "register_new_matrix_user"] and "--no-admin" in call["argv"]
    localpart = call["argv"][call["argv"].index("-u") + 1]
    assert localpart.startswith("doctor-") and user.user_id == f"@{localpart}:example.org"
    assert logins == [{"type": "m.login.password", "identifier": {"type": "m.id.user", "user": localpart},
                       "password": call["stdin"].rstrip("\n")}]


def test_without_docker_host_admin_url_or_token_the_test_user_is_skipped_with_the_way_out():
    user = doctor._test_user(doctor.Target(server_name="example.org", shared_secret="s"), "https://matrix.example.org")
    assert user.check.status == doctor.SKIP and "--access-token" in user.check.hint


def test_doctor_reads_the_docker_host_from_the_stack(doctor_target):
    target = doctor_target({"serverName": "example.org", "dockerHost": ""}, stack="prod")
    assert target.docker_host == ""
    assert doctor_target({"serverName": "example.org", "dockerHost": "ssh://deploy@h"}, stack="prod").docker_host \
        == "ssh://deploy@h"
