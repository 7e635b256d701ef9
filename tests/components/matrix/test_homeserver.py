"""The whole Matrix half on the offline engine: shared values are wired once
and equal on both sides, secrets stay secret, only the public ports are
published, state is protected and every resource hangs off the Homeserver."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pulumi
import pytest
import yaml

from commstack.devtools import offline
from components.matrix.homeserver import Homeserver, HomeserverArgs
from components.matrix.proxy import CF_TOKEN_PATH
from components.settings import CONFIGS_DIR, EdgeSettings, MatrixSettings

CONTAINER = "docker:index/container:Container"
TELEGRAM_HASH = "0123456789abcdef0123456789abcdef"
CF_TOKEN = "cf-token-under-test-0123456789"


def matrix_settings(**overrides) -> MatrixSettings:
    values = dict(domain="example.org", matrix_host="matrix.example.org", element_host="element.example.org",
                  turn_host="turn.example.org", registration="token", federation=True, federation_port=443,
                  turn=True, element=True, bridges=("whatsapp", "telegram"), telegram_api_id=123456,
                  telegram_api_hash=pulumi.Output.secret(TELEGRAM_HASH), calls=True, rtc_host="rtc.example.org")
    values.update(overrides)
    return MatrixSettings(**values)


def edge_settings(tls: str = "self-signed", proxy_http: bool = False) -> EdgeSettings:
    letsencrypt = tls == "letsencrypt"
    return EdgeSettings(public_ip="203.0.113.10", tls=tls, acme_email="admin@example.org" if letsencrypt else "",
                        cloudflare_dns=letsencrypt, cloudflare_proxy_http=proxy_http, cloudflare_scoped_dns_token=False,
                        cloudflare_api_token=pulumi.Output.secret(CF_TOKEN) if letsencrypt else None)


def build(matrix: MatrixSettings, edge: EdgeSettings) -> tuple[Homeserver, pulumi.Output]:
    """The Homeserver and an Output that resolves once every container is registered."""
    hs = Homeserver("matrix", HomeserverArgs(matrix=matrix, edge=edge))
    containers = [hs.postgres.provisioner, hs.synapse.container, hs.proxy.container, hs.wellknown.container]
    containers += [b.container for b in hs.bridges.values()]
    containers += [c.container for c in (hs.turn, hs.element) if c is not None]
    if hs.calls is not None:
        containers += [hs.calls.livekit.container, hs.calls.jwt_service.container]
    return hs, pulumi.Output.all(*(c.id for c in containers))


def container(recorded, name: str):
    return recorded.container(name)


def uploads(recorded, name: str) -> dict[str, str]:
    return {u["file"]: u["content"] for u in container(recorded, name).plain_inputs.get("uploads") or []}


def published(recorded) -> dict[str, set[tuple[int, str]]]:
    out = {}
    for reg in recorded.of_type(CONTAINER):
        ports = {(p["external"], p.get("protocol", "tcp")) for p in reg.plain_inputs.get("ports") or []}
        if ports:
            out[reg.plain_inputs["name"]] = ports
    return out


def expected_ports(turn: bool = True, federation_8448: bool = False, calls: bool = True) -> dict[str, set[tuple[int, str]]]:
    ports = {"proxy": {(80, "tcp"), (443, "tcp")} | ({(8448, "tcp")} if federation_8448 else set())}
    if turn:
        ports["turn"] = {(p, proto) for p in (3478, 5349) for proto in ("tcp", "udp")}
        ports["turn"] |= {(p, "udp") for p in range(49160, 49193)}
    if calls:
        # LiveKit's share of 49160-49200 (configs/ports.yaml): its UDP mux ports and nothing else.
        ports["livekit"] = {(p, "udp") for p in range(49193, 49201)}
    return ports


def certificate_domains(node) -> set[str]:
    """Every host in Traefik `domains: [{main, sans}]` entries, wherever they sit."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "domains":
                for domain in value:
                    found |= {domain["main"], *domain.get("sans", [])}
            else:
                found |= certificate_domains(value)
    elif isinstance(node, list):
        for item in node:
            found |= certificate_domains(item)
    return found


def verifier_of(password: str, like: str) -> str:
    """The SCRAM-SHA-256 verifier of `password` with the salt and iterations of the verifier `like`."""
    import base64

    from components.matrix.postgres import scram_sha256_verifier

    iterations, salt = like.split("$")[1].split(":")
    return scram_sha256_verifier(password, base64.b64decode(salt), int(iterations))


def role_passwords(init_sql: str) -> dict[str, str]:
    return dict(re.findall(r"^ALTER ROLE (\w+) WITH .* PASSWORD '([^']*)';$", init_sql, flags=re.M))


def generated_values(recorded) -> list[str]:
    """Every value the program generated: random passwords and private keys."""
    values = [r.plain_outputs["result"] for r in recorded.of_type("random:index/randomPassword:RandomPassword")]
    for key in recorded.of_type("tls:index/privateKey:PrivateKey"):
        values += [key.plain_outputs["privateKeyPem"], key.plain_outputs["privateKeyPemPkcs8"]]
    return values


@pulumi.runtime.test
def test_shared_values_are_equal_on_both_sides(recorded, tmp_path):
    hs, done = build(matrix_settings(), edge_settings())

    def check(_):
        synapse_files = uploads(recorded, "synapse")
        homeserver = yaml.safe_load(synapse_files["/data/homeserver.yaml"])

        # TURN: one secret, in coturn's static-auth-secret and Synapse's turn_shared_secret.
        turn_conf = uploads(recorded, "turn")["/etc/coturn/turnserver.conf"]
        conf = dict(line.split("=", 1) for line in turn_conf.splitlines() if "=" in line and not line.startswith("#"))
        assert conf["static-auth-secret"] == homeserver["turn_shared_secret"]
        assert len(homeserver["turn_shared_secret"]) >= 32
        assert conf["external-ip"] == "203.0.113.10" and conf["realm"] == "turn.example.org"
        assert homeserver["turn_uris"] == hs.turn_uris == [
            "turn:turn.example.org:3478?transport=udp", "turn:turn.example.org:3478?transport=tcp",
            "turns:turn.example.org:5349?transport=tcp"]

        # Bridges: same tokens in config and registration; registration listed and uploaded into Synapse.
        assert homeserver["app_service_config_files"] == ["/data/appservices/telegram.yaml",
                                                          "/data/appservices/whatsapp.yaml"]
        for kind in ("whatsapp", "telegram"):
            bridge_files = uploads(recorded, f"bridge-{kind}")
            config = yaml.safe_load(bridge_files["/data/config.yaml"])
            registration = yaml.safe_load(synapse_files[f"/data/appservices/{kind}.yaml"])
            assert bridge_files["/data/registration.yaml"] == synapse_files[f"/data/appservices/{kind}.yaml"]
            assert (config["appservice"]["as_token"], config["appservice"]["hs_token"]) == (
                registration["as_token"], registration["hs_token"])
            assert config["homeserver"]["address"] == "http://synapse:8008"
            assert urlsplit(registration["url"]).hostname == f"bridge-{kind}"
        telegram = yaml.safe_load(uploads(recorded, "bridge-telegram")["/data/config.yaml"])
        assert telegram["network"] == {"api_id": 123456, "api_hash": TELEGRAM_HASH}

        # Synapse's own appservice loader accepts the registrations as uploaded.
        from synapse.config.appservice import load_appservices

        for kind in ("whatsapp", "telegram"):
            (tmp_path / f"{kind}.yaml").write_text(synapse_files[f"/data/appservices/{kind}.yaml"])
        services = load_appservices("example.org", [str(tmp_path / f"{k}.yaml") for k in ("whatsapp", "telegram")])
        assert sorted(s.id for s in services) == ["telegram", "whatsapp"]

        # Databases: the roles and passwords the init SQL creates are the ones each consumer uses.
        init_sql = uploads(recorded, "postgres-init")["/commstack/init.sql"]
        passwords = role_passwords(init_sql)
        assert set(passwords) == {"synapse", "mautrix_whatsapp", "mautrix_telegram"}
        assert len(set(passwords.values())) == 3
        db = homeserver["database"]["args"]
        assert (db["user"], db["database"], db["host"], db["port"]) == ("synapse", "synapse", "postgres", 5432)
        # Postgres gets each role's SCRAM verifier: the consumer's password is the one it was made from.
        assert verifier_of(db["password"], passwords["synapse"]) == passwords["synapse"]
        assert "SELECT 'CREATE DATABASE synapse WITH OWNER synapse ENCODING ''UTF8'' LC_COLLATE ''C''" in init_sql
        for kind in ("whatsapp", "telegram"):
            uri = urlsplit(yaml.safe_load(uploads(recorded, f"bridge-{kind}")["/data/config.yaml"])["database"]["uri"])
            assert (uri.username, uri.hostname, uri.path) == (f"mautrix_{kind}", "postgres", f"/mautrix_{kind}")
            assert verifier_of(uri.password, passwords[f"mautrix_{kind}"]) == passwords[f"mautrix_{kind}"]

        # Routing: the apex and matrix host reach Synapse only through the well-known nginx.
        dynamic = yaml.safe_load(uploads(recorded, "proxy")["/etc/traefik/dynamic.yml"])
        rules = {r["rule"]: dynamic["http"]["services"][r["service"]]["loadBalancer"]["servers"][0]["url"]
                 for r in dynamic["http"]["routers"].values()}
        na = " && !PathPrefix(`/_synapse/admin`)"
        assert rules == {"Host(`example.org`)" + na: "http://wellknown:80",
                         "Host(`matrix.example.org`)" + na: "http://wellknown:80",
                         "Host(`element.example.org`)" + na: "http://element:80",
                         # MatrixRTC on its own host, by path (element-call docs/self-hosting.md).
                         ("Host(`rtc.example.org`) && (Path(`/livekit/jwt/get_token`) || Path(`/livekit/jwt/sfu/get`) || "
                          "Path(`/livekit/jwt/healthz`))") + na: "http://lk-jwt-service:8080",
                         "Host(`rtc.example.org`) && PathPrefix(`/livekit/sfu`)" + na: "http://livekit:7880"}
        assert homeserver["max_upload_size"] == "50M"
        assert "client_max_body_size 50M;" in uploads(recorded, "wellknown")["/etc/nginx/conf.d/default.conf"]

    return done.apply(check)


@pulumi.runtime.test
def test_no_generated_value_reaches_a_plain_input_or_output(recorded):
    hs, done = build(matrix_settings(), edge_settings("letsencrypt"))

    def check(_):
        secrets = generated_values(recorded) + [TELEGRAM_HASH, CF_TOKEN]
        assert len(secrets) >= 15
        for reg in recorded.registrations:
            plain = str(offline.strip_secrets(reg.inputs)) + str(offline.strip_secrets(reg.outputs))
            leaked = [s[:6] + "…" for s in secrets if s in plain]
            assert not leaked, f"{reg.type} {reg.name} holds generated values outside secrets: {leaked}"
        # and the secrets are really there, inside the secret parts
        synapse = container(recorded, "synapse")
        assert "uploads" in offline.secret_paths(synapse.inputs)
        # No secret in any container's environment (`docker inspect` shows it): files only.
        for reg in recorded.of_type("docker:index/container:Container"):
            envs = "\n".join(offline.unwrap(reg.inputs.get("envs")) or [])
            assert not [s[:6] + "…" for s in secrets if s in envs], reg.name
        proxy = container(recorded, "proxy").plain_inputs
        assert {u["file"]: u["content"] for u in proxy["uploads"]}[CF_TOKEN_PATH] == CF_TOKEN

    return done.apply(check)


@pulumi.runtime.test
def test_stack_level_secret_and_admin_command(recorded):
    hs, done = build(matrix_settings(), edge_settings())

    def check(args):
        flag, shared_secret, _ = args
        assert flag is True
        homeserver = yaml.safe_load(uploads(recorded, "synapse")["/data/homeserver.yaml"])
        assert homeserver["registration_shared_secret"] == shared_secret
        # self-signed: the program's own certificate is in no trust store
        assert hs.create_admin_command == "./scripts/commstack create-admin --stack test --user admin"
        assert shared_secret not in hs.create_admin_command
        assert (hs.homeserver_url, hs.element_url, hs.server_name) == (
            "https://matrix.example.org/", "https://element.example.org/", "example.org")

    return pulumi.Output.all(offline.secret_flag(hs.registration_shared_secret), hs.registration_shared_secret,
                             done).apply(check)


@pytest.mark.parametrize("overrides, ports", [
    ({}, expected_ports()),
    ({"federation_port": 8448}, expected_ports(federation_8448=True)),
    # 8448 is served only while federating.
    ({"federation_port": 8448, "federation": False}, expected_ports()),
    ({"turn": False, "calls": False}, expected_ports(turn=False, calls=False)),
    ({"calls": False}, expected_ports(calls=False)),
])
def test_only_the_public_ports_are_published(overrides, ports):
    recorded = offline.install_component_mocks()

    @pulumi.runtime.test
    def run():
        _, done = build(matrix_settings(**overrides), edge_settings())

        def check(_):
            assert published(recorded) == ports
            assert not container(recorded, "postgres").plain_inputs.get("ports")

        return done.apply(check)

    run()


@pulumi.runtime.test
def test_stateful_resources_are_protected_and_everything_is_parented(recorded):
    hs, done = build(matrix_settings(), edge_settings("letsencrypt"))

    def check(_):
        volumes = {r.plain_inputs["name"]: r for r in recorded.of_type("docker:index/volume:Volume")}
        assert {"postgres-data", "synapse-media"} <= set(volumes)
        for volume in volumes.values():
            assert volume.protect is True and volume.retain_on_delete is True, volume.name
        (signing_key,) = [r for r in recorded.of_type("tls:index/privateKey:PrivateKey")
                          if r.plain_inputs["algorithm"] == "ED25519"]
        assert signing_key.protect is True and signing_key.retain_on_delete is True

        (root,) = recorded.of_type("commstack:matrix:Homeserver")
        descendants = {r.urn for r in recorded.descendants_of(root.urn)}
        assert descendants == {r.urn for r in recorded.registrations} - {root.urn}
        child_types = {r.type for r in recorded.children_of(root.urn)}
        assert {"commstack:matrix:Network", "commstack:matrix:Postgres", "commstack:matrix:Synapse",
                "commstack:matrix:ReverseProxy", "commstack:matrix:WellKnown", "commstack:matrix:Turn",
                "commstack:matrix:Element", "commstack:matrix:Bridge"} <= child_types

        for reg in recorded.of_type(CONTAINER):
            inputs = reg.plain_inputs
            assert all(n["name"].startswith("commstack-matrix-") for n in inputs["networksAdvanced"]), reg.name
            expected_restart = "no" if inputs["name"] == "postgres-init" else "unless-stopped"
            assert inputs["restart"] == expected_restart, reg.name
        for image in recorded.of_type("docker:index/remoteImage:RemoteImage"):
            tag = image.plain_inputs["name"].rsplit(":", 1)[1]
            assert tag != "latest" and re.search(r"\d", tag), image.plain_inputs["name"]

    return done.apply(check)


@pulumi.runtime.test
def test_letsencrypt_gives_turn_its_own_certificate(recorded):
    hs, done = build(matrix_settings(), edge_settings("letsencrypt"))

    def check(_):
        from cryptography import x509

        proxy_files = uploads(recorded, "proxy")
        ordered = set()
        for path in ("/etc/traefik/traefik.yml", "/etc/traefik/dynamic.yml"):
            ordered |= certificate_domains(yaml.safe_load(proxy_files[path]))
        # Traefik's Let's Encrypt certificates stay inside Traefik; TURN is not among them.
        assert ordered == {"example.org", "matrix.example.org", "element.example.org", "rtc.example.org"}
        turn_files = uploads(recorded, "turn")
        cert = x509.load_pem_x509_certificate(turn_files["/etc/coturn/certs/fullchain.pem"].encode())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == ["turn.example.org"]
        assert "uploads" in offline.secret_paths(container(recorded, "turn").inputs)

        # No client trusts that certificate, so `turns:` is not advertised; the listener stays.
        homeserver = yaml.safe_load(uploads(recorded, "synapse")["/data/homeserver.yaml"])
        assert homeserver["turn_uris"] == hs.turn_uris == [
            "turn:turn.example.org:3478?transport=udp", "turn:turn.example.org:3478?transport=tcp"]
        conf = dict(line.split("=", 1) for line in turn_files["/etc/coturn/turnserver.conf"].splitlines()
                    if "=" in line and not line.startswith("#"))
        assert conf["tls-listening-port"] == "5349"
        assert (5349, "tcp") in published(recorded)["turn"]

    return done.apply(check)


@pytest.mark.parametrize("proxy_http", [True, False])
def test_forwarded_headers_are_trusted_only_from_cloudflare_when_proxied(proxy_http):
    @pulumi.runtime.test
    def run():
        recorded = offline.install_component_mocks()
        hs, done = build(matrix_settings(), edge_settings("letsencrypt", proxy_http=proxy_http))

        def check(_):
            static = yaml.safe_load(uploads(recorded, "proxy")["/etc/traefik/traefik.yml"])
            trusted = {name: ep.get("forwardedHeaders", {}).get("trustedIPs")
                       for name, ep in static["entryPoints"].items()}
            nginx = uploads(recorded, "wellknown")["/etc/nginx/conf.d/default.conf"]
            real_ip_from = [line.split()[1].rstrip(";") for line in nginx.splitlines()
                            if line.strip().startswith("set_real_ip_from ")]
            private = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]  # Traefik's Docker network
            if not proxy_http:
                # Nobody is believed: Traefik replaces X-Forwarded-For with the real peer.
                assert set(trusted.values()) == {None}
                assert real_ip_from == private
                return
            cloudflare = yaml.safe_load((CONFIGS_DIR / "cloudflare-ips.yaml").read_text())
            expected = cloudflare["ipv4"] + cloudflare["ipv6"]
            assert trusted == {"web": expected, "websecure": expected, "ping": None}
            assert "173.245.48.0/20" in expected and "2606:4700::/32" in expected
            assert real_ip_from == private + expected

        return done.apply(check)

    run()


@pulumi.runtime.test
def test_self_signed_turn_shares_the_proxy_certificate(recorded):
    hs, done = build(matrix_settings(), edge_settings())

    def check(_):
        proxy_cert = uploads(recorded, "proxy")["/etc/traefik/certs/default.crt"]
        assert uploads(recorded, "turn")["/etc/coturn/certs/fullchain.pem"] == proxy_cert
        assert len(recorded.of_type("tls:index/selfSignedCert:SelfSignedCert")) == 1

    return done.apply(check)


@pulumi.runtime.test
def test_minimal_homeserver_without_bridges_turn_or_element(recorded):
    hs, done = build(matrix_settings(bridges=(), turn=False, element=False, registration="closed",
                                     federation=False, telegram_api_id=None, telegram_api_hash=None, calls=False),
                     edge_settings())

    def check(_):
        names = {r.plain_inputs["name"] for r in recorded.of_type(CONTAINER)}
        assert names == {"postgres", "postgres-init", "synapse", "proxy", "wellknown"}
        homeserver = yaml.safe_load(uploads(recorded, "synapse")["/data/homeserver.yaml"])
        assert homeserver["app_service_config_files"] == []
        assert homeserver["enable_registration"] is False and homeserver["federation_domain_whitelist"] == []
        assert "turn_uris" not in homeserver and "web_client_location" not in homeserver
        assert set(role_passwords(uploads(recorded, "postgres-init")["/commstack/init.sql"])) == {"synapse"}
        assert hs.turn_uris == [] and hs.element_url is None
        assert (hs.rtc_transports, hs.livekit_url, hs.livekit_media_ports) == ([], None, None)  # doctor skips calls
        assert [(r.fqdn, r.type, r.http) for r in hs.dns_records] == [
            ("example.org", "A", True), ("matrix.example.org", "A", True)]

    return done.apply(check)


@pulumi.runtime.test
def test_dns_records_keep_turn_dns_only(recorded):
    hs, done = build(matrix_settings(), edge_settings())

    def check(_):
        assert [(r.fqdn, r.type, r.content, r.http) for r in hs.dns_records] == [
            ("example.org", "A", "203.0.113.10", True),
            ("matrix.example.org", "A", "203.0.113.10", True),
            ("element.example.org", "CNAME", "matrix.example.org", True),
            ("turn.example.org", "A", "203.0.113.10", False),
            # HTTPS/WebSocket only; LiveKit's media goes to the address itself.
            ("rtc.example.org", "A", "203.0.113.10", True),
        ]

    return done.apply(check)


@pulumi.runtime.test
def test_database_consumers_wait_for_provisioning(recorded):
    hs, done = build(matrix_settings(), edge_settings())

    def check(_):
        provisioner = container(recorded, "postgres-init")
        assert container(recorded, "postgres").urn in provisioner.dependencies
        for consumer in ("synapse", "bridge-whatsapp", "bridge-telegram"):
            assert provisioner.urn in container(recorded, consumer).dependencies, consumer

    return done.apply(check)


@pulumi.runtime.test
def test_admin_command_verifies_tls_with_letsencrypt(recorded):
    hs, done = build(matrix_settings(), edge_settings("letsencrypt"))

    def check(_):
        assert hs.create_admin_command == "./scripts/commstack create-admin --stack test --user admin"

    return done.apply(check)
