"""nginx for Matrix delegation: user IDs are @user:<domain> while Synapse lives
at matrix.<domain>.

It serves /.well-known/matrix/server and /client (JSON, CORS) and proxies the
client and federation API to Synapse, from configs/nginx-matrix.conf.tmpl.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from string import Template
from typing import Optional, Sequence

import pulumi

from components.common import ConfigFile, ContainerSpec, Hardening, service_container
from components.matrix.workers import WorkerPlan, render_nginx_routing
from components.settings import CONFIGS_DIR

CONTAINER = "wellknown"
CONF_PATH = "/etc/nginx/conf.d/default.conf"
# nginx's master starts as root: it binds port 80 (NET_BIND_SERVICE, on engines that keep the
# privileged-port rule), creates and chowns its cache directories (CHOWN) and starts its workers
# as the nginx user (SETUID, SETGID).
HARDENING = Hardening(capabilities=("CHOWN", "NET_BIND_SERVICE", "SETGID", "SETUID"), memory_mb=64,
                      why="the nginx master binds :80, chowns its cache and drops its workers to nginx")
# Docker's embedded DNS: nginx resolves the containers it proxies to by name, again and again.
DOCKER_DNS = "127.0.0.11"
# Synapse's default max_upload_size (synapse/config/repository.py).
DEFAULT_MAX_BODY_SIZE = "50M"

# Where Traefik reaches nginx from: the private Docker network, whose subnet
# Docker picks from these pools. Nothing else can reach nginx (it publishes no port).
PRIVATE_PROXY_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")

_UPSTREAM_RE = re.compile(r"^https?://[A-Za-z0-9.-]+(?::\d+)?$")
_SIZE_RE = re.compile(r"^\d+[kKmMgG]?$")


@lru_cache(maxsize=1)
def _template() -> Template:
    return Template((CONFIGS_DIR / "nginx-matrix.conf.tmpl").read_text())


def well_known_server(matrix_host: str, federation_port: int) -> dict:
    """Where other homeservers reach ours (spec: server discovery)."""
    return {"m.server": f"{matrix_host}:{federation_port}"}


def well_known_client(public_baseurl: str, rtc_foci: Sequence[dict] = ()) -> dict:
    """Where clients reach ours; equal to Synapse's public_baseurl. `rtc_foci` announces the
    MatrixRTC backend: dropped from MSC4143 in favour of Synapse's rtc/transports, but Element
    Call in widget mode still reads it (element-call docs/self-hosting.md, "MatrixRTC backend
    announcement"; matrix-docker-ansible-deploy matrix-static-files)."""
    document: dict = {"m.homeserver": {"base_url": public_baseurl}}
    if rtc_foci:
        document["org.matrix.msc4143.rtc_foci"] = [dict(focus) for focus in rtc_foci]
    return document


def _nginx_literal(document: dict) -> str:
    """Compact JSON for a single-quoted nginx string."""
    text = json.dumps(document, separators=(",", ":"), sort_keys=True)
    if "$" in text:
        # nginx would expand it as a variable and has no escape for it.
        raise ValueError(f"well-known document must not contain '$': {text}")
    return text.replace("\\", "\\\\").replace("'", "\\'")


def render_nginx_conf(*, server_name: str, matrix_host: str, server_json: Optional[dict], client_json: dict,
                      synapse_upstream: str, listen: str = "80",
                      max_body_size: str = DEFAULT_MAX_BODY_SIZE,
                      trusted_proxies: Sequence[str] = PRIVATE_PROXY_RANGES,
                      workers: WorkerPlan = WorkerPlan(), resolver: Optional[str] = DOCKER_DNS) -> str:
    """The server block (for conf.d, inside nginx's http context). `trusted_proxies`
    are the networks whose X-Forwarded-For entries are believed (see the template).
    With `workers`, each request goes to the Synapse process that serves it
    (components/matrix/workers.py), else to `synapse_upstream`."""
    if not trusted_proxies:
        raise ValueError("nginx needs at least the network Traefik connects from as a trusted proxy")
    networks = [str(ipaddress.ip_network(cidr)) for cidr in trusted_proxies]  # raises on anything else
    if not _UPSTREAM_RE.match(synapse_upstream):
        raise ValueError(f"synapse_upstream must be scheme://host[:port] without a path, not {synapse_upstream!r}")
    if not _SIZE_RE.match(max_body_size):
        raise ValueError(f"max_body_size must be an nginx size such as 50M, not {max_body_size!r}")
    if workers.enabled:
        routing = render_nginx_routing(workers, main_address=synapse_upstream.split("://", 1)[1],
                                       resolver=resolver) + "\n"
        synapse_pass = "\n".join([
            "        # The upstream group of the process that serves this request (the map above).",
            "        proxy_pass http://$synapse_upstream_group;",
            "        access_log /dev/stdout synapse_routing;",
        ])
    else:
        routing = ""
        synapse_pass = "\n".join([
            "        # A variable upstream is resolved per request and passed on without",
            "        # re-encoding the URI (which would break federation signatures).",
            f"        set $synapse_upstream {synapse_upstream};",
            "        proxy_pass $synapse_upstream;",
        ])
    return _template().substitute(
        synapse_routing=routing,
        synapse_pass=synapse_pass,
        listen=listen,
        server_names=" ".join(dict.fromkeys([server_name, matrix_host])),
        # No federation: no delegation to advertise, so other servers find none (404).
        server_return="404" if server_json is None else f"200 '{_nginx_literal(server_json)}'",
        client_json=_nginx_literal(client_json),
        max_body_size=max_body_size,
        real_ip_from="\n".join(f"    set_real_ip_from {network};" for network in networks),
    )


@dataclass
class WellKnownArgs:
    network: pulumi.Input[str]
    server_name: str
    matrix_host: str
    public_baseurl: str
    federation_port: int
    # Off: /.well-known/matrix/server answers 404 (nothing to delegate).
    federation: bool = True
    synapse_upstream: str = "http://synapse:8008"
    # Keep equal to Synapse's max_upload_size.
    max_body_size: str = DEFAULT_MAX_BODY_SIZE
    # Proxies in front of Traefik (Cloudflare's ranges when it proxies); Traefik's own network is always trusted.
    upstream_proxies: Sequence[str] = ()
    # Networks besides `network`: Synapse's (components/matrix/network.py).
    extra_networks: Sequence[pulumi.Input[str]] = ()
    # MatrixRTC foci for /.well-known/matrix/client (the same list as Synapse's matrix_rtc.transports).
    rtc_foci: Sequence[dict] = ()
    # Synapse's worker processes (components/matrix/workers.py): nginx routes to them.
    workers: WorkerPlan = field(default_factory=WorkerPlan)


class WellKnown(pulumi.ComponentResource):
    def __init__(self, name: str, args: WellKnownArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("commstack:matrix:WellKnown", name, None, opts)
        conf = render_nginx_conf(
            server_name=args.server_name,
            matrix_host=args.matrix_host,
            server_json=well_known_server(args.matrix_host, args.federation_port) if args.federation else None,
            client_json=well_known_client(args.public_baseurl, args.rtc_foci),
            synapse_upstream=args.synapse_upstream,
            max_body_size=args.max_body_size,
            trusted_proxies=[*PRIVATE_PROXY_RANGES, *args.upstream_proxies],
            workers=args.workers,
        )
        self.container = service_container(
            CONTAINER,
            ContainerSpec(
                image_key="nginx",
                network=args.network,
                aliases=[CONTAINER],
                extra_networks=[(network, [CONTAINER]) for network in args.extra_networks],
                files=[ConfigFile(CONF_PATH, conf)],
                healthcheck=["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1/.well-known/matrix/client"],
                hardening=HARDENING,
            ),
            parent=self,
            resource_name=name,
        )
        self.register_outputs({})
