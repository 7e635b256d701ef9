"""Synapse boots from the program's homeserver.yaml; the first admin is made the README's way."""

from __future__ import annotations

import argparse
import io
import json
import os
import stat

import pytest
import requests

from commstack.operations import admin


def test_synapse_answers_client_versions(harness):
    response = requests.get(f"{harness.synapse_url}/_matrix/client/versions", timeout=5)
    assert response.status_code == 200
    assert "v1.11" in response.json()["versions"]


def test_synapse_serves_the_rendered_server_name(harness):
    keys = requests.get(f"{harness.synapse_url}/_matrix/key/v2/server", timeout=5).json()
    assert keys["server_name"] == harness.rendered.yaml("synapse", "/data/homeserver.yaml")["server_name"]
    # The signing key Synapse serves is the one the program generated.
    key_id = harness.rendered.text("synapse", "/data/signing.key").split()[1]
    assert list(keys["verify_keys"]) == [f"ed25519:{key_id}"]


@pytest.fixture
def fake_pulumi(tmp_path, monkeypatch, harness):
    """A `pulumi` on PATH that answers `stack output` like the CLI would for a deployed stack."""
    shared_secret = harness.rendered.yaml("synapse", "/data/homeserver.yaml")["registration_shared_secret"]
    outputs = {"registrationSharedSecret": shared_secret, "homeserverUrl": harness.synapse_url}
    script = tmp_path / "pulumi"
    script.write_text(f"#!/bin/sh\necho '{json.dumps(outputs)}'\n")
    script.chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    return shared_secret


def test_create_admin_cli_registers_an_admin_and_prints_only_its_id(harness, fake_pulumi, monkeypatch, capsys):
    password = "correct horse battery staple"
    monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
    # With --url: Synapse's own listener, as through an SSH tunnel (no proxy serves the admin API;
    # the default path, docker exec, is tests/integration/test_admin_private.py).
    args = argparse.Namespace(stack="harness", user="admin", url=harness.synapse_url, password_stdin=True,
                              insecure_tls=False)
    assert admin.main(args) == 0
    out, err = capsys.readouterr()
    server_name = harness.rendered.yaml("synapse", "/data/homeserver.yaml")["server_name"]
    assert out.strip() == f"@admin:{server_name}"
    assert fake_pulumi not in out + err

    login = requests.post(f"{harness.nginx_url}/_matrix/client/v3/login", timeout=10, json={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "admin"}, "password": password}).json()
    me = requests.get(f"{harness.synapse_url}/_synapse/admin/v2/users/@admin:{server_name}", timeout=10,
                      headers={"Authorization": f"Bearer {login['access_token']}"})
    assert me.status_code == 200 and me.json()["admin"] is True


def test_registration_with_a_wrong_shared_secret_is_refused(harness):
    with pytest.raises(admin.AdminError, match="M_UNKNOWN|HMAC|403"):
        admin.register_user(harness.synapse_url, "not-the-secret", "intruder", "some long password", admin=True)
