"""lk-jwt-service (the MatrixRTC Authorization Service): turns a Matrix OpenID token into a
LiveKit token, and creates the LiveKit room for users of full-access homeservers.

Settings are the environment variables of the pinned version (element-hq/lk-jwt-service
main.go `parseConfig`/`readKeySecret` and README "Configuration", tag v0.5.0):
- `LIVEKIT_KEY_FILE`: the API key and secret as one file (`key: secret`), so neither sits in
  the environment; the same file LiveKit reads as its `key_file`.
- `LIVEKIT_URL`: LiveKit's public WebSocket URL. It is what clients are told, and what the
  service itself calls (server-sdk-go's RoomService over HTTPS) to create rooms; on the calls
  network the rtc host resolves to Traefik (a network alias), so that call never leaves the host.
- `LIVEKIT_FULL_ACCESS_HOMESERVERS`: our server_name only. Users of other homeservers get a
  token for rooms that already exist and never create one (with LiveKit's `room.auto_create`
  off, their token opens nothing else).
- `LIVEKIT_JWT_BIND`: its listener inside the calls network.

It checks each OpenID token against the user's homeserver over the federation API
(`/_matrix/federation/v1/openid/userinfo`, via gomatrixserverlib's well-known/SRV resolution),
so for our users it goes through Traefik and nginx to Synapse's `openid` resource, as any
other homeserver would. With the program's self-signed certificate, that certificate is added to
the trust store through `SSL_CERT_DIR` (Go's crypto/x509 reads it beside the image's CA bundle),
so TLS stays verified and no `LIVEKIT_INSECURE_SKIP_VERIFY_TLS` is needed.

The pinned version has no LiveKit webhook endpoint (`/sfu_webhook` came later, with delegated
delayed events), so LiveKit is configured without webhooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import pulumi

import pulumi_docker as docker

from components.common import ConfigFile, ContainerSpec, Hardening, child, image, service_container
from components.settings import CONFIGS_DIR
from components.matrix.livekit import key_file
from components.matrix.proxy import RateLimit

CONTAINER = "lk-jwt-service"
HTTP_PORT = 8080
INTERNAL_URL = f"http://{CONTAINER}:{HTTP_PORT}"
KEY_FILE_PATH = "/etc/lk-jwt-service/keys"
# A directory of its own: SSL_CERT_DIR adds it to the image's /etc/ssl/certs/ca-certificates.crt.
EXTRA_CA_DIR = "/etc/lk-jwt-service/ca"
EXTRA_CA_PATH = f"{EXTRA_CA_DIR}/commstack-ca.pem"  # a certificate, not a secret
# Where Traefik routes it on the rtc host, stripped before the service (element-call
# docs/self-hosting.md); clients call <base>/get_token (and the legacy <base>/sfu/get).
PUBLIC_PATH = "/livekit/jwt"
# The only paths Traefik passes to it: the token endpoints clients call (MSC4195 `/get_token`; Element
# Call's legacy `/sfu/get`) and `/healthz` (commstack doctor). Anything a later version adds (e.g. its
# LiveKit webhook) stays unreachable from outside until it is listed here.
PUBLIC_ENDPOINTS = ("/get_token", "/sfu/get", "/healthz")
# Per client address: a call join asks once per participant, a reconnect once more; a household or an
# office behind one address joining at once fits in the burst. Everything past it gets 429.
RATE_LIMIT = RateLimit(average=30, period="1m", burst=20)
# No capability (it binds 8080), a small Go service. Its files live in /etc/lk-jwt-service (a config
# dir), so the root is read-only; it runs as nobody (the FROM-scratch image would run it as root).
HARDENING = Hardening(memory_mb=64, config_dirs=("/etc/lk-jwt-service",))
RUN_AS = "65534"


def service_environment(*, livekit_url: str, full_access_homeservers: Sequence[str],
                        extra_ca: bool = False, bind: str = f":{HTTP_PORT}") -> dict[str, str]:
    """The container's environment: no secret in it (the keys are a file)."""
    if not livekit_url.startswith(("wss://", "ws://")):
        raise ValueError(f"LIVEKIT_URL must be a ws(s):// URL, not {livekit_url!r}")
    if not full_access_homeservers or "*" in full_access_homeservers:
        raise ValueError("name the full-access homeservers; `*` would let every homeserver create rooms")
    env = {
        "LIVEKIT_URL": livekit_url,
        "LIVEKIT_KEY_FILE": KEY_FILE_PATH,
        "LIVEKIT_FULL_ACCESS_HOMESERVERS": ",".join(full_access_homeservers),
        "LIVEKIT_JWT_BIND": bind,
    }
    if extra_ca:
        env["SSL_CERT_DIR"] = f"/etc/ssl/certs:{EXTRA_CA_DIR}"
    return env


@dataclass
class LkJwtServiceArgs:
    network: pulumi.Input[str]  # web-lk-jwt-service, shared with Traefik only
    livekit_url: str  # wss://<rtc host>/livekit/sfu
    server_name: str  # the one full-access homeserver
    api_key: pulumi.Output[str]
    api_secret: pulumi.Output[str]
    # The program's self-signed certificate, when the stack has no publicly trusted one.
    extra_ca_pem: Optional[pulumi.Input[str]] = None
    # egress: the OpenID checks of users of other homeservers leave the host.
    extra_networks: Sequence[pulumi.Input[str]] = ()


def health_check(port: int = HTTP_PORT) -> list[str]:
    """The service's own /healthz (main.go `healthcheck`), fetched with the busybox the image build adds."""
    return ["CMD", "/bin/busybox", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{port}/healthz"]


class LkJwtService(pulumi.ComponentResource):
    internal_url: str = INTERNAL_URL

    def __init__(self, name: str, args: LkJwtServiceArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("commstack:matrix:LkJwtService", name, None, opts)
        # The pinned image plus a static busybox for the health check (configs/lk-jwt-service/Dockerfile);
        # relative to the project, as pulumi-docker resolves `dockerfile` against Pulumi.yaml's directory.
        context = (CONFIGS_DIR / "lk-jwt-service").relative_to(CONFIGS_DIR.parent).as_posix()
        tag = image("lk-jwt-service").rpartition(":")[2]
        built = docker.Image(
            f"{name}-image", image_name=f"commstack/lk-jwt-service:{tag}", skip_push=True,
            build=docker.DockerBuildArgs(context=context, dockerfile=f"{context}/Dockerfile",
                                         args={"SERVICE_IMAGE": image("lk-jwt-service"), "TOOLS_IMAGE": image("busybox")}),
            opts=child(self))
        keys = pulumi.Output.all(args.api_key, args.api_secret).apply(lambda kv: key_file(kv[0], kv[1]))
        # Only the service's own user reads the key file.
        files = [ConfigFile(KEY_FILE_PATH, pulumi.Output.secret(keys), permissions="0600", owner=RUN_AS)]
        if args.extra_ca_pem is not None:
            files.append(ConfigFile(EXTRA_CA_PATH, args.extra_ca_pem))
        self.container = service_container(
            CONTAINER,
            ContainerSpec(
                image_key="lk-jwt-service",
                built_image=built.repo_digest,
                network=args.network,
                aliases=[CONTAINER],
                extra_networks=[(network, [CONTAINER]) for network in args.extra_networks],
                files=files,
                user=f"{RUN_AS}:{RUN_AS}",
                hardening=HARDENING,
                envs=service_environment(livekit_url=args.livekit_url, full_access_homeservers=[args.server_name],
                                         extra_ca=args.extra_ca_pem is not None),
                healthcheck=health_check(),
            ),
            parent=self,
            resource_name=name,
        )
        self.register_outputs({"internal_url": self.internal_url})
