"""coturn, booted from the program's turnserver.conf, relays for Synapse-issued credentials only."""

from __future__ import annotations

import secrets
import socket
import subprocess
import time

import pytest
import requests

from commstack.checks.doctor import turn_allocate, turn_rest_credentials
from commstack.operations.admin import register


def _conf_values(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and not key.startswith("#"):
            values[key] = value
    return values


@pytest.fixture(scope="module")
def turn_credentials(harness) -> dict:
    secret = harness.rendered.yaml("synapse", "/data/homeserver.yaml")["registration_shared_secret"]
    session = register(harness.synapse_url, secret, f"caller-{secrets.token_hex(3)}", secrets.token_urlsafe(18),
                       admin=False)
    response = requests.get(f"{harness.nginx_url}/_matrix/client/v3/voip/turnServer", timeout=10,
                            headers={"Authorization": f"Bearer {session['access_token']}"})
    assert response.status_code == 200
    return response.json()


@pytest.fixture(scope="module")
def turn_secret(harness) -> str:
    return _conf_values(harness.rendered.text("turn", "/etc/coturn/turnserver.conf"))["static-auth-secret"]


def _uclient(harness, username: str, password: str) -> subprocess.CompletedProcess:
    # -y: a second client on the same server is the peer (client -> relay -> relay -> client).
    return subprocess.run(
        [harness.binaries["turnutils_uclient"], "-y", "-n", "5", "-u", username, "-w", password,
         "-p", str(harness.ports.turn), "127.0.0.1"],
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_synapse_issues_the_rendered_turn_uris(harness, turn_credentials):
    assert turn_credentials["uris"] == harness.rendered.yaml("synapse", "/data/homeserver.yaml")["turn_uris"]
    expires_at = int(turn_credentials["username"].split(":")[0])
    assert time.time() < expires_at <= time.time() + turn_credentials["ttl"] + 5


def test_synapse_credentials_allocate_and_relay_with_turnutils(harness, turn_credentials):
    done = _uclient(harness, turn_credentials["username"], turn_credentials["password"])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_synapse_credentials_allocate_over_udp_tcp_and_tls(harness, turn_credentials):
    for port, transport in ((harness.ports.turn, "udp"), (harness.ports.turn, "tcp"), (harness.ports.turn_tls, "tls")):
        result = turn_allocate("127.0.0.1", port, turn_credentials["username"], turn_credentials["password"],
                               transport, verify_tls=False)
        assert result.ok, f"{transport}: {result.detail}"


def test_a_wrong_password_is_refused(harness, turn_credentials):
    assert _uclient(harness, turn_credentials["username"], "not-the-password").returncode != 0
    result = turn_allocate("127.0.0.1", harness.ports.turn, turn_credentials["username"], "not-the-password")
    assert (result.ok, result.error_code) == (False, 401)


def test_an_expired_credential_is_refused(harness, turn_secret):
    # Correctly signed with the shared secret, but for a time that has passed.
    username, password = turn_rest_credentials(turn_secret, "@late:commstack.localhost", int(time.time()) - 60)
    result = turn_allocate("127.0.0.1", harness.ports.turn, username, password)
    assert (result.ok, result.error_code) == (False, 401)
    fresh_username, fresh_password = turn_rest_credentials(turn_secret, "@late:commstack.localhost",
                                                           int(time.time()) + 600)
    assert turn_allocate("127.0.0.1", harness.ports.turn, fresh_username, fresh_password).ok


def test_the_container_health_check_command_answers(harness):
    """The rendered health check, run against the real coturn (only the port adapted), answers;
    against a port nothing listens on it does not finish within Docker's timeout."""
    container = next(reg for reg in harness.rendered.evaluation.of_type("docker:index/container:Container")
                     if reg.plain_inputs["name"] == "turn")
    kind, program, *args = container.plain_inputs["healthcheck"]["tests"]
    assert (kind, program, args[-1]) == ("CMD", "turnutils_stunclient", "127.0.0.1")
    port_index = args.index("-p") + 1

    def run(port: int) -> int:
        argv = [program, *args[:port_index], str(port), *args[port_index + 1:]]
        try:
            return subprocess.run(argv, capture_output=True, timeout=5, check=False).returncode
        except subprocess.TimeoutExpired:
            return -1

    assert run(harness.ports.turn) == 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as unused:
        unused.bind(("127.0.0.1", 0))
        assert run(unused.getsockname()[1]) != 0


def _stun_binding(port: int, magic_cookie: bool = True) -> dict[int, bytes] | None:
    """One STUN Binding request over UDP; the response's attributes by type, or None if unanswered."""
    transaction = secrets.token_bytes(12)
    request = b"\x00\x01\x00\x00" + (b"\x21\x12\xa4\x42" if magic_cookie else secrets.token_bytes(4)) + transaction
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(2)
        udp.sendto(request, ("127.0.0.1", port))
        try:
            response = udp.recv(2048)
        except socket.timeout:
            return None
    assert response[:2] == b"\x01\x01" and response[8:20] == transaction, response.hex()
    attributes, offset = {}, 20
    while offset < len(response):
        kind, length = int.from_bytes(response[offset:offset + 2], "big"), int.from_bytes(response[offset + 2:offset + 4], "big")
        attributes[kind] = response[offset + 4:offset + 4 + length]
        offset += 4 + length + (-length % 4)
    return attributes


XOR_MAPPED_ADDRESS, MAPPED_ADDRESS, RESPONSE_ORIGIN, OTHER_ADDRESS = 0x0020, 0x0001, 0x802B, 0x802C


def test_stun_answers_are_small_and_old_stun_gets_none(harness):
    """The real coturn with the rendered hardening: a Binding answer carries XOR-MAPPED-ADDRESS only
    (no MAPPED-ADDRESS, no RESPONSE-ORIGIN), and an RFC 3489 request (no magic cookie) is not answered."""
    attributes = _stun_binding(harness.ports.turn)
    assert attributes is not None and XOR_MAPPED_ADDRESS in attributes
    assert not {MAPPED_ADDRESS, RESPONSE_ORIGIN, OTHER_ADDRESS} & set(attributes), sorted(map(hex, attributes))
    assert _stun_binding(harness.ports.turn, magic_cookie=False) is None


def test_turns_offers_only_aead_ciphers_on_tls_1_2(harness):
    import ssl

    def handshake(cipher: str):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(cipher)
        try:
            with socket.create_connection(("127.0.0.1", harness.ports.turn_tls), timeout=5) as raw:
                with context.wrap_socket(raw) as tls:
                    return tls.cipher()[0]
        except ssl.SSLError as exc:
            return exc.reason

    assert handshake("ECDHE-ECDSA-AES128-SHA") == "SSLV3_ALERT_HANDSHAKE_FAILURE"
    assert handshake("ECDHE-ECDSA-AES128-GCM-SHA256") == "ECDHE-ECDSA-AES128-GCM-SHA256"
