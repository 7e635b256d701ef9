"""Traefik: the only HTTP(S) entry to the Matrix half.

Unlike the seed it reads routes from a rendered file (file provider) instead
of the Docker socket, so a compromised proxy cannot drive the Docker engine.
Certificates come from Let's Encrypt by DNS-01 through Cloudflare (the token
is only ever a secret environment variable) or, for `self-signed`, from a key
and certificate the program generates.

Option names follow Traefik v3's static and dynamic configuration reference
(traefik/traefik docs/content/reference, tag v3.5).
"""

from __future__ import annotations

import copy
import ipaddress
import re
from dataclasses import dataclass
from typing import Optional, Sequence

import pulumi
import pulumi_docker as docker
import pulumi_tls

from components.common import (ConfigFile, ContainerSpec, Hardening, child, published_ports, service_container,
                               stateful_child, tcp_port, to_yaml)
from components.edge.ports import FEDERATION_PORT, ports_for

CONTAINER = "proxy"
STATIC_PATH = "/etc/traefik/traefik.yml"
DYNAMIC_PATH = "/etc/traefik/dynamic.yml"
CERT_PATH = "/etc/traefik/certs/default.crt"
KEY_PATH = "/etc/traefik/certs/default.key"
ACME_DIR = "/letsencrypt"
# lego's cloudflare provider reads every credential variable also from a file named by <NAME>_FILE
# (go-acme/lego platform/config/env), so the token never sits in the container's environment.
CF_TOKEN_PATH = "/run/secrets/cf-dns-api-token"
RESOLVER = "letsencrypt"
# Traefik runs as root in its image and binds 80, 443 (and 8448): NET_BIND_SERVICE, nothing else.
# Its files live in /etc/traefik and /run/secrets (config dirs), so the root is read-only. It stays
# root: the Let's Encrypt store (a volume stacks already have) is root's, and lego writes it.
HARDENING = Hardening(capabilities=("NET_BIND_SERVICE",), memory_mb=256, config_dirs=("/etc/traefik", "/run/secrets"),
                      why="binds ports 80 and 443 and writes the root-owned ACME store")
TLS_MODES = ("self-signed", "letsencrypt")
# Not published: only the container's own health check calls it.
PING_ADDRESS = ":8082"
# Not published either: Prometheus scrapes it on the metrics-proxy network (monitoring on).
METRICS_PORT = 8083
# Access log without credentials. RequestPath is the request URI with its raw query
# (traefik/traefik pkg/middlewares/accesslog/logger.go), where Matrix clients may put
# `?access_token=…`. Traefik v3.5 cannot drop just the query
# (accessLog.fields.queryParameters came later, traefik/traefik#13091), so the path
# goes; router, status and timing stay. Headers (Authorization, cookies) never logged.
ACCESS_LOG = {
    "format": "json",
    "fields": {
        "defaultMode": "keep",
        "names": {"RequestPath": "drop", "ClientUsername": "drop"},
        "headers": {"defaultMode": "drop"},
    },
}

# Synapse's admin API stays private: no router matches it, so Traefik answers 404 itself
# (commstack create-admin uses `docker exec` instead, commstack/operations/admin.py).
ADMIN_PATH_PREFIX = "/_synapse/admin"
NOT_ADMIN = f"!PathPrefix(`{ADMIN_PATH_PREFIX}`)"

_HOST_RE = re.compile(r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_UPSTREAM_RE = re.compile(r"^https?://([a-z0-9.-]+)(?::(\d+))?$")


def _check_upstream(upstream: str) -> None:
    if not _UPSTREAM_RE.match(upstream):
        raise ValueError(f"upstream {upstream!r} is not scheme://host[:port]")


_PATH_PREFIX_RE = re.compile(r"^(?:/[a-z0-9._-]+)+$")


@dataclass(frozen=True)
class RateLimit:
    """Traefik's rateLimit middleware: `average` requests per `period` per client, `burst` at once."""

    average: int
    period: str
    burst: int


@dataclass(frozen=True)
class Route:
    host: str
    upstream: str  # e.g. http://synapse:8008
    # Only requests under this path, passed on with it stripped (e.g. /livekit/jwt/get_token -> /get_token).
    path_prefix: Optional[str] = None
    # With a prefix: only these exact paths below it (an allowlist, e.g. ("/get_token",)); others get 404.
    paths: tuple[str, ...] = ()
    rate_limit: Optional[RateLimit] = None

    def __post_init__(self) -> None:
        if not _HOST_RE.match(self.host):
            raise ValueError(f"route host {self.host!r} is not a lowercase DNS name")
        _check_upstream(self.upstream)
        if self.path_prefix is not None and not _PATH_PREFIX_RE.match(self.path_prefix):
            raise ValueError(f"route path prefix {self.path_prefix!r} is not /segment[/segment...]")
        if self.paths and self.path_prefix is None:
            raise ValueError("a route's paths are below its path prefix: set path_prefix")
        bad = [path for path in self.paths if not _PATH_PREFIX_RE.match(path)]
        if bad:
            raise ValueError(f"route paths {bad} are not /segment[/segment...]")

    @property
    def rule(self) -> str:
        host = f"Host(`{self.host}`)"
        if self.paths:
            exact = " || ".join(f"Path(`{self.path_prefix}{path}`)" for path in self.paths)
            return f"{host} && ({exact})"
        return f"{host} && PathPrefix(`{self.path_prefix}`)" if self.path_prefix else host

    @property
    def router_name(self) -> str:
        return _slug(self.host + (self.path_prefix or ""))

    @property
    def backend(self) -> str:
        """The container the route reaches (the upstream's host name on the Docker network)."""
        return _UPSTREAM_RE.match(self.upstream).group(1)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _service_name(upstream: str) -> str:
    host, port = _UPSTREAM_RE.match(upstream).groups()
    return _slug(f"{host}-{port or 80}")


def render_traefik_static(*, tls: str, acme_email: str, serve_federation_8448: bool,
                          trusted_ips: Sequence[str] = (), metrics: bool = False) -> dict:
    """traefik.yml: entry points, the file provider, the ACME resolver. No API, no dashboard."""
    if tls not in TLS_MODES:
        raise ValueError(f"tls must be one of {TLS_MODES}, not {tls!r}")
    for cidr in trusted_ips:
        ipaddress.ip_network(cidr)
    if tls == "letsencrypt" and not acme_email:
        raise ValueError("letsencrypt needs an ACME e-mail")

    def forwarded() -> dict:  # a fresh dict per entry point, so the YAML has no aliases
        return {"forwardedHeaders": {"trustedIPs": list(trusted_ips)}} if trusted_ips else {}

    # TLS is set per router in the dynamic file, where the certificate's hosts are known.
    entry_points = {
        "web": {"address": ":80", **forwarded(),
                "http": {"redirections": {"entryPoint": {"to": "websecure", "scheme": "https", "permanent": True}}}},
        "websecure": {"address": ":443", **forwarded()},
        "ping": {"address": PING_ADDRESS},
    }
    if serve_federation_8448:
        entry_points["federation"] = {"address": f":{FEDERATION_PORT}"}
    if metrics:
        # Its own entry point, never published: Prometheus reaches it on the metrics-proxy network.
        entry_points["metrics"] = {"address": f":{METRICS_PORT}"}
    static = {
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        "log": {"level": "INFO"},
        "accessLog": copy.deepcopy(ACCESS_LOG),
        "ping": {"entryPoint": "ping"},
        "entryPoints": entry_points,
        "providers": {"file": {"filename": DYNAMIC_PATH, "watch": False}},
    }
    if metrics:
        # traefik_tls_certs_not_after (every certificate it serves) feeds CertificateExpiringSoon.
        static["metrics"] = {"prometheus": {"entryPoint": "metrics", "addEntryPointsLabels": True,
                                            "addServicesLabels": True}}
    if tls == "letsencrypt":
        static["certificatesResolvers"] = {RESOLVER: {"acme": {
            "email": acme_email,
            "storage": f"{ACME_DIR}/acme.json",
            # The token comes from the file CF_DNS_API_TOKEN_FILE names (lego's cloudflare provider).
            "dnsChallenge": {"provider": "cloudflare", "resolvers": ["1.1.1.1:53", "1.0.0.1:53"]},
        }}}
    return static


# Mozilla's "intermediate" TLS configuration (ssl-config.mozilla.org, guidelines v5.7): TLS 1.2 with
# ECDHE and AEAD ciphers only (Go has no DHE), TLS 1.3 as Go sets it. Go's own TLS 1.2 default would
# also offer the CBC-SHA1 suites. Names: Go's crypto/tls, as Traefik's tls.options take them.
TLS_OPTIONS = {
    "minVersion": "VersionTLS12",
    "cipherSuites": [
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    ],
    "curvePreferences": ["X25519", "CurveP256", "CurveP384"],
}
SECURITY_HEADERS = "security-headers"
# One year; no includeSubDomains or preload: the stack does not own every name under the domain.
HSTS_SECONDS = 31536000


def security_headers() -> dict:
    """Headers on every response the proxy serves: HSTS, and the anti-framing and nosniff headers
    Element Web's README ("Configuration best practices") asks for; harmless on the APIs."""
    return {"headers": {
        "stsSeconds": HSTS_SECONDS,
        "customFrameOptionsValue": "SAMEORIGIN",
        "contentSecurityPolicy": "frame-ancestors 'self'",
        "contentTypeNosniff": True,
    }}


def rate_limit_middleware(limit: RateLimit, *, behind_proxies: bool) -> dict:
    """Per client address. Behind trusted proxies (Cloudflare) the client is the address the
    nearest one added to X-Forwarded-For (depth 1), not the proxy's own address."""
    middleware: dict = {"average": limit.average, "period": limit.period, "burst": limit.burst}
    if behind_proxies:
        middleware["sourceCriterion"] = {"ipStrategy": {"depth": 1}}
    return {"rateLimit": middleware}


def render_traefik_dynamic(*, routes: Sequence[Route], tls: str, certificate_hosts: Sequence[str] = (),
                           serve_federation_8448: bool = False,
                           federation_upstream: str = "http://synapse:8008",
                           trusted_ips: Sequence[str] = ()) -> dict:
    """dynamic.yml: one TLS router per host, services by upstream, TLS policy, security headers."""
    if tls not in TLS_MODES:
        raise ValueError(f"tls must be one of {TLS_MODES}, not {tls!r}")
    hosts = [(r.host, r.path_prefix) for r in routes]
    if len(set(hosts)) != len(hosts):
        raise ValueError(f"a host (and path) is routed twice: {hosts}")
    router_tls: dict = {}
    if tls == "letsencrypt":
        if not certificate_hosts:
            raise ValueError("letsencrypt needs at least one certificate host")
        # Every router names the same host set, so one certificate covers them all.
        # Set per router: a router's own tls replaces an entry point's
        # (traefik/traefik pkg/server/aggregator.go applyModel). Copied per
        # router below, as shared objects would become YAML aliases.
        router_tls = {"certResolver": RESOLVER,
                      "domains": [{"main": certificate_hosts[0], "sans": list(certificate_hosts[1:])}]}
    routers: dict = {}
    services: dict = {}
    middlewares: dict = {}

    def service(upstream: str) -> str:
        name = _service_name(upstream)
        services[name] = {"loadBalancer": {"servers": [{"url": upstream}], "passHostHeader": True}}
        return name

    middlewares[SECURITY_HEADERS] = security_headers()
    for route in routes:
        router = {"rule": f"{route.rule} && {NOT_ADMIN}", "entryPoints": ["websecure"],
                  "service": service(route.upstream), "tls": copy.deepcopy(router_tls),
                  "middlewares": [SECURITY_HEADERS]}
        if route.rate_limit:
            limit = f"ratelimit-{route.router_name}"
            middlewares[limit] = rate_limit_middleware(route.rate_limit, behind_proxies=bool(trusted_ips))
            router["middlewares"].append(limit)
        if route.path_prefix:
            # Traefik's default priority is the rule's length, so a path router wins over its host's.
            strip = f"strip-{route.router_name}"
            middlewares[strip] = {"stripPrefix": {"prefixes": [route.path_prefix]}}
            router["middlewares"].append(strip)
        routers[route.router_name] = router
    if serve_federation_8448:
        _check_upstream(federation_upstream)
        # Port 8448 carries server-server traffic only.
        routers["federation"] = {"rule": "PathPrefix(`/_matrix/federation`) || PathPrefix(`/_matrix/key`)",
                                 "entryPoints": ["federation"], "service": service(federation_upstream),
                                 "tls": copy.deepcopy(router_tls), "middlewares": [SECURITY_HEADERS]}
    http: dict = {"routers": routers, "services": services, "middlewares": middlewares}
    dynamic: dict = {
        "http": http,
        "tls": {"options": {"default": copy.deepcopy(TLS_OPTIONS)}},
    }
    if tls == "self-signed":
        dynamic["tls"]["stores"] = {"default": {"defaultCertificate": {"certFile": CERT_PATH, "keyFile": KEY_PATH}}}
    return dynamic


@dataclass
class ReverseProxyArgs:
    network: pulumi.Input[str]
    routes: Sequence[Route]
    tls: str  # "self-signed" | "letsencrypt"
    acme_email: str
    dns_api_token: Optional[pulumi.Output[str]]
    certificate_hosts: Sequence[str]
    serve_federation_8448: bool
    federation_upstream: str
    # Proxies (e.g. Cloudflare's ranges) whose X-Forwarded-* headers are believed.
    trusted_ips: Sequence[str] = ()
    # The networks it shares with the backends it routes to (one `web-<backend>` network each).
    extra_networks: Sequence[pulumi.Input[str]] = ()
    # Of those, the ones where Traefik also answers to the public host names (network aliases), so a
    # backend that calls public URLs itself (lk-jwt-service) reaches them without leaving the host.
    aliased_networks: Sequence[tuple[pulumi.Input[str], Sequence[str]]] = ()
    # Prometheus's network to the metrics entry point; None leaves metrics off.
    metrics_network: Optional[pulumi.Input[str]] = None


class ReverseProxy(pulumi.ComponentResource):
    # Only in self-signed mode: the generated certificate (covers certificate_hosts) and its key (secret).
    certificate_pem: Optional[pulumi.Output[str]]
    private_key_pem: Optional[pulumi.Output[str]]

    def __init__(self, name: str, args: ReverseProxyArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("commstack:matrix:ReverseProxy", name, None, opts)
        letsencrypt = args.tls == "letsencrypt"
        assert not letsencrypt or args.dns_api_token is not None, "letsencrypt (DNS-01) needs the Cloudflare token"
        static = render_traefik_static(tls=args.tls, acme_email=args.acme_email,
                                       serve_federation_8448=args.serve_federation_8448,
                                       trusted_ips=args.trusted_ips, metrics=args.metrics_network is not None)
        dynamic = render_traefik_dynamic(routes=args.routes, tls=args.tls, certificate_hosts=args.certificate_hosts,
                                         serve_federation_8448=args.serve_federation_8448,
                                         federation_upstream=args.federation_upstream,
                                         trusted_ips=args.trusted_ips)
        files = [ConfigFile(STATIC_PATH, to_yaml(static)), ConfigFile(DYNAMIC_PATH, to_yaml(dynamic))]
        volumes: list[docker.ContainerVolumeArgs] = []
        envs = None
        self.certificate_pem = None
        self.private_key_pem = None
        self.acme_volume = None  # Let's Encrypt's store, which the backup job keeps

        if letsencrypt:
            # Account key and certificates: losing them means re-issuing against rate limits.
            acme = docker.Volume(f"{name}-acme", name=f"{name}-acme", opts=stateful_child(self))
            self.acme_volume = acme
            volumes.append(docker.ContainerVolumeArgs(volume_name=acme.name, container_path=ACME_DIR))
            envs = {"CF_DNS_API_TOKEN_FILE": CF_TOKEN_PATH}
            # Traefik's image runs as root; nobody else in the container reads the token.
            files.append(ConfigFile(CF_TOKEN_PATH, pulumi.Output.secret(args.dns_api_token),
                                    permissions="0400", owner="0"))
        else:
            key = pulumi_tls.PrivateKey(f"{name}-tls-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child(self))
            cert = pulumi_tls.SelfSignedCert(
                f"{name}-tls-cert",
                private_key_pem=key.private_key_pem,
                dns_names=list(args.certificate_hosts),
                subject=pulumi_tls.SelfSignedCertSubjectArgs(common_name=args.certificate_hosts[0], organization="commstack"),
                validity_period_hours=24 * 365,
                # Re-issued by the `pulumi up` that runs within 30 days of expiry.
                early_renewal_hours=24 * 30,
                allowed_uses=["digital_signature", "key_encipherment", "server_auth"],
                opts=child(self),
            )
            self.certificate_pem = cert.cert_pem
            self.private_key_pem = pulumi.Output.secret(key.private_key_pem)
            files += [ConfigFile(CERT_PATH, self.certificate_pem),
                      ConfigFile(KEY_PATH, self.private_key_pem, permissions="0400", owner="0")]

        ports = published_ports(ports_for("proxy"))
        if args.serve_federation_8448:
            ports.append(tcp_port(FEDERATION_PORT))
        self.container = service_container(
            CONTAINER,
            ContainerSpec(
                image_key="traefik",
                network=args.network,
                aliases=[CONTAINER],
                files=files,
                command=[f"--configFile={STATIC_PATH}"],
                extra_networks=[*((network, [CONTAINER]) for network in args.extra_networks),
                                *((network, [CONTAINER, *aliases]) for network, aliases in args.aliased_networks),
                                *([(args.metrics_network, [CONTAINER])] if args.metrics_network is not None else [])],
                envs=envs,
                ports=ports,
                volumes=volumes,
                healthcheck=["CMD", "traefik", "healthcheck", "--ping", f"--configFile={STATIC_PATH}"],
                hardening=HARDENING,
            ),
            parent=self,
            resource_name=name,
        )
        self.register_outputs({"certificate_pem": self.certificate_pem})
