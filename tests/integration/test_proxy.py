"""The program's Traefik (traefik.yml, dynamic.yml, self-signed certificate) booted as the real
Traefik: redirects, TLS, Host routing to nginx -> Synapse and Element, no default route, TLS >= 1.2,
an access log without credentials and the container's own health check."""

from __future__ import annotations

import json
import re
import secrets
import socket
import ssl
import subprocess
import time
from urllib.parse import urlsplit

import pytest
import requests
import yaml
from cryptography import x509

from components.matrix import element, proxy
from components.matrix.wellknown import well_known_client, well_known_server
from tests.integration.harness import LOOPBACK, host_path, proxy_host


@pytest.fixture(scope="module")
def homeserver(harness) -> dict:
    return harness.rendered.yaml("synapse", "/data/homeserver.yaml")


@pytest.fixture(scope="module")
def matrix_host(homeserver) -> str:
    return urlsplit(homeserver["public_baseurl"]).hostname


@pytest.fixture(scope="module")
def public(harness) -> requests.Session:
    session = harness.public()
    yield session
    session.close()


def _routed_host(harness, upstream_host: str) -> str:
    """The public host the program's dynamic.yml routes to the container `upstream_host`."""
    dynamic = harness.proxy_dynamic
    hosts = [harness.proxy_hosts[i] for i, router in enumerate(dynamic["http"]["routers"].values())
             if urlsplit(dynamic["http"]["services"][router["service"]]["loadBalancer"]["servers"][0]["url"]).hostname
             == upstream_host]
    assert len(hosts) == 1, hosts
    return hosts[0]


def _tls_client(harness, host: str, context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection((LOOPBACK, harness.ports.proxy["websecure"]), timeout=5)
    try:
        return context.wrap_socket(raw, server_hostname=host)
    except BaseException:
        raw.close()
        raise


def test_http_redirects_every_host_to_https(harness, public):
    for host in harness.proxy_hosts:
        response = public.get(f"http://{host}/_matrix/client/versions?x=1", allow_redirects=False)
        assert response.status_code in (301, 308), (host, response.status_code)
        location = urlsplit(response.headers["Location"])
        # The websecure entry point's port: 443 in the container, a free loopback port here.
        assert (location.scheme, location.hostname, location.port) == ("https", host, harness.ports.proxy["websecure"])
        assert (location.path, location.query) == ("/_matrix/client/versions", "x=1")


def test_matrix_host_presents_the_program_certificate(harness, matrix_host):
    context = ssl.create_default_context(cafile=str(harness.proxy_certificate))
    assert context.check_hostname
    with _tls_client(harness, matrix_host, context) as tls:
        served = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
    rendered = x509.load_pem_x509_certificate(harness.rendered.text(proxy.CONTAINER, proxy.CERT_PATH).encode())
    assert served == rendered
    assert matrix_host in served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)


def test_a_name_outside_the_certificate_fails_verification(harness):
    context = ssl.create_default_context(cafile=str(harness.proxy_certificate))
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        _tls_client(harness, "not-in-the-certificate.example", context).close()


def test_client_api_reaches_synapse_through_traefik_and_nginx(harness, public, homeserver):
    response = public.get(f"{homeserver['public_baseurl'].rstrip('/')}/_matrix/client/versions")
    assert response.status_code == 200
    # Synapse's own document, passed through nginx and Traefik unchanged.
    direct = requests.get(f"{harness.synapse_url}/_matrix/client/versions", timeout=5).json()
    assert response.json() == direct and "v1.11" in direct["versions"]


@pytest.mark.parametrize("which", ["server", "client"])
def test_apex_serves_well_known_with_json_and_cors(public, homeserver, matrix_host, which):
    response = public.get(f"https://{homeserver['server_name']}/.well-known/matrix/{which}")
    assert response.status_code == 200
    assert response.headers["Content-Type"].split(";")[0] == "application/json"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    expected = well_known_server(matrix_host, 443) if which == "server" else well_known_client(homeserver["public_baseurl"],
                                                  homeserver.get("matrix_rtc", {}).get("transports", ()))
    assert response.json() == expected


def test_element_host_serves_config_pointing_at_the_public_base_url(harness, public, homeserver):
    host = _routed_host(harness, element.LOGICAL_NAME)
    response = public.get(f"https://{host}/config.json")
    assert response.status_code == 200
    assert response.json() == json.loads(harness.rendered.text(element.LOGICAL_NAME, element.CONFIG_PATH))
    assert response.json()["default_server_config"]["m.homeserver"]["base_url"] == homeserver["public_baseurl"]


def test_unknown_host_has_no_default_route(public, matrix_host):
    # A verified TLS connection for the matrix host, then a Host header no router names.
    response = public.get(f"https://{matrix_host}/.well-known/matrix/server", headers={"Host": "unknown.example"})
    assert (response.status_code, response.text.strip()) == (404, "404 page not found")


def test_signal_host_is_routed_to_the_signal_server_upstream(harness, public):
    # Signal-Server is not booted here: a 502 (not the 404 of no route) shows the router matched.
    response = public.get(f"https://{_routed_host(harness, 'signal-server')}/v1/accounts/whoami")
    assert response.status_code == 502


def _handshake_error(harness, host: str, version: ssl.TLSVersion):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(harness.proxy_certificate))
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer the old versions at all
    context.minimum_version = context.maximum_version = version
    try:
        _tls_client(harness, host, context).close()
    except ssl.SSLError as exc:
        return exc.reason
    return None


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_tls_below_1_2_is_refused_by_the_server(harness, matrix_host):
    old = {version: _handshake_error(harness, matrix_host, version)
           for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)}
    # The server's protocol_version alert, not a client that could not offer the version.
    assert set(old.values()) == {"TLSV1_ALERT_PROTOCOL_VERSION"}, old
    assert _handshake_error(harness, matrix_host, ssl.TLSVersion.TLSv1_2) is None


def test_access_log_keeps_no_access_token_or_query(harness, public, homeserver, matrix_host):
    token = secrets.token_urlsafe(24)
    before = len(harness.proxy_access_entries())
    response = public.get(f"{homeserver['public_baseurl'].rstrip('/')}/_matrix/client/v3/account/whoami",
                          params={"access_token": token})
    assert response.status_code == 401  # Synapse saw the token (and refused it)
    deadline = time.monotonic() + 5
    while len(harness.proxy_access_entries()) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    entry = harness.proxy_access_entries()[-1]
    assert (entry["RequestHost"], entry["DownstreamStatus"]) == (matrix_host, 401)
    assert "RequestPath" not in entry
    log = harness.proxy_access_log.read_text() + (harness.root / "logs" / "proxy.log").read_text()
    assert token not in log and "access_token" not in log and "whoami" not in log


def test_the_container_health_check_command_answers(harness, tmp_path):
    container, = [reg for reg in harness.rendered.evaluation.of_type("docker:index/container:Container")
                  if reg.plain_inputs["name"] == proxy.CONTAINER]
    kind, program, *args = container.plain_inputs["healthcheck"]["tests"]
    assert (kind, program) == ("CMD", "traefik")
    static_here = str(host_path(harness.root, proxy.CONTAINER, proxy.STATIC_PATH))
    argv = [harness.binaries["traefik"], *[a.replace(proxy.STATIC_PATH, static_here) for a in args]]
    healthy = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert healthy.stdout.strip() == f"OK: http://{LOOPBACK}:{harness.ports.proxy['ping']}/ping"

    # The same command against a config whose ping entry point nothing serves must fail.
    static = yaml.safe_load(open(static_here).read())
    with socket.socket() as unused:
        unused.bind((LOOPBACK, 0))
        static["entryPoints"]["ping"]["address"] = f"{LOOPBACK}:{unused.getsockname()[1]}"
        closed = tmp_path / "traefik.yml"
        closed.write_text(yaml.safe_dump(static))
        unhealthy = subprocess.run([a.replace(static_here, str(closed)) for a in argv], capture_output=True,
                                   text=True, timeout=30, check=False)
    assert unhealthy.returncode != 0



def _cipher_error(harness, host: str, cipher: str):
    """The handshake error for a TLS 1.2 client offering only `cipher` (OpenSSL's name), or None."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(harness.proxy_certificate))
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(cipher)
    try:
        with _tls_client(harness, host, context) as tls:
            assert tls.cipher()[0] == cipher
    except ssl.SSLError as exc:
        return exc.reason
    return None


def test_tls_1_2_offers_only_aead_ciphers(harness, matrix_host):
    """Mozilla intermediate: Traefik refuses a client that offers only a CBC suite (Go's own default
    list accepts it), and accepts the GCM one for the same ECDSA certificate."""
    assert _cipher_error(harness, matrix_host, "ECDHE-ECDSA-AES128-SHA") == "SSLV3_ALERT_HANDSHAKE_FAILURE"
    assert _cipher_error(harness, matrix_host, "ECDHE-ECDSA-AES128-SHA256") == "SSLV3_ALERT_HANDSHAKE_FAILURE"
    assert _cipher_error(harness, matrix_host, "ECDHE-ECDSA-AES128-GCM-SHA256") is None


def _a_routed_path(rule: str) -> str:
    """A path the router's rule matches: its first exact Path, else its PathPrefix, else /."""
    rule = rule.replace(proxy.NOT_ADMIN, "")
    matched = re.search(r"Path\(`([^`]+)`\)", rule) or re.search(r"PathPrefix\(`([^`]+)`\)", rule)
    return matched.group(1) if matched else "/"


def test_every_router_sends_hsts_anti_framing_and_nosniff(harness, public):
    for router in harness.proxy_dynamic["http"]["routers"].values():
        if router["entryPoints"] != ["websecure"]:
            continue
        host = proxy_host(router["rule"])
        response = public.get(f"https://{host}{_a_routed_path(router['rule'])}")
        assert response.headers.get("Strict-Transport-Security") == "max-age=31536000", host
        assert response.headers.get("X-Frame-Options") == "SAMEORIGIN", host
        assert response.headers.get("Content-Security-Policy") == "frame-ancestors 'self'", host
        assert response.headers.get("X-Content-Type-Options") == "nosniff", host


def _slug_of(host: str) -> str:
    return f"{host}/livekit/jwt".replace(".", "-").replace("/", "-").strip("-")


def _rtc_host(harness) -> str:
    url = harness.rendered.yaml("synapse", "/data/homeserver.yaml")["matrix_rtc"]["transports"][0]["livekit_service_url"]
    return urlsplit(url).hostname


def test_lk_jwt_service_is_reachable_only_at_the_endpoints_clients_call(harness, public):
    """Traefik passes /livekit/jwt/{get_token,sfu/get,healthz} on (lk-jwt-service answers, or 502 when
    this run has no binary) and answers anything else under /livekit/jwt with its own 404."""
    host = _rtc_host(harness)
    for path in ("get_token", "sfu/get", "healthz"):
        status = public.post(f"https://{host}/livekit/jwt/{path}", json={}).status_code
        assert status != 404, path
    for path in ("sfu_webhook", "get_token/x", "", "metrics"):
        response = public.post(f"https://{host}/livekit/jwt/{path}", json={})
        assert (response.status_code, response.text.strip()) == (404, "404 page not found"), path


def test_lk_jwt_service_is_rate_limited_per_client(harness):
    """Past its burst, one client address gets 429 from Traefik; another address is not affected.
    (From 127.0.0.2 and 127.0.0.3, so the other tests' budget on 127.0.0.1 stays whole.)"""
    host = _rtc_host(harness)
    context = ssl.create_default_context(cafile=str(harness.proxy_certificate))

    def post(source: str) -> int:
        raw = socket.create_connection((LOOPBACK, harness.ports.proxy["websecure"]), timeout=5,
                                       source_address=(source, 0))
        with context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(f"POST /livekit/jwt/get_token HTTP/1.1\r\nHost: {host}\r\nContent-Length: 2\r\n"
                        "Connection: close\r\n\r\n{}".encode())
            return int(tls.recv(4096).split(b" ", 2)[1])

    limit = harness.proxy_dynamic["http"]["middlewares"]["ratelimit-" + _slug_of(host)]["rateLimit"]
    assert (limit["average"], limit["period"], limit["burst"]) == (30, "1m", 20)
    started = time.monotonic()
    statuses = [post("127.0.0.2") for _ in range(40)]
    refilled = int(0.5 * (time.monotonic() - started)) + 1  # 30 a minute come back while we send
    assert 429 not in statuses[:20], statuses
    assert statuses.count(429) >= 40 - 20 - refilled, statuses
    assert post("127.0.0.3") != 429
