"""The docker target: the Signal half on the local Docker host, no AWS account.

DynamoDB Local gets the same tables, created from the same data file by a one-shot AWS CLI
container on the private network (DynamoDB Local is never published on a host port, so the
aws provider cannot reach it from where Pulumi runs). Redis is the same six-node cluster,
formed by a one-shot `redis-cli --cluster create`. Signal-Server and registration-service
images are built from the pinned sources; their containers run the built image by id, so a
rebuild replaces them. There is no nginx here: registration-service itself presents the
internal certificate Signal-Server trusts.

Signal-Server's AWS clients cannot be pointed anywhere by configuration (see `aws_clients` in the
version data file), so an `aws-local` container answers for AWS on the private network: the
instance-metadata endpoint the SDKs honour, and HTTPS on the AWS hostnames (network aliases) with
a certificate the server's JVM is told to trust. The built jar is used unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Mapping, Optional

import pulumi
import pulumi_docker as docker

from components.common import (ConfigFile, ContainerSpec, Hardening, checked_job, child, image, service_container,
                               stateful_child, to_yaml)
from components.signal import redis
from components.signal.appconfig import DEFAULT_DYNAMIC_CONFIG
from components.signal import registration as reg
from components.signal.host import secrets_manifest, server_build_steps
from components.signal.registration import Verification
from components.signal.secrets import TLS_KEY_PARAMETER, InternalTls, InternalTlsArgs
from components.signal.server_config import AppConfigNames
from components.signal.storage import create_table_request
from components.settings import CONFIGS_DIR
from components.signal.version import SIGNAL_CONFIGS, ServerVersion

DYNAMODB_ALIAS = "dynamodb"
DYNAMODB_PORT = 8000
REGISTRATION_ALIAS = "registration-service"
REDIS_PORT = 6379
SETUP_LABEL = "commstack.signal-setup"
# DynamoDB Local accepts any credentials; these name the local account, they guard nothing.
LOCAL_AWS_ENV = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local", "AWS_DEFAULT_REGION": "local"}
AWS_LOCAL_ALIAS = "aws-local"
METADATA_PORT = 80
# A real region's name, so every client (SDK v1 and v2) resolves the ordinary https://<service>.<region>.amazonaws.com,
# which only the private network maps to aws-local. ("local" means localhost:8000, over http or https by SDK.)
LOCAL_REGION = "us-east-1"
LOCAL_ROLE = "signal-local"
AWS_LOCAL_DIR = "/etc/aws-local"
# Rebuilt on every start from the image's CA bundle plus the aws-local certificate.
TRUSTSTORE = "/tmp/aws-local-truststore"

LOCAL_PATHS = {
    "jar": "/opt/signal/TextSecureServer.jar",
    "generic_zk_source": "/opt/signal/GenericZkParams.java",
    "bundle": "/etc/signal/secrets-bundle.yml",
    "config_in": "/etc/signal/config.base.yml",
    "config_out": "/etc/signal/config.yml",
    "tls_key": "/etc/signal/registration/key.pem",
    "aws_ca": "/etc/signal/aws-local-ca.pem",
}


def redis_alias(index: int) -> str:
    return f"redis-{index}"


def tables_script(tables: Mapping[str, Optional[str]]) -> str:
    """Creates each table unless it exists (DynamoDB Local keeps data in its volume) and, like the AWS
    tables, turns on TTL on its expiry attribute. `tables`: physical name -> TTL attribute or None."""
    endpoint = f"http://{DYNAMODB_ALIAS}:{DYNAMODB_PORT}"
    lines = ["set -e", f"until aws dynamodb list-tables --endpoint-url {endpoint} >/dev/null; do sleep 1; done"]
    for table, ttl in tables.items():
        create = f"aws dynamodb create-table --endpoint-url {endpoint} --cli-input-json file:///tables/{table}.json"
        if ttl:
            # Only right after creation: UpdateTimeToLive rejects enabling TTL that is already on.
            create = (f"{{ {create} && aws dynamodb update-time-to-live --endpoint-url {endpoint} --table-name {table} "
                      f"--time-to-live-specification Enabled=true,AttributeName={ttl}; }}")
        lines.append(f"aws dynamodb describe-table --endpoint-url {endpoint} --table-name {table} >/dev/null 2>&1 || "
                     + create)
    return "\n".join(lines) + "\n"


def aws_hostnames(version: ServerVersion, region: str) -> list[str]:
    """The AWS endpoints aws-local answers for (network aliases and certificate names)."""
    return [f"{service}.{region}.amazonaws.com" for service in version["aws_clients"]["served_locally"]]


def server_environment(region: str) -> dict[str, str]:
    """Where Signal-Server's AWS clients look: the region (AppConfigData reads it from the environment)
    and the metadata endpoint behind the instance-profile credential chain."""
    return {"AWS_REGION": region, "AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://{AWS_LOCAL_ALIAS}:{METADATA_PORT}"}


def server_start_command(paths: dict[str, str]) -> str:
    """First-boot secrets, the trust store that adds aws-local's certificate, then the server."""
    tool = "python3 /opt/signal/signal_secrets.py"
    trust = (f'cp -f "$JAVA_HOME/lib/security/cacerts" {TRUSTSTORE} && keytool -importcert -noprompt '
             f"-storepass changeit -keystore {TRUSTSTORE} -alias {AWS_LOCAL_ALIAS} -file {paths['aws_ca']}")
    return (f"{tool} first-boot /etc/signal/manifest.json && {tool} assemble /etc/signal/manifest.json && {trust} && "
            f"exec java -Djavax.net.ssl.trustStore={TRUSTSTORE} -Djavax.net.ssl.trustStorePassword=changeit "
            f"-Dsecrets.bundle.filename={paths['bundle']} -jar {paths['jar']} server {paths['config_out']}")


def aws_local_command(app_config: AppConfigNames) -> list[str]:
    return ["python3", f"{AWS_LOCAL_DIR}/aws_local.py", "--metadata-port", str(METADATA_PORT), "--https-port", "443",
            "--cert", f"{AWS_LOCAL_DIR}/cert.pem", "--key", f"{AWS_LOCAL_DIR}/key.pem", "--role", LOCAL_ROLE,
            "--dynamodb", f"http://{DYNAMODB_ALIAS}:{DYNAMODB_PORT}", "--application", app_config.application,
            "--environment", app_config.environment, "--profile", app_config.configuration,
            "--document", f"{AWS_LOCAL_DIR}/dynamic-config.yml"]


# Per container: capabilities each image needs (most need none), memory (MB).
# DynamoDB Local runs as root (user="root") to write its volume, whose directory may belong to the
# image's dynamodblocal user: DAC_OVERRIDE.
DYNAMODB_HARDENING = Hardening(capabilities=("DAC_OVERRIDE",), memory_mb=1024,
                               why="runs as root to write a volume directory owned by the image's user")
# Redis runs as the image's own user from the start (redis.REDIS_USER), so it needs no capability: the image's
# entrypoint chowns /data and drops privileges only when started as root. A new volume takes /data's owner
# (redis) from the image; an older stack's volume was chowned to redis by that entrypoint already.
REDIS_HARDENING = Hardening(memory_mb=256)
JOB_HARDENING = Hardening(memory_mb=256)
# aws-local answers on ports 80 and 443 as root.
AWS_LOCAL_HARDENING = Hardening(capabilities=("NET_BIND_SERVICE",), memory_mb=128, why="listens on 80 and 443")
REGISTRATION_HARDENING = Hardening(memory_mb=1024)
SERVER_HARDENING = Hardening(memory_mb=4096)

# The server's name on the reverse proxy's network, and the URL the proxy routes chat.<domain> to.
EDGE_ALIAS = "signal-server"


def edge_upstream(version: ServerVersion) -> str:
    return f"http://{EDGE_ALIAS}:{version.server_ports['app']}"


def health_url(version: ServerVersion) -> str:
    """Dropwizard's admin health check (the container's own health check calls it too)."""
    return f"http://{EDGE_ALIAS}:{version.server_ports['admin']}/healthcheck"


@dataclass
class LocalBackendArgs:
    version: ServerVersion
    server_repo: str
    server_ref: str
    name_prefix: str
    config_yml: pulumi.Input[str]
    tls_cert_pem: pulumi.Input[str]
    program_values: pulumi.Input[dict]  # secret: {"bundle/<key>": value, "tls/registration-key": pem}
    app_config: AppConfigNames  # the names config.yml's appConfig section carries
    region: str = LOCAL_REGION
    # The reverse proxy's network: the server joins it as EDGE_ALIAS so the proxy can route chat.<domain>.
    edge_network: Optional[pulumi.Input[str]] = None
    # Monitoring on: blackbox_exporter's network, where it probes health_url().
    metrics_network: Optional[pulumi.Input[str]] = None
    # How registration-service verifies numbers; the insecure dev environment only if the settings allowed it.
    verification: Verification = field(default_factory=lambda: Verification(insecure_unverified=True))
    twilio_api_key_secret: Optional[pulumi.Input[str]] = None  # secret; with Twilio Verify


class LocalBackend(pulumi.ComponentResource):
    table_names: dict[str, str]  # config path -> name
    network: docker.Network
    aws_local: docker.Container
    server: docker.Container
    server_container_name: str  # what `docker exec` takes

    def __init__(self, name: str, args: LocalBackendArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("commstack:signal:LocalBackend", name, None, opts)
        version = args.version
        # Its own internal network for everything; outbound only for the two services that may call
        # out (push, verification senders), through a network on which containers cannot reach each other.
        self.network = docker.Network(f"{name}-net", name=f"{name}-net", internal=True, opts=child(self))
        net = self.network.name
        self.egress_network = docker.Network(
            f"{name}-egress", name=f"{name}-egress", internal=False,
            options={"com.docker.network.bridge.enable_icc": "false"}, opts=child(self))

        dynamo_data = docker.Volume(f"{name}-dynamodb-data", name=f"{name}-dynamodb-data", opts=stateful_child(self))
        dynamodb = service_container(f"{name}-dynamodb", ContainerSpec(
            image_key="dynamodb-local", network=net, aliases=[DYNAMODB_ALIAS],
            # -disableTelemetry: DynamoDB Local 2.x otherwise reports usage to AWS from the user's machine.
            command=["-jar", "DynamoDBLocal.jar", "-sharedDb", "-dbPath", "/home/dynamodblocal/data", "-disableTelemetry"],
            volumes=[docker.ContainerVolumeArgs(volume_name=dynamo_data.name, container_path="/home/dynamodblocal/data")],
            # The image has bash and no HTTP client: a listening port is the sign of life.
            healthcheck=["CMD", "bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{DYNAMODB_PORT}"],
            hardening=DYNAMODB_HARDENING, user="root"), self)

        self.table_names = {t.config: f"{args.name_prefix}-{t.name}" for t in version.tables}
        ttls = {self.table_names[t.config]: t.ttl for t in version.tables}
        table_files = [ConfigFile(f"/tables/{self.table_names[t.config]}.json",
                                  json.dumps(create_table_request(t, self.table_names[t.config]), indent=2))
                       for t in version.tables]
        tables_job = service_container(f"{name}-tables", ContainerSpec(
            image_key="aws-cli", network=net, aliases=[], one_shot=True,
            files=table_files + [ConfigFile("/tables/create.sh", tables_script(ttls), True)],
            entrypoint=["sh", "/tables/create.sh"], envs=LOCAL_AWS_ENV, hardening=JOB_HARDENING,
            extra={"logs": True}), self, depends_on=[dynamodb])

        hostnames = aws_hostnames(version, args.region)
        aws_tls = InternalTls(f"{name}-aws-tls", InternalTlsArgs(dns_names=hostnames), opts=child(self))
        self.aws_local = service_container(f"{name}-aws-local", ContainerSpec(
            image_key="python", network=net, aliases=[AWS_LOCAL_ALIAS, *hostnames],
            files=[ConfigFile(f"{AWS_LOCAL_DIR}/aws_local.py", (SIGNAL_CONFIGS / "aws_local.py").read_text()),
                   ConfigFile(f"{AWS_LOCAL_DIR}/cert.pem", aws_tls.cert_pem),
                   ConfigFile(f"{AWS_LOCAL_DIR}/key.pem", aws_tls.private_key_pem, permissions="0400", owner="0"),
                   ConfigFile(f"{AWS_LOCAL_DIR}/dynamic-config.yml", to_yaml(DEFAULT_DYNAMIC_CONFIG))],
            command=aws_local_command(args.app_config), hardening=AWS_LOCAL_HARDENING,
            healthcheck=["CMD", "python3", "-c", f"import socket; socket.create_connection(('127.0.0.1', {METADATA_PORT}), 2)"]),
            self, depends_on=[dynamodb])

        nodes = []
        for i in range(redis.NODES):
            data = docker.Volume(f"{name}-redis-{i}-data", name=f"{name}-redis-{i}-data", opts=stateful_child(self))
            nodes.append(service_container(f"{name}-redis-{i}", ContainerSpec(
                image_key="redis", network=net, aliases=[redis_alias(i)],
                command=redis.node_command(REDIS_PORT, announce_hostname=redis_alias(i)),
                volumes=[docker.ContainerVolumeArgs(volume_name=data.name, container_path="/data")],
                healthcheck=["CMD", "redis-cli", "ping"], hardening=REDIS_HARDENING, user=redis.REDIS_USER), self))
        # redis-cli --cluster create wants addresses; the names resolve on the private network.
        resolved = [f"$(getent hosts {redis_alias(i)} | cut -d' ' -f1):{REDIS_PORT}" for i in range(redis.NODES)]
        redis_cluster = service_container(f"{name}-redis-cluster-create", ContainerSpec(
            image_key="redis", network=net, aliases=[], one_shot=True,
            command=["sh", "-c", redis.cluster_create_script(resolved, f"{redis_alias(0)}:{REDIS_PORT}")],
            hardening=JOB_HARDENING, user=redis.REDIS_USER, extra={"logs": True}), self, depends_on=nodes)

        rs = version.registration_service
        # Relative to the project (pulumi-docker v4.0.1 resolves `dockerfile` against Pulumi.yaml's directory),
        # so state and diffs do not depend on where the checkout lives.
        context_dir = SIGNAL_CONFIGS.relative_to(CONFIGS_DIR.parent)
        context = context_dir.as_posix()
        registration_image = docker.Image(
            f"{name}-registration-image", image_name=f"commstack/registration-service:{rs['commit'][:12]}",
            skip_push=True,
            build=docker.DockerBuildArgs(context=context, dockerfile=(context_dir / "Dockerfile.registration").as_posix(),
                                         args={"BUILD_IMAGE": image("registration-build"),
                                               "RUNTIME_IMAGE": image("signal-runtime"), "REPO": rs["repo"],
                                               "COMMIT": rs["commit"]}),
            opts=child(self))
        server_image = docker.Image(
            f"{name}-server-image", image_name=f"commstack/signal-server:{args.server_ref}", skip_push=True,
            build=docker.DockerBuildArgs(context=context, dockerfile=(context_dir / "Dockerfile").as_posix(), args={
                "BUILD_IMAGE": image("signal-build"), "RUNTIME_IMAGE": image("signal-runtime"),
                "REPO": args.server_repo, "REF": args.server_ref, "COMMIT": version["commit"], "BUILD": server_build_steps(version),
                "ARTIFACT": version["jar"]}),
            opts=child(self))

        program_values = pulumi.Output.secret(pulumi.Output.from_input(args.program_values).apply(json.dumps))
        secrets_volume = docker.Volume(f"{name}-secrets", name=f"{name}-secrets", opts=stateful_child(self))
        manifest = secrets_manifest(version, store="dir:/var/lib/signal/secrets", prefix="", paths=LOCAL_PATHS,
                                    program_values="/etc/signal/program-values.json")
        secrets_spec_files = [
            ConfigFile("/etc/signal/manifest.json", json.dumps(manifest, indent=2)),
            ConfigFile("/etc/signal/program-values.json", program_values, permissions="0400", owner="0"),
            ConfigFile(LOCAL_PATHS["config_in"], args.config_yml),
            ConfigFile(LOCAL_PATHS["aws_ca"], aws_tls.cert_pem),
        ]
        registration = self._registration(name, net, registration_image, args, rs["port"])
        # depends_on only orders creation: the server also takes the jobs' checked exit codes, so a
        # failed table or cluster setup stops the deployment before the server starts.
        setup_done = pulumi.Output.all(checked_job(tables_job), checked_job(redis_cluster)).apply(lambda _: "ok")
        self.server_container_name = f"{name}-server"
        admin_port = version.server_ports["admin"]
        self.server = service_container(self.server_container_name, ContainerSpec(
            image_key="signal-runtime", built_image=server_image.repo_digest, network=net, aliases=["signal-server"],
            extra_networks=[(self.egress_network.name, [EDGE_ALIAS]),
                            *([(args.edge_network, [EDGE_ALIAS])] if args.edge_network is not None else []),
                            *([(args.metrics_network, [EDGE_ALIAS])] if args.metrics_network is not None else [])],
            hardening=SERVER_HARDENING,
            files=secrets_spec_files,
            volumes=[docker.ContainerVolumeArgs(volume_name=secrets_volume.name, container_path="/var/lib/signal/secrets")],
            envs=server_environment(args.region), entrypoint=["sh", "-c", server_start_command(LOCAL_PATHS)],
            # Dropwizard's admin healthcheck (the runtime image has python3, not curl).
            healthcheck=["CMD", "python3", "-c", "import urllib.request; "
                         f"urllib.request.urlopen('http://127.0.0.1:{admin_port}/healthcheck', timeout=4)"],
            extra={"labels": [docker.ContainerLabelArgs(label=SETUP_LABEL, value=setup_done)]}),
            self, depends_on=[tables_job, redis_cluster, registration, self.aws_local])
        self.register_outputs({"network": net})

    def _registration(self, name: str, net, built: docker.Image, args: LocalBackendArgs, port: int) -> docker.Container:
        key = pulumi.Output.secret(pulumi.Output.from_input(args.program_values).apply(lambda v: v[TLS_KEY_PARAMETER]))
        cert_path, key_path = f"{reg.CONFIG_DIR}/cert.pem", f"{reg.CONFIG_DIR}/key.pem"
        owner = str(reg.RUN_UID)  # the image's unprivileged user reads its key and secrets, no one else
        verification = args.verification
        files = [ConfigFile(reg.CONFIG_PATH, reg.render_registration_config(port, verification, tls=(cert_path, key_path))),
                 ConfigFile(cert_path, args.tls_cert_pem),
                 ConfigFile(key_path, key, permissions="0400", owner=owner)]
        if verification.needs_secrets_file:
            if args.twilio_api_key_secret is None:
                raise ValueError("Twilio Verify needs its API key secret")
            secrets = pulumi.Output.secret(pulumi.Output.from_input(args.twilio_api_key_secret).apply(
                reg.render_registration_secrets))
            files.append(ConfigFile(reg.SECRETS_PATH, secrets, permissions="0400", owner=owner))
        return service_container(f"{name}-registration", ContainerSpec(
            image_key="signal-runtime", built_image=built.repo_digest, network=net, aliases=[REGISTRATION_ALIAS],
            files=files,
            envs={"MICRONAUT_ENVIRONMENTS": verification.environment, "MICRONAUT_CONFIG_FILES": verification.config_files},
            # Outbound for a real verification sender (Twilio), through the isolated egress network.
            extra_networks=[(self.egress_network.name, [REGISTRATION_ALIAS])],
            hardening=REGISTRATION_HARDENING,
            # A gRPC port that accepts connections (the image has bash, no gRPC client).
            healthcheck=["CMD", "bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"]), self)
