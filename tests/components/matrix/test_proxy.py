"""Traefik: rendered static/dynamic config and the ReverseProxy component in both TLS modes."""

import pulumi
import pytest
import yaml
from cryptography import x509

from commstack.devtools import offline
from components.common import to_yaml
from components.matrix.proxy import (CERT_PATH, CF_TOKEN_PATH, DYNAMIC_PATH, KEY_PATH, STATIC_PATH, ReverseProxy, ReverseProxyArgs,
                                     Route, render_traefik_dynamic, render_traefik_static)

CONTAINER_TYPE = "docker:index/container:Container"
HOSTS = ["example.org", "matrix.example.org", "element.example.org"]
ROUTES = [Route("example.org", "http://wellknown:80"), Route("matrix.example.org", "http://synapse:8008"),
          Route("element.example.org", "http://element:80")]
TOKEN = "cf-token-value-0123456789"


def static(**overrides):
    kwargs = dict(tls="letsencrypt", acme_email="admin@example.org", serve_federation_8448=False)
    return render_traefik_static(**{**kwargs, **overrides})


def test_static_redirects_http_and_has_no_api_or_telemetry():
    config = static()
    assert config["global"] == {"checkNewVersion": False, "sendAnonymousUsage": False}
    assert "api" not in config  # no API, so no dashboard
    web = config["entryPoints"]["web"]
    assert web["address"] == ":80"
    assert web["http"]["redirections"]["entryPoint"] == {"to": "websecure", "scheme": "https", "permanent": True}
    assert config["entryPoints"]["websecure"]["address"] == ":443"
    assert "federation" not in config["entryPoints"]
    # Routes come from the rendered file only, never from the Docker socket.
    assert config["providers"] == {"file": {"filename": DYNAMIC_PATH, "watch": False}}


def test_static_letsencrypt_uses_cloudflare_dns01_on_the_protected_storage():
    config = static()
    acme = config["certificatesResolvers"]["letsencrypt"]["acme"]
    assert acme["email"] == "admin@example.org"
    assert acme["dnsChallenge"]["provider"] == "cloudflare"
    assert acme["storage"] == "/letsencrypt/acme.json"


def test_static_self_signed_has_no_resolver_and_federation_port_when_asked():
    config = static(tls="self-signed", serve_federation_8448=True)
    assert "certificatesResolvers" not in config
    assert config["entryPoints"]["federation"]["address"] == ":8448"


def traefik_keeps(access_log: dict, field: str) -> bool:
    """Traefik's own rule (types.AccessLogFields.Keep): a named field's mode, else the default."""
    fields = access_log.get("fields") or {}
    names = {k.lower(): v for k, v in (fields.get("names") or {}).items()}
    return names.get(field.lower(), fields.get("defaultMode", "keep")) == "keep"


@pytest.mark.parametrize("tls", ["letsencrypt", "self-signed"])
def test_access_log_never_holds_query_strings_or_headers(tls):
    access_log = yaml.safe_load(to_yaml(static(tls=tls)))["accessLog"]
    # RequestPath is where `?access_token=…` would land.
    assert not traefik_keeps(access_log, "RequestPath")
    assert not traefik_keeps(access_log, "ClientUsername")
    assert access_log["fields"]["headers"] == {"defaultMode": "drop"}  # Authorization, cookies
    # Still useful: who answered, how, how fast.
    assert all(traefik_keeps(access_log, f) for f in ("RouterName", "DownstreamStatus", "Duration", "RequestHost"))
    # Only options Traefik v3.5 documents (queryParameters, e.g., came later).
    assert set(access_log) == {"format", "fields"} and set(access_log["fields"]) == {"defaultMode", "names", "headers"}


def test_static_trusted_proxies_are_validated():
    config = static(trusted_ips=["173.245.48.0/20"])
    for entry_point in ("web", "websecure"):
        assert config["entryPoints"][entry_point]["forwardedHeaders"]["trustedIPs"] == ["173.245.48.0/20"]
    assert "&id" not in to_yaml(config)  # Traefik gets plain YAML, no anchors
    with pytest.raises(ValueError):
        static(trusted_ips=["not-a-cidr"])


def test_dynamic_routes_each_host_to_its_upstream_over_tls():
    config = render_traefik_dynamic(routes=ROUTES, tls="letsencrypt", certificate_hosts=HOSTS)
    routers, services = config["http"]["routers"], config["http"]["services"]
    by_rule = {r["rule"]: services[r["service"]]["loadBalancer"]["servers"][0]["url"] for r in routers.values()}
    # No router matches Synapse's admin API, on any host.
    na = " && !PathPrefix(`/_synapse/admin`)"
    assert by_rule == {"Host(`example.org`)" + na: "http://wellknown:80",
                       "Host(`matrix.example.org`)" + na: "http://synapse:8008",
                       "Host(`element.example.org`)" + na: "http://element:80"}
    for router in routers.values():
        assert router["entryPoints"] == ["websecure"]
        # The same host set everywhere: one certificate for all of them.
        assert router["tls"] == {"certResolver": "letsencrypt", "domains": [
            {"main": "example.org", "sans": ["matrix.example.org", "element.example.org"]}]}
    assert config["tls"]["options"]["default"]["minVersion"] == "VersionTLS12"
    assert "stores" not in config["tls"]


def test_dynamic_self_signed_sets_the_default_certificate_and_federation_router():
    config = render_traefik_dynamic(routes=ROUTES, tls="self-signed", serve_federation_8448=True,
                                    federation_upstream="http://synapse:8008")
    assert config["tls"]["stores"]["default"]["defaultCertificate"] == {"certFile": CERT_PATH, "keyFile": KEY_PATH}
    federation = config["http"]["routers"]["federation"]
    assert federation["entryPoints"] == ["federation"]
    assert "/_matrix/federation" in federation["rule"]
    assert config["http"]["services"][federation["service"]]["loadBalancer"]["servers"] == [
        {"url": "http://synapse:8008"}]


@pytest.mark.parametrize("make", [
    lambda: Route("Matrix.Example.org", "http://synapse:8008"),
    lambda: Route("matrix.example.org`) || Host(`x", "http://synapse:8008"),
    lambda: Route("matrix.example.org", "synapse:8008"),
    lambda: render_traefik_dynamic(routes=ROUTES + [ROUTES[0]], tls="self-signed"),
    lambda: render_traefik_static(tls="acme", acme_email="a@example.org", serve_federation_8448=False),
    lambda: render_traefik_static(tls="letsencrypt", acme_email="", serve_federation_8448=False),
    lambda: render_traefik_dynamic(routes=ROUTES, tls="letsencrypt"),
])
def test_bad_values_are_refused(make):
    with pytest.raises(ValueError):
        make()


def _proxy(tls_mode, federation=False):
    return ReverseProxy("proxy", ReverseProxyArgs(
        network="matrix-net", routes=ROUTES, tls=tls_mode, acme_email="admin@example.org",
        dns_api_token=pulumi.Output.secret(TOKEN) if tls_mode == "letsencrypt" else None,
        certificate_hosts=HOSTS, serve_federation_8448=federation, federation_upstream="http://synapse:8008"))


def _published(container):
    return {(p["internal"], p["external"], p["protocol"]) for p in container.plain_inputs["ports"]}


@pulumi.runtime.test
def test_letsencrypt_token_only_in_a_secret_env_and_acme_volume_protected(recorded):
    proxy = _proxy("letsencrypt")

    def check(_):
        container, = recorded.of_type(CONTAINER_TYPE)
        # Only the file's path is in the environment (`docker inspect` shows envs); the file holds the token.
        assert container.plain_inputs["envs"] == [f"CF_DNS_API_TOKEN_FILE={CF_TOKEN_PATH}"]
        token_index = [u["file"] for u in container.plain_inputs["uploads"]].index(CF_TOKEN_PATH)
        token_file = container.plain_inputs["uploads"][token_index]
        assert (token_file["content"], token_file["permissions"], token_file["owner"]) == (TOKEN, "0400", "0")
        assert set(offline.secret_paths(container.inputs)) & {"uploads", f"uploads[{token_index}].content"}
        for reg in recorded.registrations:
            assert TOKEN not in repr(offline.strip_secrets(reg.inputs)), reg.name
            assert TOKEN not in repr(offline.strip_secrets(reg.outputs)), reg.name
        volume, = recorded.of_type("docker:index/volume:Volume")
        assert volume.protect is True and volume.retain_on_delete is True
        mount, *config_dirs = container.plain_inputs["volumes"]
        assert mount == {"volumeName": volume.plain_inputs["name"], "containerPath": "/letsencrypt"}
        # The uploaded files go into fresh anonymous volumes, so the root is read-only.
        assert config_dirs == [{"containerPath": "/etc/traefik"}, {"containerPath": "/run/secrets"}]
        assert container.plain_inputs["readOnly"] is True
        assert _published(container) == {(80, 80, "tcp"), (443, 443, "tcp")}
        uploads = {u["file"]: u["content"] for u in container.plain_inputs["uploads"]}
        assert set(uploads) == {STATIC_PATH, DYNAMIC_PATH, CF_TOKEN_PATH}
        assert yaml.safe_load(uploads[STATIC_PATH]) == render_traefik_static(
            tls="letsencrypt", acme_email="admin@example.org", serve_federation_8448=False)
        assert "&id" not in uploads[DYNAMIC_PATH]  # no YAML aliases
        dynamic = yaml.safe_load(uploads[DYNAMIC_PATH])
        assert {r["tls"]["domains"][0]["main"] for r in dynamic["http"]["routers"].values()} == {"example.org"}
        assert proxy.certificate_pem is None

    return pulumi.Output.from_input(proxy.container.id).apply(check)


@pulumi.runtime.test
def test_no_docker_socket_and_no_privileges(recorded):
    proxy = _proxy("letsencrypt")

    def check(_):
        inputs = recorded.of_type(CONTAINER_TYPE)[0].plain_inputs
        assert "docker.sock" not in repr(inputs)
        assert all("hostPath" not in v for v in inputs["volumes"])
        assert not inputs.get("privileged")
        assert inputs["restart"] == "unless-stopped"
        assert inputs["healthcheck"]["tests"][:3] == ["CMD", "traefik", "healthcheck"]

    return pulumi.Output.from_input(proxy.container.id).apply(check)


@pulumi.runtime.test
def test_self_signed_certificate_covers_every_host_and_its_key_stays_secret(recorded):
    proxy = _proxy("self-signed", federation=True)

    def check(args):
        cert_pem, _container_id = args
        container, = recorded.of_type(CONTAINER_TYPE)
        uploads = {u["file"]: u["content"] for u in container.plain_inputs["uploads"]}
        assert set(uploads) == {STATIC_PATH, DYNAMIC_PATH, CERT_PATH, KEY_PATH}
        assert uploads[CERT_PATH] == cert_pem
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == HOSTS
        assert "PRIVATE KEY" in uploads[KEY_PATH]
        assert "PRIVATE KEY" not in repr(offline.strip_secrets(container.inputs))
        assert "envs" not in container.plain_inputs or not container.plain_inputs["envs"]
        assert recorded.of_type("docker:index/volume:Volume") == []
        assert _published(container) == {(80, 80, "tcp"), (443, 443, "tcp"), (8448, 8448, "tcp")}
        dynamic = yaml.safe_load(uploads[DYNAMIC_PATH])
        assert dynamic["tls"]["stores"]["default"]["defaultCertificate"]["certFile"] == CERT_PATH

    return pulumi.Output.all(proxy.certificate_pem, proxy.container.id).apply(check)


@pulumi.runtime.test
def test_private_key_attribute_is_secret(recorded):
    proxy = _proxy("self-signed")

    return offline.expect_secret(proxy.private_key_pem)


def test_tls_is_mozilla_intermediate_without_cbc_suites():
    options = render_traefik_dynamic(routes=ROUTES, tls="self-signed")["tls"]["options"]["default"]
    assert options["minVersion"] == "VersionTLS12"
    assert options["cipherSuites"] and all("_GCM_" in c or "CHACHA20_POLY1305" in c for c in options["cipherSuites"])
    assert all(c.startswith("TLS_ECDHE_") for c in options["cipherSuites"])
    assert options["curvePreferences"] == ["X25519", "CurveP256", "CurveP384"]


@pytest.mark.parametrize("federation_8448", [False, True])
def test_every_router_sends_hsts_anti_framing_and_nosniff(federation_8448):
    dynamic = render_traefik_dynamic(routes=ROUTES, tls="self-signed", serve_federation_8448=federation_8448)
    headers = dynamic["http"]["middlewares"]["security-headers"]["headers"]
    assert headers == {"stsSeconds": 31536000, "customFrameOptionsValue": "SAMEORIGIN",
                       "contentSecurityPolicy": "frame-ancestors 'self'", "contentTypeNosniff": True}
    assert all(router["middlewares"][0] == "security-headers" for router in dynamic["http"]["routers"].values())


@pytest.mark.parametrize("trusted, criterion", [((), None), (("173.245.48.0/20",), {"ipStrategy": {"depth": 1}})])
def test_a_rate_limited_route_with_an_allowlist_of_paths(trusted, criterion):
    from components.matrix.proxy import RateLimit

    route = Route("rtc.example.org", "http://lk-jwt-service:8080", path_prefix="/livekit/jwt",
                  paths=("/get_token", "/sfu/get"), rate_limit=RateLimit(average=30, period="1m", burst=20))
    dynamic = render_traefik_dynamic(routes=[route], tls="self-signed", trusted_ips=trusted)
    router = dynamic["http"]["routers"]["rtc-example-org-livekit-jwt"]
    assert router["rule"] == ("Host(`rtc.example.org`) && (Path(`/livekit/jwt/get_token`) || "
                              "Path(`/livekit/jwt/sfu/get`)) && !PathPrefix(`/_synapse/admin`)")
    limit = dynamic["http"]["middlewares"]["ratelimit-rtc-example-org-livekit-jwt"]["rateLimit"]
    assert (limit["average"], limit["period"], limit["burst"]) == (30, "1m", 20)
    assert limit.get("sourceCriterion") == criterion
    with pytest.raises(ValueError, match="below its path prefix"):
        Route("rtc.example.org", "http://lk-jwt-service:8080", paths=("/get_token",))
    with pytest.raises(ValueError, match="not /segment"):
        Route("rtc.example.org", "http://lk-jwt-service:8080", path_prefix="/livekit/jwt", paths=("get_token`)",))
