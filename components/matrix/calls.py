"""MatrixRTC calls (Element Call, as Element X and Element Web group calls place them):
LiveKit and lk-jwt-service, their shared API key and secret, and what the rest of the homeserver
announces about them.

Networks (components/matrix/network.py): each is a routed backend with its own `web-<backend>`
network shared only with Traefik, and joins `egress` (inter-container traffic off) for what
leaves the host: LiveKit's published media ports, lk-jwt-service's OpenID checks of users of
other homeservers. On lk-jwt-service's web network the public host names are aliases of Traefik,
so it reaches our Synapse's OpenID check and LiveKit's API through the same TLS front as anyone
else. Neither shares a network with Synapse, Postgres or the bridges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi

from components.common import child, generated_secret
from components.matrix import livekit, lkjwt
from components.matrix.livekit import LiveKit, LiveKitArgs, TurnServer
from components.matrix.lkjwt import LkJwtService, LkJwtServiceArgs
from components.matrix.proxy import Route

# LiveKit API keys are an identifier plus a secret; both generated, and the secret at least the
# 32 characters LiveKit asks for (pkg/config/config.go ValidateKeys).
API_KEY_LENGTH = 16
API_SECRET_LENGTH = 48


def livekit_url(rtc_host: str) -> str:
    return f"wss://{rtc_host}{livekit.PUBLIC_PATH}"


def service_url(rtc_host: str) -> str:
    """lk-jwt-service's public base URL: Synapse's matrix_rtc transport and the well-known focus."""
    return f"https://{rtc_host}{lkjwt.PUBLIC_PATH}"


def rtc_transports(rtc_host: str) -> list[dict]:
    """`matrix_rtc.transports` (Synapse synapse/config/matrixrtc.py, v1.163.2) and, unchanged, the
    well-known `org.matrix.msc4143.rtc_foci` (element-call docs/self-hosting.md)."""
    return [{"type": "livekit", "livekit_service_url": service_url(rtc_host)}]


def calls_routes(rtc_host: str) -> list[Route]:
    """What Traefik serves on the rtc host (element-call docs/self-hosting.md endpoint routing)."""
    return [Route(rtc_host, lkjwt.INTERNAL_URL, path_prefix=lkjwt.PUBLIC_PATH, paths=lkjwt.PUBLIC_ENDPOINTS,
                  rate_limit=lkjwt.RATE_LIMIT),
            Route(rtc_host, livekit.INTERNAL_URL, path_prefix=livekit.PUBLIC_PATH)]


def turn_servers(turn_host: str, advertise_tls: bool) -> list[TurnServer]:
    """coturn as LiveKit hands it to clients: the same URIs Synapse advertises for legacy calls."""
    servers = [TurnServer(turn_host, 3478, "udp"), TurnServer(turn_host, 3478, "tcp")]
    if advertise_tls:
        servers.append(TurnServer(turn_host, 5349, "tls"))
    return servers


@dataclass
class CallsArgs:
    egress_network: pulumi.Input[str]
    livekit_network: pulumi.Input[str]  # web-livekit
    jwt_network: pulumi.Input[str]  # web-lk-jwt-service
    server_name: str
    rtc_host: str
    public_ip: str
    turn_host: str
    turn_shared_secret: pulumi.Output[str]
    turn_tls: bool
    # The program's self-signed certificate (None with Let's Encrypt).
    extra_ca_pem: Optional[pulumi.Input[str]] = None
    livekit_metrics_network: Optional[pulumi.Input[str]] = None  # metrics-livekit (monitoring on)
    # Without federation no user of another homeserver has a call here, so lk-jwt-service gets no
    # egress: it reaches only Traefik (our names are aliases of it on its web network), and a token
    # naming any other homeserver fails to resolve instead of making it fetch that server.
    federation: bool = True


class Calls(pulumi.ComponentResource):
    transports: list[dict]

    def __init__(self, name: str, args: CallsArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("commstack:matrix:Calls", name, None, opts)
        api_key = generated_secret(f"{name}-livekit-api-key", self, length=API_KEY_LENGTH)
        api_secret = generated_secret(f"{name}-livekit-api-secret", self, length=API_SECRET_LENGTH)
        self.livekit = LiveKit(f"{name}-livekit", LiveKitArgs(
            network=args.egress_network, extra_networks=[args.livekit_network], node_ip=args.public_ip, api_key=api_key, api_secret=api_secret,
            turn_servers=turn_servers(args.turn_host, args.turn_tls), turn_shared_secret=args.turn_shared_secret,
            metrics_network=args.livekit_metrics_network,
        ), opts=child(self))
        self.jwt_service = LkJwtService(f"{name}-jwt", LkJwtServiceArgs(
            network=args.jwt_network, extra_networks=[args.egress_network] if args.federation else [],
            livekit_url=livekit_url(args.rtc_host), server_name=args.server_name,
            api_key=api_key, api_secret=api_secret, extra_ca_pem=args.extra_ca_pem,
        ), opts=child(self))
        self.transports = rtc_transports(args.rtc_host)
        self.livekit_url = livekit_url(args.rtc_host)
        self.register_outputs({"transports": self.transports, "livekit_url": self.livekit_url})
