"""The Signal half: composes storage, secrets, IAM, firewall, Redis, AppConfig and the host
(target aws), or the local containers (target docker), from one version data file.

The AWS-only modules (and so pulumi_aws) are imported inside the aws path: a docker stack never loads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

import pulumi

from components.edge.records import DnsRecordSpec
from components.settings import SIGNAL_SUBDOMAINS, EdgeSettings, SignalSettings
from components.signal import redis
from components.signal.host import REGISTRATION_TLS_HOST, TWILIO_SECRET_PARAMETER
from components.signal.local import (LOCAL_REGION, edge_upstream, REDIS_PORT, REGISTRATION_ALIAS, LocalBackend, LocalBackendArgs,
                                     redis_alias)
from components.signal.secrets import (TLS_KEY_PARAMETER, InternalTls, InternalTlsArgs, ServerSecrets,
                                       ServerSecretsArgs, bundle_parameter, config_parameter, public_parameter,
                                       public_path)
from components.signal.registration import verification_from_settings
from components.signal.server_config import (CONTAINER_BIND, INSTANCE_BIND, AppConfigNames, RegistrationEndpoint,
                                            render_server_config)
from components.signal.version import ServerVersion, load_version

# What each Signal hostname (components/settings.py SIGNAL_SUBDOMAINS) serves; Matrix owns matrix., element., turn.
SUBDOMAIN_PURPOSES = {"chat": "Signal-Server API and websocket", "storage": "storage-service (not run yet)",
                      "cdn": "CDN (attachments, avatars)", "cdn2": "CDN 2 (attachments v3)"}
assert tuple(SUBDOMAIN_PURPOSES) == SIGNAL_SUBDOMAINS, "describe every Signal hostname, in order"

# Signal-Android app/build.gradle.kts buildConfigField -> the public value (configs/signal/<ref>.yaml public_values).
CLIENT_BUILD_FIELDS = {"UNIDENTIFIED_SENDER_TRUST_ROOTS": "udTrustRoot",
                       "ZKGROUP_SERVER_PUBLIC_PARAMS": "zkServerPublic",
                       "GENERIC_SERVER_PUBLIC_PARAMS": "genericZkServerPublic"}
PENDING_FIRST_BOOT = ("pending first boot: run `pulumi up` again after the instance has booted "
                      "(or: {command})")
ON_DOCKER_HOST = "written by the server container at its first start; read it with: {command}"


@dataclass
class BackendArgs:
    signal: SignalSettings
    edge: EdgeSettings
    domain: str
    # Docker target: the reverse proxy's network, so it can route chat.<domain> to the server.
    edge_network: Optional[pulumi.Input[str]] = None
    # Docker target, monitoring on: blackbox_exporter's network to the server's health check.
    metrics_network: Optional[pulumi.Input[str]] = None


def local_health_url(signal: SignalSettings) -> Optional[str]:
    """Signal-Server's Dropwizard health check on the Docker target, as blackbox_exporter probes it over
    the metrics-signal-server network (None on AWS, where the instance is another host)."""
    if not signal.enabled or signal.target != "docker":
        return None
    from components.signal.local import health_url

    return health_url(load_version(signal.server_ref))


def local_edge_upstream(signal: SignalSettings) -> Optional[str]:
    """Where the reverse proxy sends chat.<domain> on the Docker target (None on AWS, where
    the instance's own nginx fronts the server)."""
    if not signal.enabled or signal.target != "docker":
        return None
    return edge_upstream(load_version(signal.server_ref))


def public_value_texts(names: Iterable[str], found: Mapping[str, str],
                       how_to_read: Mapping[str, str]) -> dict[str, str]:
    """Each public value as read back, or, while it does not exist yet, how to get it."""
    return {name: found[name] if found.get(name) else how_to_read[name] for name in names}


def client_instructions(domain: str, found: Mapping[str, str], how_to_read: Mapping[str, str]) -> str:
    """How to point a Signal-Android build at this server (buildConfigField names in app/build.gradle.kts)."""
    lines = ["In Signal-Android app/build.gradle.kts set:",
             f'  SIGNAL_URL = "https://chat.{domain}"',
             f'  STORAGE_URL = "https://storage.{domain}"',
             f'  SIGNAL_CDN_URL = "https://cdn.{domain}"',
             f'  SIGNAL_CDN2_URL = "https://cdn2.{domain}"']
    for field, name in CLIENT_BUILD_FIELDS.items():
        lines.append(f'  {field} = "{found[name]}"' if found.get(name) else f"  {field} = ({how_to_read[name]})")
    lines.append("The three values are generated at the server's first boot and never change afterwards.")
    return "\n".join(lines)


class Backend(pulumi.ComponentResource):
    dns_records: list[DnsRecordSpec]
    public_ip: pulumi.Output
    hostnames: list[str]
    ud_trust_root: pulumi.Output  # the value once the server has booted, else how to get it
    zk_public_params: pulumi.Output  # {"zkgroup": ..., "generic": ...}, likewise
    client_instructions: pulumi.Output
    config_yml: pulumi.Output  # the rendered config.yml (no secrets: they are secret:// references or patched in)
    components: dict[str, pulumi.ComponentResource]

    def __init__(self, name: str, args: BackendArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("commstack:signal:Backend", name, None, opts)
        signal = args.signal
        version = load_version(signal.server_ref)
        stack = pulumi.get_stack()
        name_prefix = f"{stack}-{name}"
        chat_host = f"chat.{args.domain}"
        rs = version.registration_service

        # Always TLS, trusting exactly the internal certificate: on AWS nginx presents it on loopback in front of
        # registration-service; on Docker (no nginx) registration-service presents it itself.
        if signal.target == "aws":
            registration = (REGISTRATION_TLS_HOST, rs["tls_port"])
        else:
            registration = (REGISTRATION_ALIAS, rs["port"])
        internal_tls = InternalTls(f"{name}-internal-tls", InternalTlsArgs(dns_names=[registration[0]]),
                                   opts=pulumi.ResourceOptions(parent=self))

        if signal.target == "aws":
            self.public_ip, found, how_to_read = self._aws(name, args, version, name_prefix, chat_host, internal_tls,
                                                           registration)
        else:
            self.public_ip, found, how_to_read = self._docker(name, args, version, name_prefix, internal_tls,
                                                              registration)
        # Where Signal-Server's log is, for `doctor`'s hints: a container on Docker, a unit on AWS.
        self.logs_command = ("journalctl -u signal-server (on the instance)" if signal.target == "aws"
                             else f"docker logs {self.components['local'].server_container_name} (on the Docker host)")

        self.hostnames = [f"{sub}.{args.domain}" for sub in SIGNAL_SUBDOMAINS]
        # Never behind Cloudflare's proxy: clients pin the server's own certificate, and chat. carries gRPC.
        self.dns_records = [DnsRecordSpec(fqdn=f"{sub}.{args.domain}", type="A", content=self.public_ip, http=False,
                                          purpose=f"Signal: {SUBDOMAIN_PURPOSES[sub]}") for sub in SIGNAL_SUBDOMAINS]
        texts = found.apply(lambda values: public_value_texts(version.public_values, values, how_to_read))
        self.ud_trust_root = texts.apply(lambda t: t["udTrustRoot"])
        self.zk_public_params = texts.apply(lambda t: {"zkgroup": t["zkServerPublic"],
                                                       "generic": t["genericZkServerPublic"]})
        self.client_instructions = found.apply(lambda values: client_instructions(args.domain, values, how_to_read))
        self.register_outputs({"public_ip": self.public_ip, "hostnames": self.hostnames,
                               "ud_trust_root": self.ud_trust_root, "zk_public_params": self.zk_public_params,
                               "client_instructions": self.client_instructions})

    def _aws(self, name, args, version: ServerVersion, name_prefix, chat_host, internal_tls, registration):
        import pulumi_aws as aws

        from components.edge.firewall import Firewall, FirewallArgs
        from components.signal.appconfig import DynamicConfig, DynamicConfigArgs
        from components.signal.host import SignalHost, SignalHostArgs
        from components.signal.iam import InstanceRole, InstanceRoleArgs, s3_object_arn
        from components.signal.secrets import first_boot_parameters, parameter_arn
        from components.signal.storage import Buckets, BucketsArgs, Tables, TablesArgs

        signal = args.signal
        region = signal.region
        parameter_prefix = f"/commstack/{pulumi.get_stack()}/{name}"
        opts = pulumi.ResourceOptions(parent=self)
        verification = verification_from_settings(signal)
        operator_secrets = ({TWILIO_SECRET_PARAMETER: signal.twilio_api_key_secret}
                            if verification.needs_secrets_file else {})
        secrets = ServerSecrets(f"{name}-secrets", ServerSecretsArgs(version, internal_tls.private_key_pem,
                                                                     parameter_prefix, operator_secrets), opts=opts)
        tables = Tables(f"{name}-tables", TablesArgs(version.tables, name_prefix, signal.restored_tables), opts=opts)
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
            table_arns=tables.arns, index_arns=tables.index_arns, bucket_arns=buckets.arns, ssm_read_arns=readable,
            ssm_write_arns=written, appconfig_arns=dynamic.profile_arn.apply(lambda arn: [arn]),
            jar_object_arn=s3_object_arn(signal.jar_s3_uri) if signal.jar_s3_uri else None), opts=opts)

        config_yml = pulumi.Output.all(tables.names, buckets.names, redis_uri, internal_tls.cert_pem,
                                       dynamic.application_name, dynamic.environment_name,
                                       dynamic.profile_name).apply(
            lambda a: render_server_config(
                version, region=region, domain=args.domain, table_names=a[0], bucket_names=a[1],
                redis_cluster_uri=a[2], redis_pubsub_uri=a[2],
                registration=RegistrationEndpoint(*registration, a[3]),
                app_config=AppConfigNames(a[4], a[5], a[6]), internal_ca_pem=a[3], bind=INSTANCE_BIND))
        self.config_yml = config_yml
        host = SignalHost(f"{name}-host", SignalHostArgs(
            version=version, instance_type=signal.instance_type, server_repo=signal.server_repo,
            server_ref=signal.server_ref, jar_s3_uri=signal.jar_s3_uri, host=chat_host,
            acme_email=args.edge.acme_email, region=region, parameter_prefix=parameter_prefix,
            security_group_id=firewall.security_group.id, instance_profile_name=role.profile.name,
            config_yml=config_yml, tls_cert_pem=internal_tls.cert_pem,
            redis_in_containers=signal.redis == "containers", verification=verification), opts=opts)
        self.components = {"secrets": secrets, "tables": tables, "buckets": buckets, "appconfig": dynamic,
                           "firewall": firewall, "iam": role, "host": host}
        # First boot writes the public values after `pulumi up` returns: the first up finds none (the
        # outputs say so), every later up or refresh reads them. They are public String parameters,
        # so they are outputs in the clear even though the provider marks the lookup's values sensitive.
        stored = aws.ssm.get_parameters_by_path_output(path=public_path(parameter_prefix), with_decryption=False,
                                                       opts=pulumi.InvokeOptions(parent=self))
        found = pulumi.Output.unsecret(stored.apply(
            lambda result: {n.rsplit("/", 1)[1]: v for n, v in zip(result.names or [], result.values or [])}))
        how_to_read = {n: PENDING_FIRST_BOOT.format(
            command=f"aws ssm get-parameter --region {region} --name {public_parameter(parameter_prefix, n)} "
                    "--query Parameter.Value --output text") for n in version.public_values}
        return host.public_ip, found, how_to_read

    def _docker(self, name, args, version: ServerVersion, name_prefix, internal_tls, registration):
        opts = pulumi.ResourceOptions(parent=self)
        secrets = ServerSecrets(f"{name}-secrets", ServerSecretsArgs(version, internal_tls.private_key_pem), opts=opts)
        program_values = pulumi.Output.all(**{bundle_parameter("", k).lstrip("/"): v
                                              for k, v in secrets.values.items()},
                                           **{config_parameter("", path).lstrip("/"): v
                                              for path, v in secrets.config_values.items()},
                                           **{TLS_KEY_PARAMETER: internal_tls.private_key_pem})
        table_names = {t.config: f"{name_prefix}-{t.name}" for t in version.tables}
        # S3 is not served locally (see aws_clients in the data file); the sections keep names so the config is complete.
        bucket_names = {b.config: f"{name_prefix}-{b.name}" for b in version.buckets}
        redis_uri = redis.cluster_uri(redis_alias(0), REDIS_PORT)
        app_config = AppConfigNames(name_prefix, "local", "dynamic")  # served by aws-local under these names
        config_yml = internal_tls.cert_pem.apply(lambda pem: render_server_config(
            version, region=LOCAL_REGION, domain=args.domain, table_names=table_names, bucket_names=bucket_names,
            redis_cluster_uri=redis_uri, redis_pubsub_uri=redis_uri,
            registration=RegistrationEndpoint(*registration, pem), app_config=app_config, internal_ca_pem=pem,
            bind=CONTAINER_BIND))
        self.config_yml = config_yml
        local = LocalBackend(f"{name}-local", LocalBackendArgs(
            version=version, server_repo=args.signal.server_repo, server_ref=args.signal.server_ref,
            name_prefix=name_prefix, config_yml=config_yml, tls_cert_pem=internal_tls.cert_pem,
            program_values=program_values, app_config=app_config, region=LOCAL_REGION,
            edge_network=args.edge_network, metrics_network=args.metrics_network,
            verification=verification_from_settings(args.signal),
            twilio_api_key_secret=args.signal.twilio_api_key_secret), opts=opts)
        self.components = {"secrets": secrets, "local": local}
        # The values sit in the server container's volume, which the program cannot read.
        how_to_read = {n: ON_DOCKER_HOST.format(
            command=f"docker exec {local.server_container_name} cat /var/lib/signal/secrets/public/{n}")
            for n in version.public_values}
        return pulumi.Output.from_input(args.edge.public_ip), pulumi.Output.from_input({}), how_to_read
