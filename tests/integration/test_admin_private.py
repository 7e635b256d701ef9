"""Synapse's admin API is private: neither the program's Traefik nor its nginx serves any
/_synapse/admin path (not even shared-secret registration, in any spelling), while Synapse itself
still answers there; and `create-admin` makes an admin through `docker exec` of
register_new_matrix_user (the harness's stand-in runs the same argv against Synapse's own listener)."""

from __future__ import annotations

import argparse
import io
import json
import os
import stat

import pytest
import requests

from commstack.operations import admin
from components.matrix import proxy
from tests.integration.harness import docker_exec_stand_in

ADMIN_PATHS = [
    "/_synapse/admin/v1/register",
    "/_synapse/admin/v1/server_version",
    "/_synapse/admin/v2/users/@admin:example",
    # Spellings a proxy might route differently from how Synapse reads them.
    "/_synapse//admin/v1/register",
    "/_synapse/admin/../admin/v1/register",
    "/_matrix/../_synapse/admin/v1/register",
    "/_matrix/client/../../_synapse/admin/v1/register",
    "/_synapse/%61dmin/v1/register",
    "/_matrix/%2e%2e/_synapse/admin/v1/register",
    "/_synapse/admin%2fv1/register",
]


def _reaches_the_admin_api(response: requests.Response) -> bool:
    """The register endpoint's nonce, or any admin answer (server_version, the users API's 401)."""
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and ("nonce" in body or "server_version" in body
                                       or body.get("errcode") == "M_MISSING_TOKEN")


@pytest.fixture(scope="module")
def server_name(harness) -> str:
    return harness.rendered.yaml("synapse", "/data/homeserver.yaml")["server_name"]


def test_synapse_itself_serves_the_admin_api_so_the_refusals_below_mean_something(harness):
    assert _reaches_the_admin_api(requests.get(f"{harness.synapse_url}/_synapse/admin/v1/register", timeout=5))
    assert _reaches_the_admin_api(requests.get(f"{harness.synapse_url}/_synapse/admin/v1/server_version", timeout=5))


@pytest.mark.parametrize("path", ADMIN_PATHS)
def test_nginx_serves_no_admin_path(harness, server_name, path):
    response = requests.get(f"{harness.nginx_url}{path}", headers={"Host": server_name}, timeout=5)
    assert response.status_code in (400, 404), (path, response.status_code)
    assert not _reaches_the_admin_api(response), path


@pytest.mark.parametrize("path", ADMIN_PATHS)
def test_traefik_serves_no_admin_path_on_any_host(harness, path):
    with harness.public() as public:
        for host in harness.proxy_hosts:
            for method in ("GET", "POST"):
                response = public.request(method, f"https://{host}{path}", json={}, allow_redirects=False, timeout=5)
                assert response.status_code in (400, 404), (host, path, method, response.status_code)
                assert not _reaches_the_admin_api(response), (host, path)


def test_the_client_api_still_passes_both_proxies(harness, server_name):
    """The refusals are specific: the same proxies still carry the client API to Synapse."""
    matrix_host = harness.rendered.yaml("synapse", "/data/homeserver.yaml")["public_baseurl"].split("/")[2]
    with harness.public() as public:
        assert public.get(f"https://{matrix_host}/_matrix/client/versions", timeout=5).status_code == 200
    assert requests.get(f"{harness.nginx_url}/_matrix/client/versions", headers={"Host": server_name},
                        timeout=5).status_code == 200


@pytest.fixture
def stack_cli(tmp_path, monkeypatch, harness, server_name):
    """`pulumi` answering the deployed stack's outputs, and `docker` reaching the harness's Synapse."""
    outputs = {"dockerHost": "ssh://deploy@docker-host.invalid", "serverName": server_name,
               "homeserverUrl": harness.rendered.yaml("synapse", "/data/homeserver.yaml")["public_baseurl"]}
    pulumi = tmp_path / "pulumi"
    pulumi.write_text(f"#!/bin/sh\necho '{json.dumps(outputs)}'\n")
    pulumi.chmod(stat.S_IRWXU)
    bin_dir, record = docker_exec_stand_in(harness, tmp_path)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return record


def test_create_admin_makes_an_admin_over_the_docker_host(harness, stack_cli, server_name, monkeypatch, capsys):
    password = "correct horse battery staple"
    monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
    args = argparse.Namespace(stack="harness", user="dockeradmin", url=None, password_stdin=True, insecure_tls=False)
    assert admin.main(args) == 0
    out, err = capsys.readouterr()
    assert out.strip() == f"@dockeradmin:{server_name}", err
    calls = [json.loads(line) for line in stack_cli.read_text().splitlines()]
    assert [call["docker_host"] for call in calls] == ["ssh://deploy@docker-host.invalid"]
    assert calls[0]["argv"][4:6] == ["synapse", "register_new_matrix_user"]
    assert password not in json.dumps(calls)

    # The new admin logs in through the public proxy and is an admin (asked of Synapse directly).
    matrix_host = harness.rendered.yaml("synapse", "/data/homeserver.yaml")["public_baseurl"].split("/")[2]
    with harness.public() as public:
        login = public.post(f"https://{matrix_host}/_matrix/client/v3/login", timeout=10, json={
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "dockeradmin"},
            "password": password})
    assert login.status_code == 200, login.text
    me = requests.get(f"{harness.synapse_url}/_synapse/admin/v2/users/@dockeradmin:{server_name}", timeout=10,
                      headers={"Authorization": f"Bearer {login.json()['access_token']}"})
    assert me.status_code == 200 and me.json()["admin"] is True


def test_a_second_create_admin_of_the_same_user_says_so(harness, stack_cli, monkeypatch, capsys):
    for attempt in (1, 2):
        monkeypatch.setattr("sys.stdin", io.StringIO("another long password\n"))
        args = argparse.Namespace(stack="harness", user="twice", url=None, password_stdin=True, insecure_tls=False)
        code = admin.main(args)
    assert code == 1
    assert "already exists" in capsys.readouterr().err


def test_the_proxy_rules_name_the_admin_prefix(harness):
    for router in harness.proxy_dynamic["http"]["routers"].values():
        if "websecure" in router["entryPoints"]:
            assert router["rule"].endswith(proxy.NOT_ADMIN), router["rule"]
