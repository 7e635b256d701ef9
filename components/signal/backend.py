"""The Signal half: composes storage, secrets, IAM, firewall, Redis, AppConfig and the host
(target aws), or the local containers (target docker), from one version data file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_aws as aws

from components.edge.firewall import Firewall, FirewallArgs
from components.edge.records import DnsRecordSpec
from components.settings import EdgeSettings, SignalSettings
from components.signal import redis
from components.signal.appconfig import DynamicConfig, DynamicConfigArgs
from components.signal.host import SignalHost, SignalHostArgs
from components.signal.iam import InstanceRole, InstanceRoleArgs, s3_object_arn
from components.signal.local import (LOCAL_REGION, REDIS_PORT, REGISTRATION_ALIAS, LocalBackend, LocalBackendArgs,
                                     redis_alias)
from components.signal.secrets import (TLS_KEY_PARAMETER, InternalTls, InternalTlsArgs, ServerSecrets,
                                       ServerSecretsArgs, bundle_parameter, first_boot_parameters, parameter_arn,
                                       public_parameter)
from components.signal.server_config import AppConfigNames, RegistrationEndpoint, render_server_config
from components.signal.storage import Buckets, BucketsArgs, Tables, TablesArgs
from components.signal.version import ServerVersion, load_version

# Hostnames the Signal clients call (Signal-Android app/build.gradle.kts); Matrix owns matrix., element., turn.
SIGNAL_SUBDOMAINS = {"chat": "Signal-Server API and websocket", "storage": "storage-service (not run yet)",
                     "cdn": "CDN (attachments, avatars)", "cdn2": "CDN 2 (attachments v3)"}


@dataclass
class BackendArgs:
    signal: SignalSettings
    edge: EdgeSettings
    domain: str


def client_instructions(domain: str, ud_trust_root: str, zk_public: str, generic_public: str) -> str:
    """How to point a Signal-Android build at this server (buildConfigField names in app/build.gradle.kts)."""
    return "\n".join([
        "In Signal-Android app/build.gradle.kts set:",
        f'  SIGNAL_URL = "https://chat.{domain}"',
        f'  STORAGE_URL = "https://storage.{domain}"',
        f'  SIGNAL_CDN_URL = "https://cdn.{domain}"',
        f'  SIGNAL_CDN2_URL = "https://cdn2.{domain}"',
        f"  UNIDENTIFIED_SENDER_TRUST_ROOTS = output of: {ud_trust_root}",
        f"  ZKGROUP_SERVER_PUBLIC_PARAMS = output of: {zk_public}",
        f"  GENERIC_SERVER_PUBLIC_PARAMS = output of: {generic_public}",
        "The three values exist once the server has booted for the first time and never change afterwards.",
    ])


class Backend(pulumi.ComponentResource):
    dns_records: list[DnsRecordSpec]
    public_ip: pulumi.Output
    hostnames: list[str]
    ud_trust_root: pulumi.Output
    zk_public_params: pulumi.Output
    client_instructions: pulumi.Output
    config_yml: pulumi.Output  # the rendered config.yml (no secrets: they are secret:// references)
    components: dict[str, pulumi.ComponentResource]

    def __init__(self, name: str, args: BackendArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("commstack:signal:Backend", name, None, opts)
        signal = args.signal
        version = load_version(signal.server_ref)
        stack = pulumi.get_stack()
        name_prefix = f"{stack}-{name}"
        chat_host = f"chat.{args.domain}"

        # Signal-Server reaches registration-service directly over TLS, trusting exactly its certificate.
        registration_host = "localhost" if signal.target == "aws" else REGISTRATION_ALIAS
        internal_tls = InternalTls(f"{name}-internal-tls", InternalTlsArgs(dns_names=[registration_host]),
                                   opts=pulumi.ResourceOptions(parent=self))
        registration = (registration_host, version.registration_service["port"])

        if signal.target == "aws":
            self.public_ip, commands = self._aws(name, args, version, name_prefix, chat_host, internal_tls, registration)
        else:
            self.public_ip, commands = self._docker(name, args, version, name_prefix, internal_tls, registration)

        self.hostnames = [f"{sub}.{args.domain}" for sub in SIGNAL_SUBDOMAINS]
        # Never behind Cloudflare's proxy: clients pin the server's own certificate, and chat. carries gRPC.
        self.dns_records = [DnsRecordSpec(fqdn=f"{sub}.{args.domain}", type="A", content=self.public_ip, http=False,
                                          purpose=f"Signal: {why}") for sub, why in SIGNAL_SUBDOMAINS.items()]
        self.ud_trust_root = pulumi.Output.from_input(commands["udTrustRoot"])
        self.zk_public_params = pulumi.Output.from_input({"zkgroup": commands["zkServerPublic"],
                                                          "generic": commands["genericZkServerPublic"]})
        self.client_instructions = pulumi.Output.from_input(client_instructions(
            args.domain, commands["udTrustRoot"], commands["zkServerPublic"], commands["genericZkServerPublic"]))
        self.register_outputs({"public_ip": self.public_ip, "hostnames": self.hostnames,
                               "ud_trust_root": self.ud_trust_root, "zk_public_params": self.zk_public_params,
                               "client_instructions": self.client_instructions})

    def _aws(self, name, args, version: ServerVersion, name_prefix, chat_host, internal_tls, registration):
        signal = args.signal
        region = signal.region
        parameter_prefix = f"/commstack/{pulumi.get_stack()}/{name}"
        opts = pulumi.ResourceOptions(parent=self)
        secrets = ServerSecrets(f"{name}-secrets", ServerSecretsArgs(version, internal_tls.private_key_pem,
                                                                     parameter_prefix), opts=opts)
        tables = Tables(f"{name}-tables", TablesArgs(version.tables, name_prefix), opts=opts)
        buckets = Buckets(f"{name}-buckets", BucketsArgs(version.buckets, name_prefix), opts=opts)
        dynamic = DynamicConfig(f"{name}-appconfig", DynamicConfigArgs(), opts=opts)
        firewall = Firewall(f"{name}-firewall", FirewallArgs(admin_cidrs=signal.admin_cidrs), opts=opts)
        if signal.redis == "elasticache":
            redis_uri = redis.ElastiCacheRedis(f"{name}-redis", redis.ElastiCacheRedisArgs(
                client_security_group_id=firewall.security_group.id), opts=opts).uri
        else:
            redis_uri = pulumi.Output.from_input(redis.cluster_uri())

        account = aws.get_caller_identity_output(opts=pulumi.InvokeOptions(parent=self)).account_id
        written = account.apply(lambda acct: [parameter_arn(region, acct, n)
                                              for n in first_boot_parameters(version, parameter_prefix)])
        readable = pulumi.Output.all(written, *[p.arn for p in secrets.parameters]).apply(
            lambda a: list(a[0]) + list(a[1:]))
        role = InstanceRole(f"{name}-iam", InstanceRoleArgs(
            table_arns=tables.arns, bucket_arns=buckets.arns, ssm_read_arns=readable, ssm_write_arns=written,
            appconfig_arns=dynamic.profile_arn.apply(lambda arn: [arn]),
            jar_object_arn=s3_object_arn(signal.jar_s3_uri) if signal.jar_s3_uri else None), opts=opts)

        config_yml = pulumi.Output.all(tables.names, buckets.names, redis_uri, internal_tls.cert_pem,
                                       dynamic.application_name, dynamic.environment_name,
                                       dynamic.profile_name).apply(
            lambda a: render_server_config(
                version, region=region, domain=args.domain, table_names=a[0], bucket_names=a[1],
                redis_cluster_uri=a[2], redis_pubsub_uri=a[2],
                registration=RegistrationEndpoint(*registration, a[3]),
                app_config=AppConfigNames(a[4], a[5], a[6]), internal_ca_pem=a[3]))
        self.config_yml = config_yml
        host = SignalHost(f"{name}-host", SignalHostArgs(
            version=version, instance_type=signal.instance_type, server_repo=signal.server_repo,
            server_ref=signal.server_ref, jar_s3_uri=signal.jar_s3_uri, host=chat_host,
            acme_email=args.edge.acme_email, region=region, parameter_prefix=parameter_prefix,
            security_group_id=firewall.security_group.id, instance_profile_name=role.profile.name,
            config_yml=config_yml, tls_cert_pem=internal_tls.cert_pem,
            redis_in_containers=signal.redis == "containers"), opts=opts)
        self.components = {"secrets": secrets, "tables": tables, "buckets": buckets, "appconfig": dynamic,
                           "firewall": firewall, "iam": role, "host": host}
        # Public values are written on first boot, after `pulumi up` returns, so the outputs are
        # the commands that read them (reading them back here would fail on the first deployment).
        commands = {n: f"aws ssm get-parameter --region {region} --name {public_parameter(parameter_prefix, n)} "
                       "--query Parameter.Value --output text" for n in version.public_values}
        return host.public_ip, commands

    def _docker(self, name, args, version: ServerVersion, name_prefix, internal_tls, registration):
        opts = pulumi.ResourceOptions(parent=self)
        secrets = ServerSecrets(f"{name}-secrets", ServerSecretsArgs(version, internal_tls.private_key_pem), opts=opts)
        program_values = pulumi.Output.all(**{bundle_parameter("", k).lstrip("/"): v
                                              for k, v in secrets.values.items()},
                                           **{TLS_KEY_PARAMETER: internal_tls.private_key_pem})
        table_names = {t.config: f"{name_prefix}-{t.name}" for t in version.tables}
        # S3 is not served locally (see aws_clients in the data file); the sections keep names so the config is complete.
        bucket_names = {b.config: f"{name_prefix}-{b.name}" for b in version.buckets}
        redis_uri = redis.cluster_uri(redis_alias(0), REDIS_PORT)
        app_config = AppConfigNames(name_prefix, "local", "dynamic")  # served by aws-local under these names
        config_yml = internal_tls.cert_pem.apply(lambda pem: render_server_config(
            version, region=LOCAL_REGION, domain=args.domain, table_names=table_names, bucket_names=bucket_names,
            redis_cluster_uri=redis_uri, redis_pubsub_uri=redis_uri,
            registration=RegistrationEndpoint(*registration, pem), app_config=app_config, internal_ca_pem=pem))
        self.config_yml = config_yml
        local = LocalBackend(f"{name}-local", LocalBackendArgs(
            version=version, server_repo=args.signal.server_repo, server_ref=args.signal.server_ref,
            name_prefix=name_prefix, config_yml=config_yml, tls_cert_pem=internal_tls.cert_pem,
            program_values=program_values, app_config=app_config, region=LOCAL_REGION), opts=opts)
        self.components = {"secrets": secrets, "local": local}
        commands = {n: f"docker exec {name}-local-server cat /var/lib/signal/secrets/public/{n}"
                    for n in version.public_values}
        return pulumi.Output.from_input(args.edge.public_ip), commands
