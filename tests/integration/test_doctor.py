"""`python -m commstack doctor` against the harness: all green; a broken target fails with the right hint.
HTTPS goes through the harness's Traefik with TLS verified against the program's self-signed
certificates (--ca-file), hostnames checked: no --insecure-tls."""

from __future__ import annotations

import os
import subprocess
import sys
from urllib.parse import urlsplit

import pytest

from commstack import doctor
from components.matrix import proxy
from tests.integration.harness import ROOT


@pytest.fixture(scope="module")
def ca_file(harness, tmp_path_factory) -> str:
    """The certificates the program generates for Traefik and for coturn's turns: listener."""
    bundle = tmp_path_factory.mktemp("doctor") / "ca.pem"
    bundle.write_text(harness.rendered.text(proxy.CONTAINER, proxy.CERT_PATH)
                      + harness.rendered.text("turn", "/etc/coturn/certs/fullchain.pem"))
    return str(bundle)


@pytest.fixture(scope="module")
def doctor_argv(harness, ca_file) -> list[str]:
    homeserver = harness.rendered.yaml("synapse", "/data/homeserver.yaml")
    server_name = homeserver["server_name"]
    matrix_host = urlsplit(homeserver["public_baseurl"]).hostname
    turn_host = doctor.parse_turn_uri(homeserver["turn_uris"][0])[1]
    traefik = f"127.0.0.1:{harness.ports.proxy['websecure']}"
    argv = ["--server-name", server_name, "--homeserver-url", homeserver["public_baseurl"],
            "--public-ip", "127.0.0.1", "--admin-url", harness.synapse_url, "--ca-file", ca_file,
            "--via", f"{server_name}:443={traefik}", "--via", f"{matrix_host}:443={traefik}",
            "--via", f"{turn_host}:3478=127.0.0.1:{harness.ports.turn}",
            "--via", f"{turn_host}:5349=127.0.0.1:{harness.ports.turn_tls}"]
    for kind in sorted(harness.bridges):  # the bridges the harness booted (telegram only in a session)
        registration = harness.rendered.yaml(f"bridge-{kind}", "/data/registration.yaml")
        argv += ["--bridge", f"{registration['id']}={registration['as_token']}"]
    return argv


def _doctor(harness, argv: list[str]) -> subprocess.CompletedProcess:
    secret = harness.rendered.yaml("synapse", "/data/homeserver.yaml")["registration_shared_secret"]
    return subprocess.run([sys.executable, "-m", "commstack", "doctor", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COMMSTACK_SHARED_SECRET": secret}, check=False)


def _status(output: str, check: str) -> str:
    line = next(line for line in output.splitlines() if line.startswith(check + " "))
    return line[len(check):].split()[0]


def test_doctor_passes_against_the_harness(harness, doctor_argv):
    done = _doctor(harness, doctor_argv)
    assert done.returncode == 0, done.stdout + done.stderr
    homeserver = harness.rendered.yaml("synapse", "/data/homeserver.yaml")
    matrix_host = urlsplit(homeserver["public_baseurl"]).hostname
    expected_pass = ["well-known server", "well-known client", "client API", "federation API", "test user",
                     "turn credentials", *(f"bridge {kind}" for kind in sorted(harness.bridges)),
                     f"dns {homeserver['server_name']}", f"dns {matrix_host}",
                     f"tls {homeserver['server_name']}:443", f"tls {matrix_host}:443"]
    expected_pass += [f"turn {uri}" for uri in homeserver["turn_uris"]]
    for check in expected_pass:
        assert _status(done.stdout, check) == "PASS", done.stdout
    assert "FAIL" not in done.stdout and "SKIP" not in done.stdout
    assert homeserver["registration_shared_secret"] not in done.stdout + done.stderr


def test_doctor_fails_on_a_wrong_well_known_url_with_the_hint(harness, doctor_argv):
    # Synapse itself does not serve the well-known documents (serve_server_wellknown: false).
    done = _doctor(harness, [*doctor_argv, "--well-known-url", harness.synapse_url])
    assert done.returncode == 1
    assert _status(done.stdout, "well-known server") == "FAIL"
    line = next(line for line in done.stdout.splitlines() if line.startswith("well-known server"))
    assert "HTTP 404" in line and "/.well-known/matrix/server" in line


def test_doctor_fails_on_a_wrong_bridge_token_with_the_hint(harness, doctor_argv):
    done = _doctor(harness, [*doctor_argv, "--bridge", "whatsapp=not-the-as-token"])
    assert done.returncode == 1
    line = next(line for line in done.stdout.splitlines() if line.startswith("bridge whatsapp"))
    assert "FAIL" in line and "M_UNKNOWN_TOKEN" in line and "app_service_config_files" in line


def test_doctor_fails_when_turn_is_unreachable(harness, doctor_argv):
    turn_host = doctor.parse_turn_uri(harness.rendered.yaml("synapse", "/data/homeserver.yaml")["turn_uris"][0])[1]
    closed_port = harness.ports.postgres  # a TCP-only service: nothing answers TURN there
    done = _doctor(harness, [*doctor_argv, "--via", f"{turn_host}:3478=127.0.0.1:{closed_port}"])
    assert done.returncode == 1
    udp_line = next(line for line in done.stdout.splitlines() if line.startswith("turn turn:") and "udp" in line)
    assert "FAIL" in udp_line and "49160-49200/udp" in udp_line


def test_doctor_fails_tls_without_the_programs_certificate(harness, doctor_argv):
    """Verification is really on: the system's CAs do not trust the self-signed stack."""
    argv = [*doctor_argv[:doctor_argv.index("--ca-file")], *doctor_argv[doctor_argv.index("--ca-file") + 2:]]
    done = _doctor(harness, argv)
    assert done.returncode == 1
    homeserver = harness.rendered.yaml("synapse", "/data/homeserver.yaml")
    line = next(line for line in done.stdout.splitlines() if line.startswith(f"tls {homeserver['server_name']}:443"))
    assert "FAIL" in line and "self-signed certificate" in line
    assert _status(done.stdout, "well-known server") == "FAIL"
