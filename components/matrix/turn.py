"""coturn: the TURN relay Matrix clients use for voice and video calls.

Authentication is coturn's TURN REST API mode (`use-auth-secret`): Synapse
hands clients short-lived credentials derived from the same shared secret,
so no user list lives here. The config is rendered from
configs/turnserver.conf.tmpl (Synapse's docs/setup/turn/coturn.md settings).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from string import Template
from typing import Optional

import pulumi

from components.common import ConfigFile, ContainerSpec, Hardening, published_ports, service_container
from components.edge.ports import ports_for
from components.settings import CONFIGS_DIR

CONTAINER = "turn"
CONF_PATH = "/etc/coturn/turnserver.conf"
CERT_PATH = "/etc/coturn/certs/fullchain.pem"
KEY_PATH = "/etc/coturn/certs/privkey.pem"
# The image runs as nobody (coturn docker/coturn/debian/Dockerfile `USER nobody:nogroup`), and its
# turnserver binary carries the file capability cap_net_bind_service+ep: the kernel refuses to exec
# such a file unless that capability is in the bounding set, so it is the one kept (the ports are
# above 1024, and no-new-privileges keeps it from being granted).
NOBODY = "65534"
# coturn's Prometheus exporter's default port (`prometheus` option, coturn README).
METRICS_PORT = 9641
HARDENING = Hardening(capabilities=("NET_BIND_SERVICE",), memory_mb=256,
                      why="turnserver's file capability must be in the bounding set for it to exec")


@lru_cache(maxsize=1)
def _template() -> Template:
    return Template((CONFIGS_DIR / "turnserver.conf.tmpl").read_text())


def _relay_range() -> tuple[int, int]:
    relay = next(p for p in ports_for("turn") if p.from_port != p.to_port)
    return relay.from_port, relay.to_port


def render_turnserver_conf(*, realm: str, external_ip: str, shared_secret: str, cert_path: str, key_path: str,
                           listening_port: int = 3478, tls_listening_port: int = 5349,
                           min_port: int = 49160, max_port: int = 49200, metrics: bool = False) -> str:
    """turnserver.conf text; the secret is a plain value here, so call it inside an apply."""
    ipaddress.ip_address(external_ip)  # raises on anything but an address
    if not shared_secret or any(c.isspace() for c in shared_secret):
        raise ValueError("the TURN shared secret must be a non-empty token without whitespace")
    if not 0 < min_port < max_port < 65536:
        raise ValueError(f"bad relay range {min_port}-{max_port}")
    conf = _template().substitute(
        realm=realm, external_ip=external_ip, shared_secret=shared_secret, cert_path=cert_path,
        key_path=key_path, listening_port=listening_port, tls_listening_port=tls_listening_port,
        min_port=min_port, max_port=max_port,
    )
    if metrics:
        # coturn's Prometheus exporter on METRICS_PORT (the coturn image is built with it), reached by
        # Prometheus on the metrics-turn network only; the port is not published.
        conf += "\n# Metrics for Prometheus on coturn's default port 9641 (monitoring on); not published.\nprometheus\n"
    return conf


def turn_uris(host: str, listening_port: int = 3478, tls_listening_port: Optional[int] = 5349) -> list[str]:
    """What Synapse advertises to clients (turn_uris); no `turns:` URI when `tls_listening_port` is None."""
    uris = [
        f"turn:{host}:{listening_port}?transport=udp",
        f"turn:{host}:{listening_port}?transport=tcp",
    ]
    if tls_listening_port is not None:
        uris.append(f"turns:{host}:{tls_listening_port}?transport=tcp")
    return uris


@dataclass
class TurnArgs:
    network: pulumi.Input[str]
    realm: str
    external_ip: str
    shared_secret: pulumi.Output[str]
    tls_cert_pem: pulumi.Input[str]
    tls_key_pem: pulumi.Input[str]
    # Public name in the URIs; defaults to the realm (conventionally the TURN host).
    host: Optional[str] = None
    # Advertise `turns:` (5349) only when clients can verify the certificate served there;
    # the TLS listener runs either way.
    advertise_tls: bool = True
    metrics_network: Optional[pulumi.Input[str]] = None  # metrics-turn, shared with Prometheus only


def health_check(listening_port: int) -> list[str]:
    """A STUN binding request to coturn itself; turnutils_stunclient ships in the coturn image
    and only exits once it has an answer (Docker's health-check timeout bounds the wait)."""
    return ["CMD", "turnutils_stunclient", "-p", str(listening_port), "127.0.0.1"]


class Turn(pulumi.ComponentResource):
    uris: list[str]

    def __init__(self, name: str, args: TurnArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("commstack:matrix:Turn", name, None, opts)
        listening_port, tls_listening_port = 3478, 5349
        min_port, max_port = _relay_range()

        conf = pulumi.Output.secret(args.shared_secret).apply(
            lambda secret: render_turnserver_conf(
                realm=args.realm, external_ip=args.external_ip, shared_secret=secret,
                cert_path=CERT_PATH, key_path=KEY_PATH, listening_port=listening_port,
                tls_listening_port=tls_listening_port, min_port=min_port, max_port=max_port,
                metrics=args.metrics_network is not None,
            )
        )
        self.container = service_container(
            CONTAINER,
            ContainerSpec(
                image_key="coturn",
                network=args.network,
                aliases=[CONTAINER],
                extra_networks=[(args.metrics_network, [CONTAINER])] if args.metrics_network is not None else [],
                files=[
                    # The shared secret and the key: only coturn's user reads them.
                    ConfigFile(CONF_PATH, conf, permissions="0400", owner=NOBODY),
                    ConfigFile(CERT_PATH, args.tls_cert_pem),
                    ConfigFile(KEY_PATH, pulumi.Output.secret(args.tls_key_pem), permissions="0400", owner=NOBODY),
                ],
                hardening=HARDENING,
                # The image's entrypoint prefixes `turnserver` to flag-only commands.
                command=["-c", CONF_PATH, "--log-file=stdout"],
                # Published 1:1 so the relay ports clients are told about are the real ones.
                ports=published_ports(ports_for("turn")),
                healthcheck=health_check(listening_port),
            ),
            parent=self,
            resource_name=name,
        )
        self.uris = turn_uris(args.host or args.realm, listening_port,
                              tls_listening_port if args.advertise_tls else None)
        self.register_outputs({"uris": self.uris})
