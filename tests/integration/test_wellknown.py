"""/.well-known/matrix/* fetched through the program's nginx: exact JSON, type and CORS."""

from __future__ import annotations

import pytest
import requests

from components.matrix.wellknown import well_known_client, well_known_server


@pytest.fixture(scope="module")
def homeserver(harness):
    return harness.rendered.yaml("synapse", "/data/homeserver.yaml")


def _fetch(harness, which: str, server_name: str) -> requests.Response:
    return requests.get(f"{harness.nginx_url}/.well-known/matrix/{which}", headers={"Host": server_name}, timeout=5)


def test_server_document_delegates_to_the_matrix_host(harness, homeserver):
    response = _fetch(harness, "server", homeserver["server_name"])
    assert response.status_code == 200
    matrix_host = homeserver["public_baseurl"].split("/")[2]
    assert response.json() == well_known_server(matrix_host, 443)
    assert response.json() == {"m.server": f"{matrix_host}:443"}


def test_client_document_names_synapse_public_baseurl(harness, homeserver):
    response = _fetch(harness, "client", homeserver["server_name"])
    assert response.status_code == 200
    assert response.json() == well_known_client(homeserver["public_baseurl"])
    assert response.json()["m.homeserver"]["base_url"] == homeserver["public_baseurl"]


@pytest.mark.parametrize("which", ["server", "client"])
def test_documents_are_json_with_cors(harness, homeserver, which):
    response = _fetch(harness, which, homeserver["server_name"])
    assert response.headers["Content-Type"].split(";")[0] == "application/json"
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_no_admin_api_path_is_served_not_even_registration(harness, homeserver):
    for path in ("/_synapse/admin/v2/users/@admin:x", "/_synapse/admin/v1/server_version", "/_synapse/admin/v1/register",
                 "/_synapse/admin/v1/register/x"):
        assert requests.get(f"{harness.nginx_url}{path}", timeout=5).status_code == 404, path
