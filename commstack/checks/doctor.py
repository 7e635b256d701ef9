"""`python -m commstack doctor`: checks a deployed stack from outside, as a person would.

DNS answers, TLS certificates, the well-known documents, the client and
federation APIs, a real TURN allocation with freshly issued credentials,
each bridge's appservice ping and Signal-Server's health. Prints one table
row per check with PASS/FAIL/SKIP and a fix hint; exits 1 on any FAIL.

`--stack NAME` reads the hostnames (and, for the throwaway TURN user, the
shared secret) from `pulumi stack output`; explicit flags override them.
`--via PUBLIC=LOCAL` sends traffic for a public host:port elsewhere (like
curl's --connect-to: Host header, SNI and certificate check keep the public
name), for a stack reached through a tunnel or the loopback harness.
A self-signed stack's certificate is its `tlsCertificate` output: with `--stack`
doctor trusts it by itself; without, `--ca-file PEM` names it (e.g. saved with
`pulumi stack output tlsCertificate > dev.pem`). `--insecure-tls` skips the
certificate checks altogether, for when neither is at hand. Names under
`.localhost` that this machine does not resolve are reached on 127.0.0.1.

Protocols: Matrix spec v1.x server discovery (/.well-known/matrix/*),
Client-Server API (/versions, /voip/turnServer, /v1/appservice/{id}/ping),
Server-Server API (/federation/v1/version, /key/v2/server); TURN per
RFC 8656 (Allocate) with STUN long-term credentials per RFC 8489 §9.2 (the
messages built and parsed by PyPI `aioice`), and the TURN REST credential
scheme coturn's use-auth-secret implements.
MatrixRTC calls (foci, lk-jwt-service's token, LiveKit's signalling and UDP media):
commstack/checks/doctor_calls.py.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import socket
import ssl
import struct
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

import requests
from aioice import stun, turn

from commstack.checks.doctor_calls import check_calls, parse_port_range
from commstack.checks.target import (FAIL, PASS, SKIP, TIMEOUT, Check, Target, TestUser, _default_port, _errcode, _get,
                                     _json_document, _post, _verify, check_dns, check_tls, reach_address)
from commstack.operations.admin import AdminError, register, register_via_docker, stack_outputs


# -- Matrix HTTP APIs ------------------------------------------------------------------------


def check_well_known_server(target: Target) -> tuple[Check, Optional[str]]:
    url = f"{target.well_known_url}/.well-known/matrix/server"
    data, problem = _json_document(target, url)
    hint = "the wellknown nginx must serve /.well-known/matrix/server on the apex (route <domain> in Traefik)"
    if problem:
        return Check("well-known server", FAIL, problem, hint), None
    delegated = data.get("m.server") if isinstance(data, dict) else None
    if not isinstance(delegated, str) or not delegated:
        return Check("well-known server", FAIL, f"no m.server in {data}", hint), None
    return Check("well-known server", PASS, f"m.server = {delegated}"), delegated


def check_well_known_client(target: Target) -> tuple[Check, Optional[str]]:
    url = f"{target.well_known_url}/.well-known/matrix/client"
    data, problem = _json_document(target, url)
    hint = "public_baseurl in homeserver.yaml and m.homeserver.base_url must be the same https URL"
    if problem:
        return Check("well-known client", FAIL, problem, hint), None
    base_url = ((data or {}).get("m.homeserver") or {}).get("base_url")
    if not isinstance(base_url, str) or urlsplit(base_url).scheme != "https":
        return Check("well-known client", FAIL, f"m.homeserver.base_url is {base_url!r}", hint), None
    if target.homeserver_url and base_url.rstrip("/") != target.homeserver_url.rstrip("/"):
        return Check("well-known client", FAIL, f"base_url {base_url} != expected {target.homeserver_url}", hint), None
    return Check("well-known client", PASS, f"base_url = {base_url}"), base_url


def check_client_api(target: Target, base_url: str) -> Check:
    try:
        response = _get(target, f"{base_url.rstrip('/')}/_matrix/client/versions")
        versions = response.json().get("versions") if response.status_code == 200 else None
    except (requests.RequestException, ValueError) as exc:
        versions, response = None, exc
    if not versions:
        detail = f"HTTP {response.status_code}" if isinstance(response, requests.Response) else str(response)
        return Check("client API", FAIL, detail, "Traefik must route the matrix host to nginx, and nginx /_matrix to Synapse")
    return Check("client API", PASS, f"/versions: {versions[-1]} and {len(versions) - 1} older")


def check_federation_api(target: Target, delegated: str) -> Check:
    host, _, port = delegated.rpartition(":") if delegated.rsplit(":", 1)[-1].isdigit() else (delegated, "", "8448")
    base = f"https://{host}:{port}"
    hint = "federation needs m.server's host:port to reach Synapse's federation listener (federation true?)"
    try:
        version = _get(target, f"{base}/_matrix/federation/v1/version")
        keys = _get(target, f"{base}/_matrix/key/v2/server")
    except requests.RequestException as exc:
        return Check("federation API", FAIL, f"{base}: {exc.__class__.__name__}", hint)
    if version.status_code != 200 or keys.status_code != 200:
        return Check("federation API", FAIL, f"version HTTP {version.status_code}, keys HTTP {keys.status_code}", hint)
    server_keys = keys.json()
    if server_keys.get("server_name") != target.server_name or not server_keys.get("verify_keys"):
        return Check("federation API", FAIL, f"key/v2/server names {server_keys.get('server_name')!r}",
                     "server_name in homeserver.yaml must be the stack's domain")
    name = version.json().get("server", {})
    return Check("federation API", PASS, f"{name.get('name')} {name.get('version')}, keys {sorted(server_keys['verify_keys'])}")


# -- TURN --------------------------------------------------------------------------------------

# REQUESTED-TRANSPORT asks for a UDP relay (RFC 8656 §18.6: protocol 17, then three zero bytes).
UDP_RELAY = turn.UDP_TRANSPORT


@dataclass
class TurnResult:
    ok: bool
    detail: str
    error_code: Optional[int] = None


def allocate_request(username: Optional[str] = None, realm: Optional[str] = None, nonce: Optional[bytes] = None,
                     password: Optional[str] = None) -> bytes:
    """A TURN Allocate request (RFC 8656 §7.1); with the server's realm and nonce it carries the
    long-term credentials and MESSAGE-INTEGRITY keyed with MD5(username:realm:password) (RFC 8489 §9.2)."""
    request = stun.Message(stun.Method.ALLOCATE, stun.Class.REQUEST)
    request.attributes["REQUESTED-TRANSPORT"] = UDP_RELAY
    if realm is not None and nonce is not None and username is not None and password is not None:
        request.attributes["USERNAME"] = username
        request.attributes["REALM"] = realm
        request.attributes["NONCE"] = nonce
        request.add_message_integrity(turn.make_integrity_key(username, realm, password))
    return bytes(request)


def turn_allocate(host: str, port: int, username: str, password: str, transport: str = "udp",
                  tls_server_name: Optional[str] = None, verify_tls: bool = True,
                  ca_file: Optional[str] = None) -> TurnResult:
    """One TURN Allocate with long-term credentials; proves the server relays for them."""
    if transport == "udp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(3)
        sock.connect((host, port))
    else:
        sock = socket.create_connection((host, port), timeout=TIMEOUT)
        if transport == "tls":
            context = ssl.create_default_context(cafile=ca_file)
            if not verify_tls:
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            sock = context.wrap_socket(sock, server_hostname=tls_server_name or host)

    def exchange(message: bytes) -> stun.Message:
        for _ in range(3 if transport == "udp" else 1):
            sock.send(message)
            try:
                if transport == "udp":
                    return stun.parse_message(sock.recv(2048))
                header = _recv_exact(sock, 20)
                return stun.parse_message(header + _recv_exact(sock, struct.unpack("!H", header[2:4])[0]))
            except socket.timeout:
                continue
        raise TimeoutError(f"no answer from {host}:{port}/{transport}")

    try:
        challenge = exchange(allocate_request())
        realm, nonce = challenge.attributes.get("REALM"), challenge.attributes.get("NONCE")
        if challenge.message_class != stun.Class.ERROR or realm is None or nonce is None:
            return TurnResult(False, "the server did not ask for long-term credentials (use-auth-secret off?)")
        answer = exchange(allocate_request(username, realm, nonce, password))
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        return TurnResult(False, f"{host}:{port}/{transport}: {exc}")
    except ValueError as exc:  # aioice's parser: not a STUN message we know
        return TurnResult(False, f"{host}:{port}/{transport}: a malformed STUN answer ({exc})")
    finally:
        sock.close()
    relayed = answer.attributes.get("XOR-RELAYED-ADDRESS")
    if answer.message_method == stun.Method.ALLOCATE and answer.message_class == stun.Class.RESPONSE and relayed:
        if "MESSAGE-INTEGRITY" in answer.attributes and not answer.check_message_integrity(
                turn.make_integrity_key(username, realm, password)):
            return TurnResult(False, "the success answer's MESSAGE-INTEGRITY does not match our credentials")
        return TurnResult(True, f"relay {relayed[0]}:{relayed[1]} for {answer.attributes.get('LIFETIME', 0)} s")
    if "ERROR-CODE" in answer.attributes:
        code, reason = answer.attributes["ERROR-CODE"]
        return TurnResult(False, f"error {code} {reason}", code)
    return TurnResult(False, f"unexpected STUN {answer.message_method.name} {answer.message_class.name.lower()}")


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
    return data


def turn_rest_credentials(shared_secret: str, user: str, expires_at: int) -> tuple[str, str]:
    """coturn's use-auth-secret scheme (what Synapse's turn_shared_secret issues)."""
    username = f"{expires_at}:{user}"
    return username, base64.b64encode(hmac.new(shared_secret.encode(), username.encode(), hashlib.sha1).digest()).decode()


def parse_turn_uri(uri: str) -> tuple[str, str, int, str]:
    """`turn:host:3478?transport=udp` -> (scheme, host, port, transport)."""
    scheme, _, rest = uri.partition(":")
    address, _, query = rest.partition("?")
    host, _, port = address.rpartition(":") if address.rsplit(":", 1)[-1].isdigit() else (address, "", "")
    transport = dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("transport", "udp")
    if scheme == "turns":
        transport = "tls"
    return scheme, host, int(port or _default_port(scheme)), transport


def check_turn(target: Target, base_url: str, token: str, checked_hosts: set[str]) -> list[Check]:
    try:
        response = _get(target, f"{base_url.rstrip('/')}/_matrix/client/v3/voip/turnServer",
                        headers={"Authorization": f"Bearer {token}"})
    except requests.RequestException as exc:
        return [Check("turn credentials", FAIL, str(exc), "the client API must be reachable")]
    data = response.json() if response.status_code == 200 else {}
    if not data.get("uris"):
        return [Check("turn credentials", FAIL, f"HTTP {response.status_code}, no uris",
                      "set turn_uris and turn_shared_secret in homeserver.yaml (turn true)")]
    checks = [Check("turn credentials", PASS, f"{len(data['uris'])} URIs, ttl {data.get('ttl')} s")]
    for uri in target.turn_uris or data["uris"]:
        _, host, port, transport = parse_turn_uri(uri)
        if host not in checked_hosts:
            checked_hosts.add(host)
            checks.append(check_dns(host, target.public_ip))
        addr, local_port = reach_address(target, host, port)
        result = turn_allocate(addr, local_port, data["username"], data["password"], transport,
                               tls_server_name=host, verify_tls=not target.insecure_tls, ca_file=target.ca_file)
        hint = ("401: coturn's static-auth-secret differs from Synapse's turn_shared_secret" if result.error_code == 401
                else f"open {port}/{'udp' if transport == 'udp' else 'tcp'} and 49160-49200/udp; check external-ip")
        checks.append(Check(f"turn {uri}", PASS if result.ok else FAIL, result.detail, "" if result.ok else hint))
    return checks


def _test_user(target: Target, base_url: str) -> TestUser:
    """An access token: the one given, or a throwaway non-admin user's (shared-secret registration)."""
    if target.access_token:
        return TestUser(target.access_token, Check("test user", PASS, "using --access-token"))
    password = secrets.token_urlsafe(24)
    if target.admin_url is None and target.docker_host is not None:
        # No proxy serves the admin API: register inside the Synapse container, then log in publicly.
        return _test_user_via_docker(target, base_url, password)
    if not target.shared_secret or target.admin_url is None:
        return TestUser(None, Check("test user", SKIP, "no Docker host, private admin URL or access token",
                                    "give --stack (reads dockerHost), --admin-url with the shared secret, "
                                    "or --access-token"))
    try:
        session = register(target.admin_url, target.shared_secret, f"doctor-{secrets.token_hex(4)}",
                           password, admin=False, verify=_verify(target))
    except (AdminError, requests.RequestException) as exc:
        return TestUser(None, Check("test user", FAIL, str(exc)[:300],
                                    "give --admin-url where /_synapse/admin/v1/register is reachable, or --access-token"))
    return TestUser(session["access_token"], Check("test user", PASS, f"registered {session['user_id']}"),
                    session["user_id"], password)


def _test_user_via_docker(target: Target, base_url: str, password: str) -> TestUser:
    localpart = f"doctor-{secrets.token_hex(4)}"
    try:
        user_id = register_via_docker(target.docker_host or "", target.server_name, localpart, password, admin=False)
        response = _post(target, f"{base_url.rstrip('/')}/_matrix/client/v3/login", json={
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": localpart}, "password": password})
    except (AdminError, requests.RequestException) as exc:
        return TestUser(None, Check("test user", FAIL, str(exc)[:300],
                                    "is the Docker host reachable (the stack's dockerHost)? Or give --access-token"))
    if response.status_code != 200:
        return TestUser(None, Check("test user", FAIL, f"login as {user_id}: HTTP {response.status_code} "
                                    f"{_errcode(response)}", "the client API must accept password logins"))
    return TestUser(response.json()["access_token"], Check("test user", PASS, f"registered {user_id} (docker exec)"),
                    user_id, password)


def _deactivate(target: Target, base_url: str, user: TestUser) -> None:
    """Removes the throwaway user again (best effort: a leftover is harmless, deactivated or not)."""
    if user.user_id is None:
        return
    try:
        _post(target, f"{base_url.rstrip('/')}/_matrix/client/v3/account/deactivate",
              headers={"Authorization": f"Bearer {user.token}"},
              json={"erase": True, "auth": {"type": "m.login.password", "password": user.password,
                                            "identifier": {"type": "m.id.user", "user": user.user_id}}})
    except requests.RequestException:
        pass


def check_bridge(target: Target, base_url: str, appservice_id: str, as_token: str) -> Check:
    name = f"bridge {appservice_id}"
    try:
        response = _post(target, f"{base_url.rstrip('/')}/_matrix/client/v1/appservice/{appservice_id}/ping",
                         headers={"Authorization": f"Bearer {as_token}"}, json={"transaction_id": "commstack-doctor"})
    except requests.RequestException as exc:
        return Check(name, FAIL, str(exc), "the client API must be reachable")
    if response.status_code == 200:
        return Check(name, PASS, f"ping answered in {response.json().get('duration_ms')} ms")
    errcode = _errcode(response)
    hint = {
        "M_UNKNOWN_TOKEN": "Synapse does not know this as_token: is the registration in app_service_config_files?",
        "M_FORBIDDEN": "the as_token belongs to another appservice id",
        "M_CONNECTION_FAILED": f"Synapse cannot reach the bridge at its registration url: is bridge-{appservice_id} running?",
        "M_CONNECTION_TIMEOUT": f"bridge-{appservice_id} did not answer in time; see `docker logs bridge-{appservice_id}`",
        "M_BAD_STATUS": "the bridge refused Synapse's hs_token: its config.yaml and registration.yaml differ",
    }.get(errcode, "see the Synapse log")
    return Check(name, FAIL, f"HTTP {response.status_code} {errcode}", hint)


def check_signal(target: Target) -> Check:
    """Signal-Server answers: 2xx, or its own JSON 401 for an endpoint that needs credentials
    (e.g. /v1/accounts/whoami, the stack's signalHealthUrl) — not a proxy error page."""
    logs = target.signal_logs or "Signal-Server's log"
    except_hint = f"is Signal-Server running? see `{logs}`"
    try:
        response = _get(target, target.signal_health_url)
    except requests.RequestException as exc:
        return Check("signal health", FAIL, str(exc)[:200], except_hint)
    if response.status_code // 100 == 2:
        return Check("signal health", PASS, f"HTTP {response.status_code}")
    if response.status_code == 401 and _json_field(response, "code") == 401:
        return Check("signal health", PASS, "HTTP 401 from Signal-Server (credentials required)")
    if response.status_code in (502, 503, 504):
        return Check("signal health", FAIL, f"HTTP {response.status_code}",
                     f"the proxy in front cannot reach Signal-Server: see `{logs}`")
    return Check("signal health", FAIL, f"HTTP {response.status_code}", f"see `{logs}`")


def _json_field(response: requests.Response, key: str):
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get(key) if isinstance(body, dict) else None


# -- the run ---------------------------------------------------------------------------------------


def run_checks(target: Target) -> list[Check]:
    target.well_known_url = (target.well_known_url or f"https://{target.server_name}").rstrip("/")
    server_check, delegated = check_well_known_server(target)
    client_check, discovered = check_well_known_client(target)
    base_url = target.homeserver_url or discovered

    hosts = [target.server_name]
    if base_url:
        hosts.append(urlsplit(base_url).hostname)
    if delegated:
        hosts.append(delegated.rsplit(":", 1)[0] if delegated.rsplit(":", 1)[-1].isdigit() else delegated)
    hosts = list(dict.fromkeys(h for h in hosts if h))
    checks = [check_dns(host, target.public_ip) for host in hosts]
    https_origins = {(target.server_name, 443)}
    if base_url:
        parts = urlsplit(base_url)
        https_origins.add((parts.hostname, parts.port or 443))
    checks += [check_tls(target, host, port) for host, port in sorted(https_origins)]
    checks += [server_check, client_check]
    if not base_url:
        checks.append(Check("client API", FAIL, "no homeserver URL", "fix the well-known client document or give --homeserver-url"))
        return checks
    checks.append(check_client_api(target, base_url))
    if delegated:
        checks.append(check_federation_api(target, delegated))
    user = _test_user(target, base_url)
    checks.append(user.check)
    checked_hosts = set(hosts)
    if user.token:
        checks += check_turn(target, base_url, user.token, checked_hosts=checked_hosts)
    checks += check_calls(target, base_url, user, checked_hosts)
    if user.token:
        _deactivate(target, base_url, user)
    checks += [check_bridge(target, base_url, appservice_id, as_token)
               for appservice_id, as_token in sorted(target.bridges.items())]
    if target.signal_health_url:
        checks.append(check_signal(target))
    return checks


def format_table(checks: list[Check]) -> str:
    widths = [max(len(c.name) for c in checks), 6, min(60, max(len(c.detail) for c in checks))]
    lines = [f"{'CHECK':<{widths[0]}}  {'STATUS':<6}  {'DETAIL':<{widths[2]}}  FIX"]
    for c in checks:
        detail = c.detail if len(c.detail) <= widths[2] else c.detail[:widths[2] - 1] + "…"
        lines.append(f"{c.name:<{widths[0]}}  {c.status:<6}  {detail:<{widths[2]}}  {c.hint if c.status != PASS else ''}".rstrip())
    failed = sum(c.status == FAIL for c in checks)
    lines.append(f"{len(checks)} checks: {len(checks) - failed - sum(c.status == SKIP for c in checks)} passed, "
                 f"{failed} failed, {sum(c.status == SKIP for c in checks)} skipped")
    return "\n".join(lines)


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    pairs = {}
    for value in values or []:
        key, sep, rest = value.partition("=")
        if not sep:
            # Never echo the value: for --bridge it is a token (`whatsapp:<token>` instead of `whatsapp=<token>`).
            raise AdminError(f"{flag} takes KEY=VALUE; one value has no '='")
        pairs[key] = rest
    return pairs


_HOST_RE = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?",
                      re.ASCII)


def _valid_host(host: Optional[str]) -> bool:
    if not host:
        return False
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return bool(_HOST_RE.fullmatch(host)) and len(host) <= 253


def _check_url(flag: str, url: Optional[str]) -> None:
    if url is None:
        return
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise AdminError(f"{flag} {url!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not _valid_host(parts.hostname):
        raise AdminError(f"{flag} {url!r} is not an http(s) URL with a host name (e.g. https://matrix.example.org/)")


def _check_target(target: Target) -> None:
    """Refuses malformed names and addresses before any traffic (each message names the flag)."""
    host, _, port = target.server_name.rpartition(":") if target.server_name.count(":") == 1 else (target.server_name, "", "")
    if not _valid_host(host) or (port and not port.isdigit()):
        raise AdminError(f"--server-name {target.server_name!r} is not a host name (e.g. example.org)")
    for flag, url in (("--homeserver-url", target.homeserver_url), ("--well-known-url", target.well_known_url),
                      ("--admin-url", target.admin_url), ("--signal-health-url", target.signal_health_url)):
        _check_url(flag, url)
    if target.livekit_url is not None and urlsplit(target.livekit_url).scheme not in ("ws", "wss"):
        raise AdminError(f"--livekit-url {target.livekit_url!r} is not a ws(s):// URL "
                         "(e.g. wss://rtc.example.org/livekit/sfu)")
    if target.public_ip is not None:
        try:
            ipaddress.ip_address(target.public_ip)
        except ValueError:
            raise AdminError(f"--public-ip {target.public_ip!r} is not an IP address") from None
    for uri in target.turn_uris:
        try:
            scheme, turn_host, _, _ = parse_turn_uri(uri)
        except ValueError:
            scheme, turn_host = "", ""
        if scheme not in ("turn", "turns") or not _valid_host(turn_host):
            raise AdminError(f"--turn-uri {uri!r} is not a TURN URI (e.g. turn:turn.example.org:3478?transport=udp)")
    for public, local in target.via.items():
        public_host, _, public_port = public.rpartition(":")
        local_addr = local.rpartition("://")[2]
        local_host, _, local_port = local_addr.rpartition(":")
        if not (_valid_host(public_host) and public_port.isdigit() and _valid_host(local_host) and local_port.isdigit()):
            raise AdminError(f"--via {public}={local} is not HOST:PORT=[SCHEME://]ADDR:PORT "
                             "(e.g. matrix.example.org:443=127.0.0.1:8443)")
    if target.ca_file is not None:
        try:
            ssl.create_default_context(cafile=target.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise AdminError(f"--ca-file {target.ca_file}: {getattr(exc, 'strerror', None) or exc} (a PEM file, e.g. "
                             "`pulumi stack output tlsCertificate > stack.pem`)") from None


def _stack_certificate_file(pem: str) -> str:
    """The stack's own (public) certificate in a temporary file, for `ssl`'s cafile."""
    handle = tempfile.NamedTemporaryFile("w", prefix="commstack-doctor-", suffix=".pem", delete=False)
    with handle:
        handle.write(pem)
    atexit.register(lambda: os.path.exists(handle.name) and os.unlink(handle.name))
    return handle.name


def target_from_args(args: Any, outputs: Callable[[str], dict] = lambda stack: stack_outputs(stack, show_secrets=True)) -> Target:
    """Flags override what `--stack` reads from `pulumi stack output`."""
    stack = outputs(args.stack) if args.stack else {}
    server_name = args.server_name or stack.get("serverName")
    if not server_name:
        raise AdminError("give --stack NAME or --server-name DOMAIN")
    target = _target(args, stack, server_name)
    _check_target(target)
    for flag in ("--prometheus-url", "--alertmanager-url"):
        _check_url(flag, getattr(args, flag[2:].replace("-", "_"), None))
    pem = stack.get("tlsCertificate")
    if isinstance(pem, str) and pem.strip():
        target.self_signed = True
        if target.ca_file is None and not target.insecure_tls:
            target.ca_file = _stack_certificate_file(pem)
    return target


def _target(args: Any, stack: dict, server_name: str) -> Target:
    return Target(
        server_name=server_name,
        homeserver_url=args.homeserver_url or stack.get("homeserverUrl"),
        well_known_url=args.well_known_url,
        turn_uris=list(args.turn_uri or stack.get("turnUris") or []),
        public_ip=args.public_ip or stack.get("publicIp"),
        shared_secret=os.environ.get("COMMSTACK_SHARED_SECRET") or stack.get("registrationSharedSecret"),
        admin_url=args.admin_url,
        docker_host=stack.get("dockerHost"),
        access_token=os.environ.get("COMMSTACK_ACCESS_TOKEN") or args.access_token,
        bridges={**(stack.get("bridgeTokens") or {}), **_pairs(args.bridge, "--bridge")},
        signal_health_url=args.signal_health_url or stack.get("signalHealthUrl"),
        insecure_tls=args.insecure_tls,
        ca_file=args.ca_file,
        via=_pairs(args.via, "--via"),
        self_signed=args.ca_file is not None,
        signal_logs=stack.get("signalLogsCommand"),
        alert_room=getattr(args, "alert_room", None) or stack.get("alertRoom"),
        **_calls_target(args, stack),
    )


def _calls_target(args: Any, stack: dict) -> dict:
    calls = None if "rtcTransports" not in stack else bool(stack.get("rtcTransports"))
    if getattr(args, "no_calls", False):
        calls = False
    return dict(calls=calls, rtc_transports=list(stack.get("rtcTransports") or []),
                livekit_url=args.livekit_url or stack.get("livekitUrl"),
                livekit_media_ports=parse_port_range(stack.get("livekitMediaPorts")),
                livekit_token=os.environ.get("COMMSTACK_LIVEKIT_TOKEN") or args.livekit_token)


def add_arguments(parser) -> None:
    parser.add_argument("--stack", help="read hostnames and the shared secret from this stack's outputs")
    parser.add_argument("--server-name", help="the Matrix server_name (the stack's domain)")
    parser.add_argument("--homeserver-url", help="expected public base URL, e.g. https://matrix.example.org/")
    parser.add_argument("--well-known-url", help="where /.well-known/matrix/* is served (default https://<server-name>)")
    parser.add_argument("--turn-uri", action="append", help="a TURN URI to allocate on (default: what Synapse issues)")
    parser.add_argument("--public-ip", help="the address every DNS name should answer")
    parser.add_argument("--admin-url", help="a private URL where /_synapse/admin/v1/register is reachable (e.g. an SSH "
                                            "tunnel), for the throwaway user; default: `docker exec` over dockerHost")
    parser.add_argument("--access-token", help="a user's access token instead of a throwaway user "
                                               "(or env COMMSTACK_ACCESS_TOKEN, which stays out of `ps`)")
    parser.add_argument("--bridge", action="append", metavar="ID=AS_TOKEN", help="ping this appservice")
    parser.add_argument("--signal-health-url", help="Signal-Server health URL: it must answer 2xx, or Signal-Server's "
                                                   "own JSON 401 for an endpoint that needs credentials (the "
                                                   "stack's signalHealthUrl is one); a proxy's error page fails")
    parser.add_argument("--no-calls", action="store_true", help="skip the MatrixRTC call rows")
    parser.add_argument("--livekit-url", help="the LiveKit URL lk-jwt-service must hand out (wss://rtc.<domain>/"
                                              "livekit/sfu); also where a --livekit-token joins")
    parser.add_argument("--livekit-token", help="a LiveKit join token (for a room that exists) for the signalling "
                                                "and media rows, instead of lk-jwt-service's (or env "
                                                "COMMSTACK_LIVEKIT_TOKEN, which stays out of `ps`)")
    parser.add_argument("--via", action="append", metavar="HOST:PORT=[SCHEME://]ADDR:PORT",
                        help="send traffic for a public host:port here instead (tunnels, the test harness)")
    parser.add_argument("--ca-file", metavar="PEM", help="trust the certificates in this file instead of the system's "
                                                        "CAs: a tls self-signed stack's certificate, saved with "
                                                        "`pulumi stack output tlsCertificate > FILE` (with --stack "
                                                        "doctor reads it by itself)")
    parser.add_argument("--insecure-tls", action="store_true",
                        help="skip certificate checks (and the TLS rows); only when no --stack or --ca-file can "
                             "give the certificate")
    parser.add_argument("--backups", action="store_true",
                        help="also report the newest backup's age and the last restore drill (read through "
                             "`docker exec backup` on --backup-docker-host, or from --backup-scripts-dir)")
    parser.add_argument("--backup-docker-host", help="the stack's Docker engine, for --backups")
    parser.add_argument("--monitoring", action="store_true",
                        help="also check monitoring: every Prometheus target up, and a test alert that reaches the "
                             "alert room (read with --access-token / COMMSTACK_ACCESS_TOKEN of a recipient; takes "
                             "about 30 s); Prometheus and Alertmanager are reached with `docker exec` over the "
                             "stack's dockerHost unless given below")
    parser.add_argument("--alert-room", help="the alert room's alias (default: the stack's alertRoom output)")
    parser.add_argument("--prometheus-url", help="a private URL of Prometheus (an SSH tunnel to its port 9090), for --monitoring")
    parser.add_argument("--alertmanager-url", help="a private URL of Alertmanager (port 9093), for --monitoring")
    parser.add_argument("--backup-scripts-dir", metavar="DIR", help="run the backup job's scripts from DIR, for --backups")


def main(args: Any) -> int:
    try:
        target = target_from_args(args)
    except AdminError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if target.insecure_tls and target.self_signed:
        print("note: --insecure-tls skips the check of the stack's own certificate, which doctor could verify "
              "without it", file=sys.stderr)
    checks = run_checks(target)
    if getattr(args, "backups", False):
        checks += check_backups(args)
    if getattr(args, "monitoring", False):
        checks += check_monitoring(args, target)
    print(format_table(checks))
    return 1 if any(c.status == FAIL for c in checks) else 0


def check_monitoring(args: Any, target: Target) -> list[Check]:
    """Prometheus's targets, and a test alert through Alertmanager into the alert room (doctor_monitoring)."""
    from commstack.checks import doctor_monitoring
    from commstack.checks.target import public_session

    monitoring = doctor_monitoring.MonitoringTarget(
        docker_host=target.docker_host, prometheus_url=getattr(args, "prometheus_url", None),
        alertmanager_url=getattr(args, "alertmanager_url", None), alert_room=target.alert_room)
    rows = doctor_monitoring.check_monitoring(monitoring, target.homeserver_url, target.access_token,
                                              session=lambda: public_session(target))
    return [Check(*row) for row in rows]


def check_backups(args: Any) -> list[Check]:
    """The newest snapshot's age and the last restore drill, as the backup job recorded them."""
    from commstack.operations import backup

    runner = backup.Runner(scripts_dir=getattr(args, "backup_scripts_dir", None),
                           docker_host=getattr(args, "backup_docker_host", None))
    try:
        snapshots = backup.list_snapshots(runner)
    except backup.BackupCommandError as exc:
        return [Check("backup newest", FAIL, str(exc)[:300], "is the backup container running? `docker logs backup`")]
    return [Check(name, PASS if ok else FAIL, detail, "" if ok else hint)
            for name, ok, detail, hint in backup.backup_status(snapshots)]
