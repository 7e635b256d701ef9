"""commstack: reads the stack settings, then composes the components.

Provider SDKs a stack does not use are never imported (pulumi_cloudflare
alone costs seconds), so each optional half is imported where it is used.
"""

import pulumi

from components.settings import load_settings

settings = load_settings()  # raises before any resource exists if the config is wrong

import pulumi_docker as docker  # noqa: E402

from components.common import container_memory_transformation  # noqa: E402

# Memory limits named in commstack:containerMemory replace the containers' defaults.
if settings.container_memory:
    pulumi.runtime.register_stack_transformation(container_memory_transformation(settings.container_memory))

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
signal_upstream = None
if settings.signal.enabled:
    from components.signal.backend import local_edge_upstream

    signal_upstream = local_edge_upstream(settings.signal)
extra_routes = [Route(f"chat.{settings.matrix.domain}", signal_upstream)] if signal_upstream else []

matrix = Homeserver(
    "matrix",
    HomeserverArgs(matrix=settings.matrix, edge=settings.edge, dns_api_token=dns_api_token, extra_routes=extra_routes),
    opts=docker_opts,
)
dns_records = list(matrix.dns_records)

pulumi.export("serverName", matrix.server_name)
pulumi.export("publicIp", settings.edge.public_ip)  # every Matrix DNS name should answer it
pulumi.export("homeserverUrl", matrix.homeserver_url)
pulumi.export("elementUrl", matrix.element_url)
pulumi.export("turnUris", matrix.turn_uris)
pulumi.export("registrationSharedSecret", matrix.registration_shared_secret)
pulumi.export("createAdminCommand", matrix.create_admin_command)
pulumi.export("dockerHost", settings.docker_host)  # where create-admin runs `docker exec` (empty: the local engine)
pulumi.export("bridgeTokens", matrix.bridge_tokens)  # secret; `commstack doctor` pings each appservice
if matrix.proxy.certificate_pem is not None:
    # The generated certificate (public): what `doctor --stack` trusts, and what a client can pin.
    pulumi.export("tlsCertificate", matrix.proxy.certificate_pem)

if settings.signal.enabled:
    from components.signal.backend import Backend, BackendArgs

    if settings.signal.target == "docker":
        signal_opts = docker_opts
    else:
        import pulumi_aws as aws

        # Every AWS resource carries the project and stack, for cost reports and clean-up.
        signal_opts = pulumi.ResourceOptions(provider=aws.Provider(
            "aws",
            region=settings.signal.region,
            default_tags=aws.ProviderDefaultTagsArgs(tags={"commstack:project": "commstack",
                                                           "commstack:stack": settings.stack}),
        ))
    signal = Backend(
        "signal",
        BackendArgs(signal=settings.signal, edge=settings.edge, domain=settings.matrix.domain,
                    # The proxy's own network with Signal-Server (components/matrix/network.py web-<backend>).
                    edge_network=matrix.network.web[extra_routes[0].backend] if signal_upstream else None),
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
