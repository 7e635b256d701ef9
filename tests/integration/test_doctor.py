"""`python -m commstack doctor` against the harness: all green; a broken target fails with the right hint.
HTTPS goes through the harness's Traefik with TLS verified against the program's self-signed
certificates (--ca-file), hostnames checked: no --insecure-tls.

The call rows run against the harness's real LiveKit everywhere (with a LiveKit token minted from
the program's key file, as an operator's `--livekit-token`), and end to end with lk-jwt-service's
own token in sessions that built it (calls_backend: it cannot be built in CI)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
from livekit import api

from commstack.checks import doctor
from components.matrix import proxy
from tests.integration import calls_backend, rtc_client
from tests.integration.harness import LOOPBACK, ROOT, free_port
from tests.values import different

needs_lk_jwt = pytest.mark.skipif(calls_backend.lk_jwt_binary() is None, reason=calls_backend.LK_JWT_SKIP_REASON)


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
    if homeserver.get("matrix_rtc"):  # calls on: lk-jwt-service and LiveKit's signalling on the rtc host
        argv += ["--via", f"{_rtc_host(harness)}:443={traefik}", "--livekit-url", _livekit_url(harness)]
    for kind in sorted(harness.bridges):  # the bridges the harness booted (telegram only in a session)
        registration = harness.rendered.yaml(f"bridge-{kind}", "/data/registration.yaml")
        argv += ["--bridge", f"{registration['id']}={registration['as_token']}"]
    return argv


def _rtc_host(harness) -> str:
    return urlsplit(_service_url(harness)).hostname


def _service_url(harness) -> str:
    transports = harness.rendered.yaml("synapse", "/data/homeserver.yaml")["matrix_rtc"]["transports"]
    return transports[0]["livekit_service_url"]


def _livekit_url(harness) -> str:
    return calls_backend.container_envs(harness.rendered, "lk-jwt-service")["LIVEKIT_URL"]


def _doctor(harness, argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    secret = harness.rendered.yaml("synapse", "/data/homeserver.yaml")["registration_shared_secret"]
    return subprocess.run([sys.executable, "-m", "commstack", "doctor", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COMMSTACK_SHARED_SECRET": secret, **(env or {})},
                          check=False)


def _line(output: str, check: str) -> str:
    return next(line for line in output.splitlines() if line.startswith(check + " "))


def _status(output: str, check: str) -> str:
    return _line(output, check)[len(check):].split()[0]


def test_doctor_passes_against_the_harness(harness, doctor_argv):
    """Every row but the call rows (their own tests below): all PASS, and calls show one SKIP row."""
    done = _doctor(harness, [*doctor_argv, "--no-calls"])
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
    assert "FAIL" not in done.stdout
    assert [line.split()[:2] for line in done.stdout.splitlines() if " SKIP " in line] == [["calls", "SKIP"]]
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


# -- the call rows ---------------------------------------------------------------------------------

LIVEKIT_KEYS = "/etc/livekit/keys.yaml"


def _keys(harness) -> tuple[str, str]:
    return rtc_client.key_pair(harness.rendered.text("livekit", LIVEKIT_KEYS))


async def _create_room(harness, name: str) -> None:
    key, secret = _keys(harness)
    async with api.LiveKitAPI(f"http://{LOOPBACK}:{harness.ports.livekit}", key, secret) as lk:
        await lk.room.create_room(api.CreateRoomRequest(name=name, empty_timeout=60))


def _operator_token(harness, secret: str | None = None) -> dict[str, str]:
    """A LiveKit token for a room that exists, as an operator mints one (`lk token create`)."""
    key, real_secret = _keys(harness)
    room = f"doctor-{secrets.token_hex(4)}"
    asyncio.run(_create_room(harness, room))
    return {"COMMSTACK_LIVEKIT_TOKEN": rtc_client.mint_token(key, secret or real_secret, room, "doctor-probe")}


def _media_row(harness) -> str:
    return f"livekit media {LOOPBACK}:{harness.ports.livekit_rtc}/udp"


def test_doctor_call_rows_against_the_real_livekit(harness, doctor_argv):
    """The announced foci, the rtc host's DNS and TLS, and LiveKit's signalling and UDP media pass against
    the real LiveKit through Traefik; lk-jwt-service's rows pass where it runs, else fail with its hint."""
    env = _operator_token(harness)
    done = _doctor(harness, doctor_argv, env)
    service_url, rtc_host = _service_url(harness), _rtc_host(harness)
    for check in ("well-known rtc_foci", "rtc transports", f"dns {rtc_host}", f"tls {rtc_host}:443",
                  "livekit signalling", _media_row(harness)):
        assert _status(done.stdout, check) == "PASS", done.stdout
    assert service_url in _line(done.stdout, "rtc transports") and service_url in _line(done.stdout, "well-known rtc_foci")
    assert "joined with --livekit-token's token" in _line(done.stdout, "livekit signalling")
    assert "ICE check answered" in _line(done.stdout, _media_row(harness))
    assert env["COMMSTACK_LIVEKIT_TOKEN"] not in done.stdout + done.stderr
    health, token = _line(done.stdout, f"lk-jwt-service {service_url}"), _line(done.stdout, "lk-jwt-service token")
    if harness.calls.lk_jwt_booted:
        assert done.returncode == 0, done.stdout
        assert " PASS " in health and " PASS " in token, done.stdout
    else:  # CI: nothing listens behind Traefik's lk-jwt-service route
        assert done.returncode == 1
        assert "HTTP 502 on /healthz" in health and "Traefik cannot reach lk-jwt-service" in health, health
        assert "HTTP 502" in token and "Traefik cannot reach lk-jwt-service" in token, token
        failed = [line.split()[0:3] for line in done.stdout.splitlines() if " FAIL " in line]
        assert failed == [["lk-jwt-service", service_url, "FAIL"], ["lk-jwt-service", "token", "FAIL"]], done.stdout


@needs_lk_jwt
def test_doctor_passes_every_call_row_with_lk_jwt_service(harness, doctor_argv):
    """End to end as Element Call does it: the throwaway user's OpenID token, lk-jwt-service's LiveKit
    token (room and identity checked), the join over wss through Traefik, and an ICE check on UDP."""
    done = _doctor(harness, doctor_argv)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAIL" not in done.stdout and " SKIP " not in done.stdout, done.stdout
    token = _line(done.stdout, "lk-jwt-service token")
    assert " PASS " in token and f"JWT ok, {_livekit_url(harness)}" in token, token
    assert "joined with lk-jwt-service's token" in _line(done.stdout, "livekit signalling")
    assert _status(done.stdout, _media_row(harness)) == "PASS", done.stdout


def test_doctor_fails_media_on_a_closed_udp_port(harness, doctor_argv):
    """LiveKit's advertised port, sent to a loopback UDP port where nothing listens (ICMP unreachable)."""
    closed = free_port()
    done = _doctor(harness, [*doctor_argv, "--via", f"{LOOPBACK}:{harness.ports.livekit_rtc}={LOOPBACK}:{closed}"],
                   _operator_token(harness))
    assert done.returncode == 1
    line = _line(done.stdout, _media_row(harness))
    assert " FAIL " in line and "port unreachable" in line and f"nothing receives on {harness.ports.livekit_rtc}/udp" in line


def test_doctor_fails_media_when_udp_is_dropped(harness, doctor_argv):
    """A UDP socket that reads and never answers: what a firewall that drops the range looks like."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind((LOOPBACK, 0))
        done = _doctor(harness, [*doctor_argv, "--via",
                                 f"{LOOPBACK}:{harness.ports.livekit_rtc}={LOOPBACK}:{silent.getsockname()[1]}"],
                       _operator_token(harness))
        silent.settimeout(0)
        received = silent.recv(2048)
    assert done.returncode == 1
    assert received[:2] == b"\x00\x01"  # doctor's STUN Binding request reached the socket
    line = _line(done.stdout, _media_row(harness))
    assert " FAIL " in line and "no answer to 4 ICE checks" in line and "cloud provider's firewall" in line, line


def test_doctor_fails_signalling_on_a_token_signed_with_another_key(harness, doctor_argv):
    """A LiveKit whose key file is not the one the token was signed with (the key files differ)."""
    env = _operator_token(harness, secret="x" * 48)
    done = _doctor(harness, doctor_argv, env)
    assert done.returncode == 1
    line = _line(done.stdout, "livekit signalling")
    assert " FAIL " in line and "HTTP 401: invalid token: <token>" in line, line
    assert "LiveKit refused the token's key or signature" in line, line
    assert "eyJ" not in done.stdout + done.stderr  # LiveKit echoes the token it refused; doctor does not
    assert _status(done.stdout, "livekit media") == "SKIP"


class _StandIn:
    """A real HTTP server on loopback answering each path with (status, JSON body); 500 otherwise."""

    def __init__(self, answers: dict[str, tuple[int, dict]]):
        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                status, body = answers.get(self.path.split("?")[0], (500, {"errcode": "M_UNKNOWN", "error": "boom"}))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.url = f"http://{LOOPBACK}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_doctor_fails_a_well_known_without_foci(harness, doctor_argv):
    homeserver = harness.rendered.yaml("synapse", "/data/homeserver.yaml")
    with _StandIn({"/.well-known/matrix/client": (200, {"m.homeserver": {"base_url": homeserver["public_baseurl"]}})}) as stand_in:
        done = _doctor(harness, [*doctor_argv, "--well-known-url", stand_in.url], _operator_token(harness))
    assert done.returncode == 1
    line = _line(done.stdout, "well-known rtc_foci")
    assert " FAIL " in line and "no livekit focus (org.matrix.msc4143.rtc_foci is null)" in line, line
    assert _status(done.stdout, "rtc transports") == "PASS"  # Synapse still announces it


def test_doctor_fails_an_lk_jwt_service_that_answers_500(harness, doctor_argv):
    with _StandIn({}) as broken:
        done = _doctor(harness, [*doctor_argv, "--via", f"{_rtc_host(harness)}:443={broken.url}"])
    assert done.returncode == 1
    health = _line(done.stdout, f"lk-jwt-service {_service_url(harness)}")
    assert " FAIL " in health and "HTTP 500 on /healthz" in health and "lk-jwt-service answered an error" in health
    token = _line(done.stdout, "lk-jwt-service token")
    assert " FAIL " in token and "HTTP 500 M_UNKNOWN" in token, token


def test_doctor_fails_an_lk_jwt_service_that_refuses_connections(harness, doctor_argv):
    closed = free_port()
    done = _doctor(harness, [*doctor_argv, "--via", f"{_rtc_host(harness)}:443={LOOPBACK}:{closed}"])
    assert done.returncode == 1
    health = _line(done.stdout, f"lk-jwt-service {_service_url(harness)}")
    assert " FAIL " in health and "ConnectionError" in health and f"nothing answers on {_rtc_host(harness)}:443" in health
    assert _status(done.stdout, f"tls {_rtc_host(harness)}:443") == "FAIL"
    assert _status(done.stdout, "livekit signalling") == "FAIL"  # LiveKit shares the rtc host
    assert _status(done.stdout, "livekit media") == "SKIP"


@needs_lk_jwt
def test_doctor_fails_when_lk_jwt_service_holds_another_livekit_key(harness, doctor_argv, tmp_path):
    """A real second lk-jwt-service whose key file differs from LiveKit's: LiveKit refuses its room creation."""
    keys = tmp_path / "other-keys"
    key, secret = rtc_client.key_pair(harness.rendered.text("livekit", "/etc/livekit/keys.yaml"))
    keys.write_text(f"{different(key)}: {different(secret)}\n")
    keys.chmod(0o600)
    with calls_backend.lk_jwt_replaced(harness, {"LIVEKIT_KEY_FILE": str(keys)}):  # behind Traefik's route
        done = _doctor(harness, doctor_argv)
    assert done.returncode == 1
    assert _status(done.stdout, f"lk-jwt-service {_service_url(harness)}") == "PASS"
    token = _line(done.stdout, "lk-jwt-service token")
    assert " FAIL " in token and "HTTP 500 M_UNKNOWN" in token and "Unable to create room on SFU" in token, token
    assert "cannot create the room on LiveKit: its key file differs" in token
