"""commstack: reads the stack settings, then composes the components.

Provider SDKs a stack does not use are never imported (pulumi_cloudflare
alone costs seconds), so each optional half is imported where it is used.
"""

import pulumi

from components.settings import load_settings, stack_tags

settings = load_settings()  # raises before any resource exists if the config is wrong

import pulumi_docker as docker  # noqa: E402

from components.common import (container_memory_transformation, publish_address,  # noqa: E402
                               published_address_transformation, volume_name_transformation)

# Memory limits named in commstack:containerMemory replace the containers' defaults.
if settings.container_memory:
    pulumi.runtime.register_stack_transformation(container_memory_transformation(settings.container_memory))
# New stacks (commstack:volumeNames stack) name their volumes after themselves; older ones keep theirs.
if settings.volume_names == "stack":
    pulumi.runtime.register_stack_transformation(volume_name_transformation(pulumi.get_stack()))
# A loopback publicIp (dev) publishes every port on loopback only.
if publish_address(settings.edge.public_ip):
    pulumi.runtime.register_stack_transformation(published_address_transformation(publish_address(settings.edge.public_ip)))

from components.matrix.homeserver import Homeserver, HomeserverArgs  # noqa: E402
from components.matrix.proxy import Route  # noqa: E402

# An explicit provider only when the stack names a Docker host; otherwise the
# default provider uses the local socket or DOCKER_HOST.
docker_opts = (
    pulumi.ResourceOptions(provider=docker.Provider("docker-host", host=settings.docker_host))
    if settings.docker_host
    else pulumi.ResourceOptions()
)

dns_api_token = settings.edge.cloudflare_api_token
if settings.edge.cloudflare_scoped_dns_token:
    from components.edge.dns import DnsApiToken, DnsApiTokenArgs

    dns_api_token = DnsApiToken(
        "acme-dns-token",
        DnsApiTokenArgs(zone_name=settings.matrix.domain, api_token=settings.edge.cloudflare_api_token),
    ).value

# On the Docker target the Signal API sits behind the same reverse proxy as Matrix.
signal_upstream = signal_health_url = None
if settings.signal.enabled:
    from components.signal.backend import local_edge_upstream, local_health_url

    signal_upstream = local_edge_upstream(settings.signal)
    signal_health_url = local_health_url(settings.signal) if settings.monitoring.enabled else None
extra_routes = [Route(f"chat.{settings.matrix.domain}", signal_upstream)] if signal_upstream else []

_aws_provider = None


def aws_provider():
    """The one AWS provider (the Signal half and the backup bucket share it): aws:region, and every
    resource tagged with the project and stack, for cost reports and clean-up."""
    global _aws_provider
    if _aws_provider is None:
        import pulumi_aws as aws

        _aws_provider = aws.Provider(
            "aws",
            region=settings.signal.region or settings.backup.region,
            default_tags=aws.ProviderDefaultTagsArgs(tags=stack_tags(settings.stack)),
        )
    return _aws_provider


backup_repository = None
if settings.backup.enabled and settings.backup.target != "local":
    from components.matrix.backup import (BackupRepository, aws_repository_url, rest_credentials, rest_repository_url,
                                          s3_credentials, s3_repository_url)

    if settings.backup.target == "aws":
        from components.matrix.backup_bucket import BackupBucket, BackupBucketArgs

        bucket = BackupBucket(
            "matrix-backup-bucket",
            # The key works only from the Docker host's own address.
            BackupBucketArgs(name_prefix=f"commstack-{settings.stack}-matrix-backups", source_ip=settings.edge.public_ip),
            opts=pulumi.ResourceOptions(provider=aws_provider()),
        )
        backup_repository = BackupRepository(
            url=bucket.bucket_name.apply(lambda name: aws_repository_url(settings.backup.region, name)),
            credentials=s3_credentials(bucket.access_key_id, bucket.secret_access_key), region=settings.backup.region)
    elif settings.backup.target == "rest":
        # restic's rest-server in --append-only mode on another machine: this host adds snapshots, deletes none.
        backup_repository = BackupRepository(
            url=rest_repository_url(settings.backup.rest_url),
            credentials=rest_credentials(settings.backup.rest_username, settings.backup.rest_password),
            ca_certificate=settings.backup.rest_ca_certificate or None)
    else:
        backup_repository = BackupRepository(
            url=s3_repository_url(settings.backup.s3_endpoint, settings.backup.s3_bucket),
            credentials=s3_credentials(settings.backup.s3_access_key_id, settings.backup.s3_secret_access_key))

matrix = Homeserver(
    "matrix",
    HomeserverArgs(matrix=settings.matrix, edge=settings.edge, dns_api_token=dns_api_token, extra_routes=extra_routes,
                   backup=settings.backup, backup_repository=backup_repository,
                   postgres=settings.postgres, monitoring=settings.monitoring, signal_health_url=signal_health_url,
                   smtp=settings.smtp),
    opts=docker_opts,
)
dns_records = list(matrix.dns_records)

pulumi.export("serverName", matrix.server_name)
pulumi.export("publicIp", settings.edge.public_ip)  # every Matrix DNS name should answer it
pulumi.export("homeserverUrl", matrix.homeserver_url)
pulumi.export("elementUrl", matrix.element_url)
pulumi.export("turnUris", matrix.turn_uris)
pulumi.export("rtcTransports", matrix.rtc_transports)  # MatrixRTC: lk-jwt-service's URL, as Synapse announces it
pulumi.export("livekitUrl", matrix.livekit_url)
pulumi.export("livekitMediaPorts", matrix.livekit_media_ports)  # LiveKit's UDP range; doctor's media row checks it
pulumi.export("registrationSharedSecret", matrix.registration_shared_secret)
pulumi.export("createAdminCommand", matrix.create_admin_command)
pulumi.export("dockerHost", settings.docker_host)  # where create-admin runs `docker exec` (empty: the local engine)
pulumi.export("bridgeTokens", matrix.bridge_tokens)  # secret; `commstack doctor` pings each appservice
if matrix.proxy.certificate_pem is not None:
    # The generated certificate (public): what `doctor --stack` trusts, and what a client can pin.
    pulumi.export("tlsCertificate", matrix.proxy.certificate_pem)
if matrix.monitoring is not None:
    pulumi.export("alertRoom", matrix.monitoring.room_alias)  # where alerts arrive; doctor checks a test alert reaches it
    if matrix.monitoring.grafana_admin_password is not None:
        pulumi.export("grafanaUrl", f"https://{settings.matrix.matrix_host}/grafana/")
        pulumi.export("grafanaAdminPassword", matrix.monitoring.grafana_admin_password)  # secret; user `admin`
if matrix.backup is not None:
    pulumi.export("backupRepository", matrix.backup.repository_url)
    pulumi.export("backupRepositoryPassword", matrix.backup.repository_password)  # secret: keep a copy off the host
    # What `python -m commstack backup-prune --stack` keeps (an off-host repository is pruned from the admin's machine).
    pulumi.export("backupRetention", {"daily": settings.backup.keep_daily, "weekly": settings.backup.keep_weekly,
                                      "monthly": settings.backup.keep_monthly})

if settings.signal.enabled:
    from components.signal.backend import Backend, BackendArgs

    if settings.signal.target == "docker":
        signal_opts = docker_opts
    else:
        signal_opts = pulumi.ResourceOptions(provider=aws_provider())
    signal = Backend(
        "signal",
        BackendArgs(signal=settings.signal, edge=settings.edge, domain=settings.matrix.domain,
                    # The proxy's own network with Signal-Server (components/matrix/network.py web-<backend>).
                    edge_network=matrix.network.web[extra_routes[0].backend] if signal_upstream else None,
                    metrics_network=matrix.network.metrics.get("signal-server")),
        opts=signal_opts,
    )
    dns_records += signal.dns_records
    pulumi.export("signalPublicIp", signal.public_ip)
    pulumi.export("signalHostnames", signal.hostnames)
    # Answers 401 from Signal-Server itself when it is up (the seed's own smoke test).
    pulumi.export("signalHealthUrl", f"https://chat.{settings.matrix.domain}/v1/accounts/whoami")
    pulumi.export("signalUdTrustRoot", signal.ud_trust_root)
    pulumi.export("signalZkPublicParams", signal.zk_public_params)
    pulumi.export("signalClientInstructions", signal.client_instructions)
    pulumi.export("signalTarget", settings.signal.target)
    pulumi.export("signalLogsCommand", signal.logs_command)  # where doctor's hints send you

if settings.edge.cloudflare_dns:
    from components.edge.dns import Dns, DnsArgs

    Dns(
        "dns",
        DnsArgs(
            zone_name=settings.matrix.domain,
            api_token=settings.edge.cloudflare_api_token,
            records=dns_records,
            proxy_http=settings.edge.cloudflare_proxy_http,
        ),
    )
