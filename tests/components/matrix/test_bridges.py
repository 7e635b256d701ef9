"""mautrix bridges: the data file, the rendered config and registration, the component."""

import pulumi
import pytest
import yaml

from commstack.devtools import offline
from components.common import image
from components.matrix.bridges import (BRIDGE_SPECS, CONFIG_PATH, OWN_REGISTRATION_PATH, BridgeArgs, MautrixBridge,
                                       render_bridge_config, render_registration)
from components.settings import KNOWN_BRIDGES

CONTAINER_TYPE = "docker:index/container:Container"
SERVER = "example.org"
DB_URI = "postgres://mautrix_telegram:pw@postgres:5432/mautrix_telegram?sslmode=disable"


def config_for(kind, **overrides):
    kwargs = dict(server_name=SERVER, homeserver_url="http://synapse:8008", as_token="AS" * 20, hs_token="HS" * 20,
                  database_uri=DB_URI, provisioning_secret="p" * 32, pickle_key="k" * 32,
                  network_config={"api_id": 123456, "api_hash": "abc"} if kind == "telegram" else {})
    return render_bridge_config(BRIDGE_SPECS[kind], **{**kwargs, **overrides})


def test_data_file_describes_every_known_bridge_with_a_pinned_image():
    assert set(BRIDGE_SPECS) == set(KNOWN_BRIDGES)
    for spec in BRIDGE_SPECS.values():
        tag = image(spec.image).rsplit(":", 1)[1]
        assert tag.startswith("v") and tag != "latest"
        assert spec.database == f"mautrix_{spec.kind}"
    assert BRIDGE_SPECS["telegram"].network_required == ("api_id", "api_hash")
    assert len({s.port for s in BRIDGE_SPECS.values()}) == len(BRIDGE_SPECS)


@pytest.mark.parametrize("kind", sorted(BRIDGE_SPECS))
def test_config_has_every_value_bridgev2_checks_before_starting(kind):
    spec = BRIDGE_SPECS[kind]
    config = yaml.safe_load(yaml.safe_dump(config_for(kind)))
    assert config["homeserver"] == {"address": "http://synapse:8008", "domain": SERVER, "software": "standard"}
    appservice = config["appservice"]
    assert appservice["address"] == f"http://bridge-{kind}:{spec.port}"
    assert (appservice["hostname"], appservice["port"], appservice["id"]) == ("0.0.0.0", spec.port, kind)
    assert appservice["bot"]["username"] == spec.bot_username
    # Found by booting the real bridges: the default avatar is an mxc:// on maunium.net, which the
    # homeserver then fetches from there; empty leaves it unset (bridgev2 UpdateBotProfile).
    assert appservice["bot"]["avatar"] == ""
    assert (appservice["as_token"], appservice["hs_token"]) == ("AS" * 20, "HS" * 20)
    assert appservice["username_template"] == f"{spec.user_prefix}{{{{.}}}}"
    assert config["database"]["type"] == "postgres" and config["database"]["uri"] == DB_URI
    # Local users only; no wildcard, no example entries, no admin unless named.
    assert config["bridge"]["permissions"] == {SERVER: "user"}
    assert config["provisioning"]["shared_secret"] == "p" * 32
    assert config["encryption"]["pickle_key"] == "k" * 32
    assert config["double_puppet"]["secrets"] == {}


@pytest.mark.parametrize("kind", sorted(BRIDGE_SPECS))
def test_encryption_uses_appservice_transactions_not_the_bots_own_sync(kind):
    """Found by booting the real bridge: with encryption.appservice off, its crypto /syncs as the bot,
    which Synapse answers with 500; on, it reads to-device events from transactions (MSC2409/MSC3202),
    and the registration must say so as mautrix-go's own generator does (applyUnstableFlags)."""
    encryption = config_for(kind)["encryption"]
    assert (encryption["allow"], encryption["appservice"]) == (True, True)
    assert "msc4190" not in encryption  # the bot's device comes from appservice login, which Synapse has
    registration = render_registration(BRIDGE_SPECS[kind], server_name=SERVER, as_token="a", hs_token="h")
    assert registration["org.matrix.msc3202"] is True


@pytest.mark.parametrize("kind", sorted(BRIDGE_SPECS))
def test_portals_are_created_encrypted_and_unencrypted_rooms_still_work(kind):
    """New portals get m.room.encryption at creation (encryption.default), so bridged messages are not
    stored in plaintext by Synapse; `require` would drop every unencrypted message (docs/security.md)."""
    encryption = config_for(kind)["encryption"]
    assert (encryption["default"], encryption["require"]) == (True, False)


def test_telegram_network_section_and_named_admins():
    config = config_for("telegram", admins=["@alice:example.org"])
    assert config["network"] == {"api_id": 123456, "api_hash": "abc"}
    assert config["bridge"]["permissions"] == {SERVER: "user", "@alice:example.org": "admin"}


@pytest.mark.parametrize("overrides", [
    dict(network_config={}),
    dict(network_config={"api_id": 123456, "api_hash": ""}),
    dict(provisioning_secret="short"),
])
def test_bad_values_are_refused(overrides):
    with pytest.raises(ValueError):
        config_for("telegram", **overrides)


def test_registration_shape():
    reg = render_registration(BRIDGE_SPECS["whatsapp"], server_name=SERVER, as_token="a", hs_token="h")
    assert reg["id"] == "whatsapp" and reg["url"] == "http://bridge-whatsapp:29318"
    assert reg["sender_localpart"] == "whatsappbot"
    assert reg["rate_limited"] is False
    assert reg["de.sorunome.msc2409.push_ephemeral"] is True and reg["receive_ephemeral"] is True
    assert reg["org.matrix.msc3202"] is True
    assert [ns["regex"] for ns in reg["namespaces"]["users"]] == [
        r"^@whatsappbot:example\.org$", r"^@whatsapp_.*:example\.org$"]
    assert all(ns["exclusive"] is True for ns in reg["namespaces"]["users"])


def test_synapse_loads_both_registrations_and_their_namespaces_are_exclusive(tmp_path):
    from synapse.config.appservice import load_appservices

    paths = []
    for kind, spec in BRIDGE_SPECS.items():
        path = tmp_path / f"{kind}.yaml"
        path.write_text(yaml.safe_dump(render_registration(spec, server_name=SERVER, as_token=f"as-{kind}",
                                                           hs_token=f"hs-{kind}")))
        paths.append(str(path))
    services = {s.id: s for s in load_appservices(SERVER, paths)}
    assert set(services) == set(BRIDGE_SPECS)
    whatsapp = services["whatsapp"]
    assert whatsapp.sender.to_string() == "@whatsappbot:example.org"
    assert whatsapp.supports_ephemeral is True
    assert whatsapp.msc3202_transaction_extensions is True
    assert whatsapp.is_exclusive_user("@whatsappbot:example.org")
    assert whatsapp.is_exclusive_user("@whatsapp_4915112345678:example.org")
    assert not whatsapp.is_user_in_namespace("@alice:example.org")
    assert not whatsapp.is_user_in_namespace("@whatsapp_1:exampleXorg")  # the dot is escaped
    assert not whatsapp.is_user_in_namespace("@telegram_1:example.org")
    assert services["telegram"].is_exclusive_user("@telegram_777:example.org")
    assert not services["telegram"].is_user_in_namespace("@whatsappbot:example.org")


def _bridge(kind="telegram"):
    network_config = {"api_id": 123456, "api_hash": pulumi.Output.secret("hash-secret-value")} \
        if kind == "telegram" else {}
    return MautrixBridge(f"bridge-{kind}", BridgeArgs(
        kind=kind, network="matrix-net", server_name=SERVER, database_uri=pulumi.Output.secret(DB_URI),
        network_config=network_config))


@pulumi.runtime.test
def test_component_writes_the_same_tokens_into_config_and_registration(recorded):
    bridge = _bridge()

    def check(args):
        registration_text, _ = args
        container, = recorded.of_type(CONTAINER_TYPE)
        assert container.plain_inputs["name"] == "bridge-telegram"
        uploads = {u["file"]: u["content"] for u in container.plain_inputs["uploads"]}
        assert set(uploads) == {CONFIG_PATH, OWN_REGISTRATION_PATH}
        config = yaml.safe_load(uploads[CONFIG_PATH])
        registration = yaml.safe_load(registration_text)
        assert uploads[OWN_REGISTRATION_PATH] == registration_text
        assert config["appservice"]["as_token"] == registration["as_token"]
        assert config["appservice"]["hs_token"] == registration["hs_token"]
        assert len(registration["as_token"]) == 64 and registration["as_token"] != registration["hs_token"]
        assert config["network"] == {"api_id": 123456, "api_hash": "hash-secret-value"}
        assert config["database"]["uri"] == DB_URI
        assert bridge.registration_path == "/data/appservices/telegram.yaml"
        # Tokens, the database password and the api_hash never leave secret values.
        passwords = [r.plain_outputs["result"] for r in recorded.of_type("random:index/randomPassword:RandomPassword")]
        assert len(passwords) == 4
        for reg in recorded.registrations:
            plain = repr(offline.strip_secrets(reg.inputs)) + repr(offline.strip_secrets(reg.outputs))
            for secret in passwords + ["hash-secret-value", "pw@postgres"]:
                assert secret not in plain, reg.name

    return pulumi.Output.all(bridge.registration_yaml, bridge.container.id).apply(check)


@pulumi.runtime.test
def test_registration_output_is_secret(recorded):
    bridge = _bridge("whatsapp")

    return offline.expect_secret(bridge.registration_yaml)


@pulumi.runtime.test
def test_pickle_key_is_protected_and_bridge_is_not_published(recorded):
    bridge = _bridge("whatsapp")

    def check(_):
        pickle, = [r for r in recorded.registrations if r.name.endswith("-pickle-key")]
        assert pickle.protect is True
        container, = recorded.of_type(CONTAINER_TYPE)
        assert container.plain_inputs.get("ports", []) == []
        assert container.plain_inputs["healthcheck"]["tests"][-1] == "http://127.0.0.1:29318/_matrix/mau/live"
        image_reg, = recorded.of_type("docker:index/remoteImage:RemoteImage")
        assert image_reg.plain_inputs["name"] == image("mautrix-whatsapp")

    return pulumi.Output.from_input(bridge.container.id).apply(check)


@pulumi.runtime.test
def test_unknown_kind_is_refused(recorded):
    with pytest.raises(ValueError, match="unknown bridge"):
        MautrixBridge("bridge-x", BridgeArgs(kind="signal", network="n", server_name=SERVER,
                                            database_uri=pulumi.Output.secret(DB_URI)))
    return pulumi.Output.from_input(True)
