"""Synapse loads each bridge's rendered registration: accepts its as_token, enforces its namespace."""

from __future__ import annotations

import pytest
import requests

BRIDGES = ["whatsapp", "telegram"]


def _registration(harness, kind: str) -> dict:
    return harness.rendered.yaml(f"bridge-{kind}", "/data/registration.yaml")


def _register_as(harness, as_token: str, localpart: str) -> requests.Response:
    return requests.post(f"{harness.nginx_url}/_matrix/client/v3/register", timeout=10,
                         headers={"Authorization": f"Bearer {as_token}"},
                         json={"type": "m.login.application_service", "username": localpart})


def test_both_bridges_are_rendered(harness):
    assert sorted(k for k in harness.rendered.files if k.startswith("bridge-")) == [f"bridge-{b}" for b in sorted(BRIDGES)]


@pytest.mark.parametrize("kind", BRIDGES)
def test_synapse_accepts_the_bridge_as_token_as_its_bot(harness, kind):
    registration = _registration(harness, kind)
    server_name = harness.rendered.yaml("synapse", "/data/homeserver.yaml")["server_name"]
    # The token the bridge itself will use (its config.yaml) is the one Synapse loaded.
    bridge_config = harness.rendered.yaml(f"bridge-{kind}", "/data/config.yaml")
    whoami = requests.get(f"{harness.nginx_url}/_matrix/client/v3/account/whoami", timeout=10,
                          headers={"Authorization": f"Bearer {bridge_config['appservice']['as_token']}"})
    assert whoami.status_code == 200, whoami.text
    assert whoami.json()["user_id"] == f"@{registration['sender_localpart']}:{server_name}"


@pytest.mark.parametrize("kind", BRIDGES)
def test_the_bridge_may_claim_its_own_namespace(harness, kind):
    response = _register_as(harness, _registration(harness, kind)["as_token"], f"{kind}_own_claim")
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("kind", BRIDGES)
def test_another_bridge_cannot_claim_the_namespace(harness, kind):
    other = next(b for b in BRIDGES if b != kind)
    response = _register_as(harness, _registration(harness, other)["as_token"], f"{kind}_stolen")
    assert response.status_code == 400
    assert response.json()["errcode"] == "M_EXCLUSIVE"


@pytest.mark.parametrize("kind", BRIDGES)
def test_a_normal_user_cannot_take_a_namespaced_name(harness, kind):
    response = requests.get(f"{harness.nginx_url}/_matrix/client/v3/register/available", timeout=10,
                            params={"username": f"{kind}_someone"})
    assert response.status_code == 400
    assert response.json()["errcode"] == "M_EXCLUSIVE"


@pytest.mark.parametrize("kind", BRIDGES)
def test_synapse_pings_the_bridge_with_the_hs_token_of_its_config(harness, kind):
    """The stand-in only answers the hs_token from the bridge's config.yaml, so a 200 proves
    registration.yaml (what Synapse sends) and config.yaml (what the bridge expects) agree."""
    registration = _registration(harness, kind)
    response = requests.post(f"{harness.nginx_url}/_matrix/client/v1/appservice/{registration['id']}/ping",
                             headers={"Authorization": f"Bearer {registration['as_token']}"},
                             json={"transaction_id": f"harness-{kind}"}, timeout=10)
    assert response.status_code == 200, response.text
    assert {"transaction_id": f"harness-{kind}"} in harness.stand_ins[kind].pings
