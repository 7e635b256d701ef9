"""Synapse: homeserver.yaml as data (checked by Synapse's own parser), the
signing key, and the container the component registers."""

import base64

import pulumi
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from commstack.devtools import offline
from components.matrix.postgres import DatabaseCredentials
from components.matrix.synapse import (
    APPSERVICE_ENCRYPTION_SETTINGS, CONFIG_PATH, MATRIX_RTC_SETTINGS, PRIVATE_RANGES, Synapse, SynapseArgs, data_paths, render_homeserver_config, render_log_config,
    signing_key_id, signing_key_line,
)

DB = {"user": "synapse", "password": "db-pw", "database": "synapse", "host": "postgres", "port": 5432}
SECRETS = {"registration_shared_secret": "rss", "macaroon_secret_key": "mac", "form_secret": "form"}
TURN_URIS = ["turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349?transport=tcp"]


def render(**overrides):
    values = dict(server_name="example.org", public_baseurl="https://matrix.example.org/", database=DB,
                  registration="closed", federation=True, **SECRETS)
    values.update(overrides)
    return render_homeserver_config(**values)


def new_pkcs8_key() -> tuple[ed25519.Ed25519PrivateKey, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return key, pem


def load_with_synapse(config: dict, directory) -> "object":
    """Parses a homeserver.yaml with the real Synapse config loader, with the
    container paths moved into `directory`."""
    from synapse.config.homeserver import HomeServerConfig

    _, pem = new_pkcs8_key()
    config = {**config, **data_paths(str(directory))}
    (directory / "signing.key").write_text(signing_key_line(pem, "a_test"))
    (directory / "log.config").write_text(yaml.safe_dump(render_log_config()))
    path = directory / "homeserver.yaml"
    path.write_text(yaml.safe_dump(config))
    return HomeServerConfig.load_config("", ["-c", str(path)])


@pytest.mark.parametrize("registration, enabled, requires_token", [("closed", False, False), ("token", True, True)])
def test_registration_is_closed_or_token_gated(registration, enabled, requires_token):
    config = render(registration=registration)
    assert config["enable_registration"] is enabled
    assert config["registration_requires_token"] is requires_token
    assert "enable_registration_without_verification" not in config


def test_open_registration_is_refused():
    with pytest.raises(ValueError, match="closed or token"):
        render(registration="open")


@pytest.mark.parametrize("federation, resources", [(True, ["client", "federation"]), (False, ["client"])])
def test_listener_and_federation_switch(federation, resources):
    config = render(federation=federation)
    (listener,) = config["listeners"]
    assert (listener["port"], listener["type"], listener["x_forwarded"], listener["tls"]) == (8008, "http", True, False)
    assert listener["resources"][0]["names"] == resources
    assert ("federation_domain_whitelist" in config) is (not federation)
    if not federation:
        assert config["federation_domain_whitelist"] == []


def test_security_defaults():
    config = render()
    assert config["report_stats"] is False
    assert config["trusted_key_servers"] == [{"server_name": "matrix.org"}]
    assert config["suppress_key_server_warning"] is True
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8"} <= set(config["ip_range_blacklist"])
    assert config["federation_client_minimum_tls_version"] == "1.2"
    assert config["url_preview_enabled"] is False
    assert config["allow_guest_access"] is False
    assert config["database"] == {"name": "psycopg2", "args": {**DB, "cp_min": 5, "cp_max": 10}}


def test_turn_keys_only_with_turn():
    assert not {"turn_uris", "turn_shared_secret"} & set(render())
    config = render(turn_uris=TURN_URIS, turn_shared_secret="turn-secret")
    assert config["turn_uris"] == TURN_URIS and config["turn_shared_secret"] == "turn-secret"
    assert config["turn_allow_guests"] is False and config["turn_user_lifetime"] == "1h"
    with pytest.raises(ValueError, match="TURN shared secret"):
        render(turn_uris=TURN_URIS)


def test_synapse_own_parser_accepts_the_config(tmp_path):
    config = render(registration="token", federation=False, turn_uris=TURN_URIS, turn_shared_secret="t",
                    element_url="https://element.example.org/")
    parsed = load_with_synapse(config, tmp_path)
    assert parsed.server.server_name == "example.org"
    assert parsed.server.public_baseurl == "https://matrix.example.org/"
    assert parsed.registration.enable_registration and parsed.registration.registration_requires_token
    assert parsed.federation.federation_domain_whitelist == {}
    assert parsed.voip.turn_uris == TURN_URIS
    assert parsed.database.databases[0].config["args"]["host"] == "postgres"
    assert parsed.server.web_client_location == "https://element.example.org/"


def test_appservice_encryption_features_only_with_bridges(tmp_path):
    """The real mautrix bridge's bot cannot /sync on Synapse (500, "We no longer support AS users using
    /sync directly"); its crypto needs to-device events and key counts pushed in transactions."""
    assert "experimental_features" not in render()
    registration = tmp_path / "whatsapp.yaml"
    registration.write_text(yaml.safe_dump({
        "id": "whatsapp", "url": "http://bridge-whatsapp:29318", "as_token": "a", "hs_token": "h",
        "sender_localpart": "whatsappbot", "namespaces": {"users": [{"regex": "@whatsapp_.*", "exclusive": True}]},
        "org.matrix.msc3202": True}))
    config = render(app_service_config_files=[str(registration)])
    assert config["experimental_features"] == {"msc2409_to_device_messages_enabled": True,
                                               "msc3202_transaction_extensions": True}
    parsed = load_with_synapse(config, tmp_path)
    assert parsed.experimental.msc2409_to_device_messages_enabled is True
    assert parsed.experimental.msc3202_transaction_extensions is True


def test_bridges_keep_their_encryption_flags_when_calls_are_on(tmp_path):
    """Calls (MatrixRTC) and the bridges both add `experimental_features` keys: with both on, every
    flag of each reaches Synapse. A replaced block dropped MSC2409/MSC3202, and the bridge bot never
    received the to-device events that carry its room keys (issue 17)."""
    registration = tmp_path / "whatsapp.yaml"
    registration.write_text(yaml.safe_dump({
        "id": "whatsapp", "url": "http://bridge-whatsapp:29318", "as_token": "a", "hs_token": "h",
        "sender_localpart": "whatsappbot", "namespaces": {"users": [{"regex": "@whatsapp_.*", "exclusive": True}]},
        "org.matrix.msc3202": True}))
    transports = [{"type": "livekit", "livekit_service_url": "https://rtc.example.org/livekit/jwt"}]
    config = render(app_service_config_files=[str(registration)], matrix_rtc_transports=transports)
    assert config["experimental_features"] == {
        "msc2409_to_device_messages_enabled": True, "msc3202_transaction_extensions": True,
        "msc4143_enabled": True, "msc4222_enabled": True, "msc4354_enabled": True}
    assert config["matrix_rtc"] == {"transports": transports}
    parsed = load_with_synapse(config, tmp_path)
    assert parsed.experimental.msc2409_to_device_messages_enabled is True
    assert parsed.experimental.msc3202_transaction_extensions is True
    assert parsed.experimental.msc4143_enabled is True


def test_the_rendered_settings_constants_are_never_mutated():
    transports = [{"type": "livekit", "livekit_service_url": "https://rtc.example.org/livekit/jwt"}]
    config = render(app_service_config_files=["/data/appservices/whatsapp.yaml"], matrix_rtc_transports=transports)
    config["experimental_features"]["msc4143_enabled"] = False
    config["rc_message"]["burst_count"] = 1
    assert MATRIX_RTC_SETTINGS["experimental_features"]["msc4143_enabled"] is True
    assert MATRIX_RTC_SETTINGS["rc_message"]["burst_count"] == 30
    assert APPSERVICE_ENCRYPTION_SETTINGS["experimental_features"] == {
        "msc2409_to_device_messages_enabled": True, "msc3202_transaction_extensions": True}


def test_signing_key_line_is_synapse_format_and_the_same_key():
    from signedjson.key import read_signing_keys

    key, pem = new_pkcs8_key()
    line = signing_key_line(pem, "a_1f2e")
    algorithm, key_id, seed = line.split()
    assert (algorithm, key_id) == ("ed25519", "a_1f2e") and "=" not in seed
    (loaded,) = read_signing_keys(line.splitlines())
    expected_public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert bytes(loaded.verify_key) == expected_public
    assert base64.b64decode(seed + "=") == key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def test_signing_key_id_is_stable_per_public_key():
    assert signing_key_id("PEM-A") == signing_key_id("PEM-A") != signing_key_id("PEM-B")
    assert signing_key_id("PEM-A").startswith("a_")


def container_named(recorded, name: str):
    return recorded.container(name)


def uploads_of(reg) -> dict:
    return {u["file"]: u["content"] for u in reg.plain_inputs["uploads"]}


@pulumi.runtime.test
def test_synapse_component_wires_files_secrets_and_protection(recorded, tmp_path):
    turn_secret = pulumi.Output.secret("turn-secret-under-test")
    registration = pulumi.Output.secret("id: whatsapp\nas_token: a\n")
    synapse = Synapse("synapse", SynapseArgs(
        network="net", server_name="example.org", public_baseurl="https://matrix.example.org/",
        database=DatabaseCredentials("postgres", 5432, "synapse", "synapse", pulumi.Output.secret("db-password-x")),
        registration="token", federation=True, turn_uris=TURN_URIS, turn_shared_secret=turn_secret,
        appservice_registrations={"/data/appservices/whatsapp.yaml": registration},
        element_url="https://element.example.org/"))

    def check(args):
        shared_secret, _ = args
        container = container_named(recorded, "synapse")
        files = uploads_of(container)
        assert set(files) == {CONFIG_PATH, "/data/log.config", "/data/signing.key", "/data/appservices/whatsapp.yaml",
                              "/usr/local/lib/commstack/commstack_log_redaction.py"}
        # The log filter's module is importable where the log config names it.
        envs = dict(e.split("=", 1) for e in container.plain_inputs["envs"])
        assert envs["PYTHONPATH"] == "/usr/local/lib/commstack"
        assert yaml.safe_load(files["/data/log.config"])["filters"]["redact_query_strings"]["()"] == \
            "commstack_log_redaction.RedactQueryStrings"
        assert "uploads" in offline.secret_paths(container.inputs)
        assert not container.plain_inputs.get("ports"), "Synapse is reached only through the proxy"
        assert container.plain_inputs["restart"] == "unless-stopped"

        config = yaml.safe_load(files[CONFIG_PATH])
        assert config["registration_shared_secret"] == shared_secret
        assert config["turn_shared_secret"] == "turn-secret-under-test"
        assert config["database"]["args"]["password"] == "db-password-x"
        assert config["app_service_config_files"] == ["/data/appservices/whatsapp.yaml"]
        assert files["/data/appservices/whatsapp.yaml"] == "id: whatsapp\nas_token: a\n"
        assert len({config["registration_shared_secret"], config["macaroon_secret_key"], config["form_secret"]}) == 3
        assert yaml.safe_load(files["/data/log.config"])["root"]["handlers"] == ["console"]

        (signing_key,) = recorded.of_type("tls:index/privateKey:PrivateKey")
        assert signing_key.plain_inputs["algorithm"] == "ED25519"
        assert signing_key.protect is True and signing_key.retain_on_delete is True
        pem = signing_key.plain_outputs["privateKeyPemPkcs8"]
        assert files["/data/signing.key"] == signing_key_line(pem, signing_key_id(signing_key.plain_outputs["publicKeyPem"]))

        (media,) = recorded.of_type("docker:index/volume:Volume")
        assert media.protect is True and media.retain_on_delete is True
        mounts = container.plain_inputs["volumes"]
        assert [(m["volumeName"], m["containerPath"]) for m in mounts] == [(media.plain_outputs["name"], config["media_store_path"])]

        parsed = load_with_synapse(config, tmp_path)
        assert parsed.registration.registration_shared_secret == shared_secret

        generated = [config[k] for k in ("registration_shared_secret", "macaroon_secret_key", "form_secret")]
        for reg in recorded.registrations:
            plain = str(offline.strip_secrets(reg.inputs)) + str(offline.strip_secrets(reg.outputs))
            assert not [g for g in generated if g in plain], f"{reg.name} leaks a generated secret"

    return pulumi.Output.all(synapse.registration_shared_secret, synapse.container.id).apply(check)


@pulumi.runtime.test
def test_registration_shared_secret_output_is_secret(recorded):
    synapse = Synapse("synapse", SynapseArgs(
        network="net", server_name="example.org", public_baseurl="https://matrix.example.org/",
        database=DatabaseCredentials("postgres", 5432, "synapse", "synapse", pulumi.Output.secret("pw"))))

    return offline.expect_secret(synapse.registration_shared_secret)


def test_appservice_registrations_must_live_where_synapse_reads_them():
    offline.install_component_mocks()
    with pytest.raises(ValueError, match="/data/appservices/"):
        Synapse("s", SynapseArgs(
            network="net", server_name="example.org", public_baseurl="https://matrix.example.org/",
            database=DatabaseCredentials("postgres", 5432, "synapse", "synapse", pulumi.Output.secret("pw")),
            appservice_registrations={"/etc/whatsapp.yaml": pulumi.Output.secret("x")}))


def test_ip_range_blacklist_is_the_key_the_pinned_synapse_reads(tmp_path):
    """Synapse v1.163.2 renamed only its Python attribute (`ip_range_blocklist`); the config key it
    reads is still `ip_range_blacklist` (synapse/config/server.py). A key with the new-looking name
    would be ignored and the server would fall back to its defaults, so the program keeps the old name."""
    import netaddr
    from synapse.config.server import DEFAULT_IP_RANGE_BLOCKLIST

    config = render()
    assert "ip_range_blocklist" not in config
    assert set(DEFAULT_IP_RANGE_BLOCKLIST) <= set(config["ip_range_blacklist"])  # never weaker than the default
    (tmp_path / "ours").mkdir()
    parsed = load_with_synapse({**config, "ip_range_blacklist": ["10.0.0.0/8"]}, tmp_path / "ours")
    assert netaddr.IPAddress("10.1.2.3") in parsed.server.ip_range_blocklist
    assert netaddr.IPAddress("192.168.1.1") not in parsed.server.ip_range_blocklist  # our list, not the default
    renamed = {k: v for k, v in config.items() if k != "ip_range_blacklist"}
    (tmp_path / "renamed").mkdir()
    ignored = load_with_synapse({**renamed, "ip_range_blocklist": ["10.0.0.0/8"]}, tmp_path / "renamed")
    assert netaddr.IPAddress("192.168.1.1") in ignored.server.ip_range_blocklist  # the default, key ignored


@pytest.mark.parametrize("public_ip, added", [("203.0.113.77", None), ("198.18.0.1", None), ("8.8.4.4", "8.8.4.4/32"),
                                             ("2606:4700::1111", "2606:4700::1111/128"), (None, None)])
def test_the_host_s_own_address_is_never_contacted(tmp_path, public_ip, added):
    """publicIp joins ip_range_blacklist (unless a private range already covers it), and Synapse's
    own parser reads it as blocked."""
    config = render(public_ip=public_ip)
    blocked = config["ip_range_blacklist"]
    assert blocked[:len(PRIVATE_RANGES)] == list(PRIVATE_RANGES)
    assert blocked[len(PRIVATE_RANGES):] == ([added] if added else [])
    if public_ip:
        parsed = load_with_synapse(config, tmp_path)
        assert public_ip in parsed.server.ip_range_blocklist
