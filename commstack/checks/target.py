"""What doctor checks and how it reaches it, shared by doctor's rows and its MatrixRTC call rows
(commstack/checks/doctor_calls.py): the Target, the Check row, the throwaway TestUser, reaching
public names through `--via`, HTTP with the stack's certificate, and the DNS and TLS rows.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter

TIMEOUT = 10
PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


@dataclass
class Check:
    name: str
    status: str
    detail: str
    hint: str = ""


@dataclass
class Target:
    """What to check. Public names as clients see them; `via` only changes where packets go."""

    server_name: str
    homeserver_url: Optional[str] = None  # expected m.homeserver.base_url (public)
    well_known_url: Optional[str] = None  # default https://<server_name>
    turn_uris: list[str] = field(default_factory=list)  # default: what Synapse hands out
    public_ip: Optional[str] = None  # every A record should point here
    shared_secret: Optional[str] = None  # registration_shared_secret, for a throwaway user
    admin_url: Optional[str] = None  # where /_synapse/admin/v1/register is reachable (privately)
    docker_host: Optional[str] = None  # the stack's dockerHost: the throwaway user is made by `docker exec`
    access_token: Optional[str] = None  # instead of a throwaway user
    bridges: dict[str, str] = field(default_factory=dict)  # appservice id -> as_token
    signal_health_url: Optional[str] = None
    insecure_tls: bool = False
    ca_file: Optional[str] = None  # trust these PEM certificates instead of the system's CAs
    via: dict[str, str] = field(default_factory=dict)  # "host:port" -> "[scheme://]addr:port"
    self_signed: bool = False  # the stack generated its certificate (tlsCertificate output or --ca-file)
    signal_logs: Optional[str] = None  # where Signal-Server's log is (the stack's signalLogsCommand)
    # MatrixRTC calls (commstack/checks/doctor_calls.py). calls: True expected, False off, None: as announced.
    calls: Optional[bool] = None
    rtc_transports: list = field(default_factory=list)  # the stack's rtcTransports (lk-jwt-service's URL)
    livekit_url: Optional[str] = None  # the stack's livekitUrl (wss://...), what lk-jwt-service must hand out
    livekit_media_ports: Optional[tuple[int, int]] = None  # the stack's livekitMediaPorts
    livekit_token: Optional[str] = None  # an operator's LiveKit token for the LiveKit rows
    alert_room: Optional[str] = None  # the stack's alertRoom, for --monitoring


# -- reaching public names ----------------------------------------------------------------


def _default_port(scheme: str) -> int:
    return {"https": 443, "http": 80, "turns": 5349, "turn": 3478}.get(scheme, 443)


def _unresolved_localhost(host: Optional[str]) -> bool:
    """A .localhost name (loopback by RFC 6761 §6.3) that this machine's resolver does not know
    (no nss-myhostname, no hosts-file line)."""
    if not host or not (host == "localhost" or host.endswith(".localhost")):
        return False
    try:
        socket.getaddrinfo(host, None)
        return False
    except (socket.gaierror, UnicodeError):
        return True


def reach(via: dict[str, str], url: str) -> str:
    """`url` rewritten through `--via`, if its host:port has an entry: where packets go."""
    parts = urlsplit(url)
    port = parts.port or _default_port(parts.scheme)
    key = f"{parts.hostname}:{port}"
    local = via.get(key)
    if local is None and _unresolved_localhost(parts.hostname):
        local = f"127.0.0.1:{port}"
    if local is None:
        return url
    scheme, sep, netloc = local.rpartition("://")
    return urlunsplit((scheme if sep else parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def reach_address(target: Target, host: str, port: int) -> tuple[str, int]:
    local = target.via.get(f"{host}:{port}")
    if local is None and _unresolved_localhost(host):
        return "127.0.0.1", port
    if local is None:
        return host, port
    netloc = local.rpartition("://")[2]
    addr, _, local_port = netloc.rpartition(":")
    return addr, int(local_port)


class ConnectTo(HTTPAdapter):
    """A requests adapter that opens the connection for a mapped public host:port at its
    `via` address while the request keeps the public name in its Host header, SNI and
    certificate check (so a proxy routing by Host and SNI answers as it would publicly)."""

    def __init__(self, via: dict[str, str]):
        self.via = dict(via)
        super().__init__()

    def _local(self, url: str):
        local = reach(self.via, url)
        return None if local == url else urlsplit(local)

    def send(self, request: requests.PreparedRequest, **kwargs) -> requests.Response:
        if self._local(request.url):
            request.headers.setdefault("Host", urlsplit(request.url).netloc)
        return super().send(request, **kwargs)

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        """Overridable hook of requests' HTTPAdapter (requests >= 2.32): where the pool connects."""
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        local = self._local(request.url)
        if local is not None:
            public_host = urlsplit(request.url).hostname
            if local.scheme == "https":
                pool_kwargs.update(server_hostname=public_host, assert_hostname=public_host)
            host_params = {"scheme": local.scheme, "host": local.hostname,
                           "port": local.port or _default_port(local.scheme)}
        return host_params, pool_kwargs


def _verify(target: Target):
    """requests' `verify`: off, a CA bundle, or the system's CAs."""
    return False if target.insecure_tls else (target.ca_file or True)


def _request(target: Target, method: str, url: str, **kwargs) -> requests.Response:
    with requests.Session() as session:
        session.mount("http://", ConnectTo(target.via))
        session.mount("https://", ConnectTo(target.via))
        return session.request(method, url, timeout=TIMEOUT, verify=_verify(target), **kwargs)


def public_session(target: Target) -> requests.Session:
    """A session that reaches the public names as _request does (via, the stack's certificate)."""
    session = requests.Session()
    session.mount("http://", ConnectTo(target.via))
    session.mount("https://", ConnectTo(target.via))
    session.verify = _verify(target)
    session.trust_env = False
    return session


def _get(target: Target, url: str, **kwargs) -> requests.Response:
    return _request(target, "GET", url, **kwargs)


def _post(target: Target, url: str, **kwargs) -> requests.Response:
    return _request(target, "POST", url, **kwargs)


def _errcode(response: requests.Response) -> str:
    try:
        return response.json().get("errcode", "")
    except ValueError:
        return ""


# -- DNS and TLS -----------------------------------------------------------------------------


def resolve(host: str) -> list[str]:
    """A/AAAA answers; names under .localhost are loopback by definition (RFC 6761 §6.3)."""
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})
    except socket.gaierror:
        if host == "localhost" or host.endswith(".localhost"):
            return ["127.0.0.1"]
        raise


def check_dns(host: str, public_ip: Optional[str]) -> Check:
    name = f"dns {host}"
    try:
        addresses = resolve(host)
    except (socket.gaierror, UnicodeError) as exc:
        return Check(name, FAIL, f"no answer ({getattr(exc, 'strerror', None) or exc})",
                     f"create an A record for {host} (cloudflareDns true, or at your DNS provider)")
    if public_ip and public_ip not in addresses:
        return Check(name, FAIL, f"answers {', '.join(addresses)}, not {public_ip}",
                     f"point {host} at {public_ip} (and keep TURN names DNS-only, not proxied)")
    return Check(name, PASS, ", ".join(addresses))


def check_tls(target: Target, host: str, port: int) -> Check:
    name = f"tls {host}:{port}"
    if target.insecure_tls:
        return Check(name, SKIP, "relaxed by --insecure-tls",
                     "to check it: drop --insecure-tls (with --stack a self-signed stack's certificate is trusted)")
    addr, local_port = reach_address(target, host, port)
    context = ssl.create_default_context(cafile=target.ca_file)
    try:
        with socket.create_connection((addr, local_port), timeout=TIMEOUT) as raw:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                cert = tls.getpeercert()
    except ssl.SSLCertVerificationError as exc:
        hint = ("the stack generated this certificate: give --stack (doctor then trusts its tlsCertificate output), "
                "or --ca-file with `pulumi stack output tlsCertificate` saved to a file; after a `pulumi up` that "
                "renewed it, save it again" if target.self_signed or target.ca_file is not None
                else "check the Traefik ACME log (`docker logs proxy`: DNS-01 token, acmeEmail) or that the name is "
                     "in certificate_hosts; for a tls self-signed stack give --stack or --ca-file")
        return Check(name, FAIL, exc.verify_message or str(exc), hint)
    except OSError as exc:
        return Check(name, FAIL, f"cannot connect: {exc}", f"open {port}/tcp to the host and check the proxy runs")
    expires = ssl.cert_time_to_seconds(cert["notAfter"])
    days = (expires - time.time()) / 86400
    if days < 7:
        return Check(name, FAIL, f"expires in {days:.1f} days", "Traefik renews 30 days ahead; check its ACME log")
    return Check(name, PASS, f"valid, expires in {days:.0f} days")


def _json_document(target: Target, url: str) -> tuple[Optional[dict], Optional[str]]:
    """The JSON at `url`, or why it is not a proper well-known document."""
    try:
        response = _get(target, url)
    except requests.RequestException as exc:
        return None, f"request failed: {exc.__class__.__name__}"
    if response.status_code != 200:
        return None, f"HTTP {response.status_code}"
    content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
    if content_type != "application/json":
        return None, f"Content-Type is {content_type or 'missing'}, not application/json"
    if response.headers.get("Access-Control-Allow-Origin") != "*":
        return None, "no Access-Control-Allow-Origin: * (browsers cannot read it)"
    try:
        return response.json(), None
    except ValueError:
        return None, "body is not JSON"


@dataclass
class TestUser:
    token: Optional[str]
    check: Check
    user_id: Optional[str] = None
    password: Optional[str] = None
