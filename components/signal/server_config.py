"""Renders Signal-Server's config.yml from the version data file and the stack's resources.

Pure functions: plain values in, text out. Secrets never pass through here;
the config names them as `secret://<bundle key>` and the server resolves them
from the secrets bundle the instance assembles from SSM.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Mapping

from components.common import to_yaml
from components.signal.version import ServerVersion, set_dotted


@dataclass(frozen=True)
class RegistrationEndpoint:
    """Where Signal-Server reaches registration-service (always TLS, trusting `ca_pem`)."""

    host: str
    port: int
    ca_pem: str


@dataclass(frozen=True)
class ServerBind:
    """Where Dropwizard's two connectors listen (config.yml `server:`). Without the block Signal-Server takes
    Dropwizard's defaults: every interface, the application on 8080 and the admin port on 8081, whose tasks
    accept POSTs (DefaultServerFactory)."""

    app: str
    admin: str


# EC2: nginx on the instance is the only client of either port.
INSTANCE_BIND = ServerBind(app="127.0.0.1", admin="127.0.0.1")
# Docker: the reverse proxy reaches the application port over its network (no port is published); the admin port
# is for the container's own health check only.
CONTAINER_BIND = ServerBind(app="0.0.0.0", admin="127.0.0.1")


def server_block(version: ServerVersion, bind: ServerBind) -> dict:
    ports = version.server_ports
    return {"applicationConnectors": [{"type": "http", "bindHost": bind.app, "port": ports["app"]}],
            "adminConnectors": [{"type": "http", "bindHost": bind.admin, "port": ports["admin"]}]}


@dataclass(frozen=True)
class AppConfigNames:
    application: str
    environment: str
    configuration: str


# registrationService.credentialConfigurationJson (@NotBlank): with the data file's build_patch the server builds no
# identity-token credentials from it, so it holds no credential, only what an operator reading config.yml needs to
# know. A jar built without the patch fails at startup on it (not JSON) instead of failing every registration later.
NO_IDENTITY_TOKEN = ("unused: this Signal-Server is built with commstack's build_patch and sends registration-service "
                     "no identity token (configs/signal/<ref>.yaml)")


def render_server_config(
    version: ServerVersion,
    *,
    region: str,
    domain: str,
    table_names: Mapping[str, str],
    bucket_names: Mapping[str, str],
    redis_cluster_uri: str,
    redis_pubsub_uri: str,
    registration: RegistrationEndpoint,
    app_config: AppConfigNames,
    internal_ca_pem: str,
    bind: ServerBind = INSTANCE_BIND,
) -> str:
    """config.yml for `version`. `table_names`/`bucket_names` map the data file's config paths to
    the physical names of the resources the program created."""
    missing = [t.config for t in version.tables if t.config not in table_names]
    missing += [b.config for b in version.buckets if b.config not in bucket_names]
    if missing:
        raise ValueError(f"no resource for config path(s): {', '.join(missing)}")

    config = copy.deepcopy(version["static_config"])
    set_dotted(config, "dynamoDbClientConfiguration.region", region)
    tables: dict = {}
    for spec in version.tables:
        set_dotted(tables, spec.config, table_names[spec.config])
    for path, value in version.table_settings.items():
        set_dotted(tables, path, value)
    config["dynamoDbTables"] = tables

    for entry in version.redis_cluster_entries:
        set_dotted(config, f"{entry}.configurationUri", redis_cluster_uri)
    for entry in version.redis_standalone_entries:
        set_dotted(config, f"{entry}.uri", redis_pubsub_uri)

    for spec in version.buckets:
        set_dotted(config, spec.config, bucket_names[spec.config])
        set_dotted(config, spec.config.rsplit(".", 1)[0] + ".region", region)

    config["appConfig"] = {"application": app_config.application, "environment": app_config.environment,
                           "configuration": app_config.configuration}

    # Services this stack does not run yet still need a URI and a trust root to start.
    set_dotted(config, "storageService.uri", f"storage.{domain}")
    set_dotted(config, "storageService.storageCaCertificates", [internal_ca_pem])
    set_dotted(config, "backupService.uri", f"backup.{domain}")
    set_dotted(config, "backupService.backupCaCertificates", [internal_ca_pem])
    set_dotted(config, "svr2.uri", f"svr2.{domain}")
    set_dotted(config, "svr2.svrCaCertificates", [internal_ca_pem])

    config["registrationService"] = {
        "host": registration.host,
        "port": registration.port,
        "credentialConfigurationJson": NO_IDENTITY_TOKEN,
        "secondaryCredentialConfigurationJson": NO_IDENTITY_TOKEN,
        "identityTokenAudience": f"https://{registration.host}",
        "registrationCaCertificate": registration.ca_pem,
    }
    # Filled on the instance (configs/signal/signal_secrets.py assemble); kept as keys so the shape is complete.
    for path in version["config_patches"]:
        set_dotted(config, path, None)

    config["server"] = server_block(version, bind)

    ordered = {section: config[section] for section in version.required_sections if section in config}
    ordered.update({k: v for k, v in config.items() if k not in ordered})
    return to_yaml(ordered)

