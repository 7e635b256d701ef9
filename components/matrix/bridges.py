"""mautrix bridges (bridgev2): WhatsApp, Telegram, and any bridge described in
configs/bridges.yaml.

The program writes both files the seed made by "run once, edit, run again":
the bridge's config.yaml and its appservice registration, with the same
generated as_token/hs_token in each. The bridge's image only generates files
that are missing, so with both uploaded it starts straight away. Synapse
reads the registration from `registration_path`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import pulumi
import yaml

from components.common import ConfigFile, ContainerSpec, Hardening, generated_secret, service_container, to_yaml
from components.settings import CONFIGS_DIR

CONFIG_PATH = "/data/config.yaml"
OWN_REGISTRATION_PATH = "/data/registration.yaml"
# The mautrix images' docker-run.sh runs as root: `chown -R` of /data to the bridge user
# (CHOWN), then su-exec to it (SETUID, SETGID). 1337 is the images' default UID/GID; the bridge
# may rewrite its config, so its files are 0600 and the bridge user's.
BRIDGE_UID = "1337"
HARDENING = Hardening(capabilities=("CHOWN", "SETGID", "SETUID"), memory_mb=512,
                      why="docker-run.sh chowns /data, then su-exec to the bridge user 1337")


# The bridge's own pool: at most this many Postgres connections (its role's limit adds a little).
MAX_OPEN_CONNS = 5

@dataclass(frozen=True)
class BridgeSpec:
    kind: str
    display_name: str
    image: str
    port: int
    bot_username: str
    user_prefix: str
    database: str
    command_prefix: str
    network_required: tuple[str, ...] = ()

    @property
    def container(self) -> str:
        return f"bridge-{self.kind}"

    @property
    def address(self) -> str:
        """Where Synapse pushes transactions (the registration url)."""
        return f"http://{self.container}:{self.port}"


def _load_specs() -> dict[str, BridgeSpec]:
    raw = yaml.safe_load((CONFIGS_DIR / "bridges.yaml").read_text())
    return {kind: BridgeSpec(kind=kind, **{**entry, "network_required": tuple(entry.get("network_required", ()))})
            for kind, entry in raw.items()}


BRIDGE_SPECS: dict[str, BridgeSpec] = _load_specs()


def _user_regex(localpart_pattern: str, server_name: str) -> str:
    return f"^@{localpart_pattern}:{re.escape(server_name)}$"


def render_registration(spec: BridgeSpec, *, server_name: str, as_token: str, hs_token: str) -> dict:
    """The appservice registration Synapse loads (mautrix-go GenerateRegistration's shape)."""
    return {
        "id": spec.kind,
        "url": spec.address,
        "as_token": as_token,
        "hs_token": hs_token,
        # The bridge itself treats the bot as the appservice's sender.
        "sender_localpart": spec.bot_username,
        "rate_limited": False,
        "namespaces": {
            "users": [
                {"regex": _user_regex(re.escape(spec.bot_username), server_name), "exclusive": True},
                {"regex": _user_regex(re.escape(spec.user_prefix) + ".*", server_name), "exclusive": True},
            ],
        },
        "de.sorunome.msc2409.push_ephemeral": True,
        "receive_ephemeral": True,
        # encryption.appservice: Synapse sends the bot's to-device events, device lists and key
        # counts in transactions (mautrix-go sets this from that option when it writes the file).
        "org.matrix.msc3202": True,
    }


def render_bridge_config(spec: BridgeSpec, *, server_name: str, homeserver_url: str, as_token: str, hs_token: str,
                         database_uri: str, provisioning_secret: str, pickle_key: str,
                         network_config: Mapping[str, Any], admins: Sequence[str] = ()) -> dict:
    """config.yaml: every value bridgev2 refuses to start without, plus safer choices.

    Keys left out take the bridge's own defaults (it merges its example config)."""
    missing = [k for k in spec.network_required if network_config.get(k) in (None, "")]
    if missing:
        raise ValueError(f"the {spec.kind} bridge needs network settings: {', '.join(missing)}")
    if len(provisioning_secret) < 16:
        raise ValueError("the provisioning shared secret must be at least 16 characters")
    permissions = {server_name: "user", **{admin: "admin" for admin in admins}}
    return {
        "network": dict(network_config),
        "bridge": {
            "command_prefix": spec.command_prefix,
            # Local users may log in; nobody else (not even via relay); admins only when named.
            "permissions": permissions,
            "relay": {"enabled": False},
        },
        "database": {"type": "postgres", "uri": database_uri, "max_open_conns": MAX_OPEN_CONNS, "max_idle_conns": 1},
        "homeserver": {"address": homeserver_url, "domain": server_name, "software": "standard"},
        "appservice": {
            "address": spec.address,
            "hostname": "0.0.0.0",
            "port": spec.port,
            "id": spec.kind,
            # avatar "" leaves the bot's avatar unset. The default (the network's icon, an mxc:// URI on
            # maunium.net) has the homeserver fetch it from that server at every start: traffic to a
            # third party, and a failing request on a stack without federation.
            "bot": {"username": spec.bot_username, "displayname": f"{spec.display_name} bridge bot", "avatar": ""},
            "ephemeral_events": True,
            "as_token": as_token,
            "hs_token": hs_token,
            "username_template": f"{spec.user_prefix}{{{{.}}}}",
        },
        "provisioning": {"shared_secret": provisioning_secret},
        "public_media": {"enabled": False},
        "direct_media": {"enabled": False},
        # Clear the example's placeholder servers and secrets.
        "double_puppet": {"servers": {}, "allow_discovery": False, "secrets": {}},
        # Element encrypts DMs by default; the bridge must be able to join them. `appservice`: Synapse
        # answers the bot's own /sync with 500 ("We no longer support AS users using /sync directly",
        # synapse/handlers/sync.py), so its crypto gets to-device events and key counts pushed in
        # transactions instead (MSC2409/MSC3202, which Synapse's experimental_features turn on).
        # `default`: new portals are created encrypted (mautrix-go bridgev2/matrix/intent.go CreateRoom),
        # so messages that are end-to-end encrypted on WhatsApp or Telegram do not sit in plaintext in
        # Synapse's database and its backups. `require` stays off: it drops every unencrypted message
        # from Matrix (bridgev2/matrix/matrix.go), which would silence portals created before this
        # default and any unencrypted room a user opens with the bot (docs/security.md).
        "encryption": {"allow": True, "default": True, "require": False, "appservice": True,
                       "pickle_key": pickle_key},
        "logging": {"min_level": "info", "writers": [{"type": "stdout", "format": "pretty"}]},
        "env_config_prefix": None,
    }


@dataclass
class BridgeArgs:
    kind: str
    network: pulumi.Input[str]
    server_name: str
    database_uri: pulumi.Output[str]
    homeserver_url: str = "http://synapse:8008"
    network_config: Mapping[str, pulumi.Input[Any]] = field(default_factory=dict)
    # Matrix IDs given the bridge's admin level; none by default.
    admins: Sequence[str] = ()
    # Networks besides `network` (components/matrix/network.py).
    extra_networks: Sequence[pulumi.Input[str]] = ()


class MautrixBridge(pulumi.ComponentResource):
    registration_yaml: pulumi.Output[str]
    registration_path: str
    as_token: pulumi.Output[str]

    def __init__(self, name: str, args: BridgeArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("commstack:matrix:Bridge", name, None, opts)
        if args.kind not in BRIDGE_SPECS:
            raise ValueError(f"unknown bridge {args.kind!r}; configs/bridges.yaml has {', '.join(BRIDGE_SPECS)}")
        spec = BRIDGE_SPECS[args.kind]

        as_token = generated_secret(f"{name}-as-token", self, length=64)
        hs_token = generated_secret(f"{name}-hs-token", self, length=64)
        provisioning_secret = generated_secret(f"{name}-provisioning-secret", self)
        # Encrypts the bridge's crypto store in its database: a new one would orphan it.
        pickle_key = generated_secret(f"{name}-pickle-key", self, protect=True)

        config_yaml = pulumi.Output.all(
            as_token=as_token, hs_token=hs_token, database_uri=args.database_uri,
            provisioning_secret=provisioning_secret, pickle_key=pickle_key,
            network_config=pulumi.Output.from_input(dict(args.network_config)),
        ).apply(lambda v: to_yaml(render_bridge_config(
            spec, server_name=args.server_name, homeserver_url=args.homeserver_url, admins=args.admins, **v)))
        self.registration_yaml = pulumi.Output.secret(pulumi.Output.all(as_token, hs_token).apply(
            lambda tokens: to_yaml(render_registration(
                spec, server_name=args.server_name, as_token=tokens[0], hs_token=tokens[1]))))
        self.registration_path = f"/data/appservices/{spec.kind}.yaml"
        # For `commstack doctor`'s appservice ping; secret end to end.
        self.as_token = as_token

        self.container = service_container(
            spec.container,
            ContainerSpec(
                image_key=spec.image,
                network=args.network,
                aliases=[spec.container],
                extra_networks=[(network, [spec.container]) for network in args.extra_networks],
                files=[
                    ConfigFile(CONFIG_PATH, pulumi.Output.secret(config_yaml), permissions="0600", owner=BRIDGE_UID),
                    ConfigFile(OWN_REGISTRATION_PATH, self.registration_yaml, permissions="0600", owner=BRIDGE_UID),
                ],
                hardening=HARDENING,
                healthcheck=["CMD", "curl", "-fsS", f"http://127.0.0.1:{spec.port}/_matrix/mau/live"],
            ),
            parent=self,
            resource_name=name,
        )
        self.register_outputs({"registration_path": self.registration_path})
