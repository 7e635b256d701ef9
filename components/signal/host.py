"""The EC2 host of Signal-Server: Elastic IP, data volume, instance, and its cloud-init.

cloud-init is built as data and holds no secret: the secrets bundle is assembled from SSM at
every service start (configs/signal/signal_secrets.py), and values only the server's own jar
can make are generated there on first boot and stored in SSM for every later boot.

The renderers are pure and shared with the docker target, so pulumi_aws is imported only
where the instance is made.
"""

from __future__ import annotations

import base64
import gzip
import json
import string
from dataclasses import dataclass
from typing import Optional

import pulumi

from components.common import child, image, stateful_child, to_yaml
from components.quoting import nginx_word, shell_line, shell_word, systemd_environment, systemd_exec_word, systemd_text
from components.signal import redis
from components.signal import registration as reg
from components.signal.registration import Verification
from components.signal.version import ServerVersion, template

OPT = "/opt/signal"
ETC = "/etc/signal"
DATA = "/srv/signal-data"  # the persistent EBS volume: certificates and Redis data
DATA_DEVICE = "/dev/sdf"
DEBIAN_OWNER = "136693071363"  # Debian's AWS account (https://wiki.debian.org/Cloud/AmazonEC2Image)
DEBIAN_12_AMI_PATTERN = "debian-12-amd64-*"
# EC2 refuses user data over 16 KB (before base64): https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/user-data.html
USER_DATA_LIMIT = 16384
# Four attempts an hour stay under Let's Encrypt's five failed validations per hostname an hour.
CERTBOT_RETRY_SECONDS = 900
# Signal-Server reaches registration-service through nginx on loopback, under the internal certificate's name.
REGISTRATION_TLS_HOST = "localhost"
# The Twilio API key secret in SSM, under the parameter prefix; assembled into the service's secrets file.
TWILIO_SECRET_PARAMETER = "registration/twilio-api-key-secret"
# Instance metadata (IMDSv2) answers only on the instance itself: a response to a token request dies one hop
# out, so nothing in a bridge-networked container (registration-service) can get the role's credentials.
IMDS_HOP_LIMIT = 1
IMDS_ADDRESS = "169.254.169.254"
# The service user Signal-Server runs as, and the unprivileged one that builds its jar at first boot (root only
# installs the finished jar): a build runs the pinned source's Maven plugins, which need no root.
SERVER_USER = "signal"
BUILD_USER = "signal-build"
BUILD_HOME = "/var/lib/signal-build"
# nginx's worker user (Debian): the only user that may connect to registration-service's plaintext gRPC port.
NGINX_USER = "www-data"
GRPC_FIREWALL_CHAIN = "COMMSTACK-REGISTRATION"
# The redis image's user (uid 999 in the Debian images): the instance's Redis containers run as it, not as root.
REDIS_UID = 999

PATHS = {
    "tool": f"{OPT}/signal_secrets.py",
    "generic_zk_source": f"{OPT}/GenericZkParams.java",
    "manifest": f"{ETC}/secrets-manifest.json",
    "jar": f"{OPT}/TextSecureServer.jar",
    "bundle": f"{ETC}/secrets-bundle.yml",
    "config_in": f"{ETC}/config.base.yml",
    "config_out": f"{ETC}/config.yml",
    "tls_cert": f"{ETC}/registration/cert.pem",
    "tls_key": f"{ETC}/registration/key.pem",
    "registration_yml": f"{ETC}/registration/application.yml",
    "registration_secrets": f"{ETC}/registration/secrets.yml",
    "compose": f"{OPT}/compose.yml",
}


def _render(name: str, **values) -> str:
    return string.Template(template(name)).substitute(**values)


def render_nginx_conf(host: str, app_port: int, grpc_port: int, grpc_tls_port: int) -> str:
    """chat.<domain> -> Signal-Server, and the loopback-only TLS gRPC front of registration-service."""
    return _render("nginx-signal.conf.tmpl", host=nginx_word(host), app_port=app_port, grpc_port=grpc_port,
                   grpc_tls_port=grpc_tls_port, grpc_host=REGISTRATION_TLS_HOST, internal_cert=PATHS["tls_cert"],
                   internal_key=PATHS["tls_key"])


def render_systemd_unit(version_ref: str, region: str, heap: str = "2g") -> str:
    return _render("signal-server.service.tmpl", version=systemd_text(version_ref), tool=PATHS["tool"],
                   manifest=PATHS["manifest"], bundle=PATHS["bundle"], jar=PATHS["jar"], config=PATHS["config_out"],
                   heap=heap, region_environment=systemd_environment("AWS_DEFAULT_REGION", region))


def certbot_script(host: str, email: str) -> str:
    """The shell line certbot runs under: every value one quoted word (an e-mail may hold `'`, `$`, ...)."""
    certificate = f"/etc/letsencrypt/live/{host}/fullchain.pem"
    return (f"test -f {shell_word(certificate)} || " + shell_line([
        "certbot", "certonly", "--standalone", "--non-interactive", "--agree-tos", "-m", email, "-d", host,
        "--pre-hook", "systemctl stop nginx", "--post-hook", "systemctl start nginx"]))


def render_certbot_unit(host: str, email: str) -> str:
    return _render("signal-certbot.service.tmpl", host=systemd_text(host), data=DATA,
                   exec_start=f"/bin/sh -c {systemd_exec_word(certbot_script(host, email))}",
                   retry_seconds=CERTBOT_RETRY_SECONDS)


def encode_user_data(cloud_config: str) -> str:
    """gzip (cloud-init unpacks it) then base64, for the instance's user_data_base64. A fixed mtime keeps the
    bytes stable, so an unchanged cloud-config never replaces the instance."""
    packed = gzip.compress(cloud_config.encode(), compresslevel=9, mtime=0)
    if len(packed) > USER_DATA_LIMIT:
        raise ValueError(f"the Signal instance's user data is {len(packed)} bytes gzipped; EC2 allows {USER_DATA_LIMIT}")
    return base64.b64encode(packed).decode()


def secrets_manifest(version: ServerVersion, *, store: str, prefix: str, paths: dict,
                     program_values: Optional[str] = None, region: Optional[str] = None,
                     registration_secrets: Optional[dict[str, str]] = None, server_user: Optional[str] = None) -> dict:
    """What signal_secrets.py needs: entry names and sources, never values. `registration_secrets`: the
    registration-service secrets file's dotted keys -> store names (written 0600 for its unprivileged user).
    `server_user`: who owns the two files Signal-Server reads (the bundle and config.yml); every other file
    keeps its own owner (nginx's TLS key root, registration-service's secrets its user)."""
    manifest = {
        "store": store, "prefix": prefix, "region": region, "program_values": program_values,
        "jar": paths["jar"], "generic_zk_source": paths["generic_zk_source"], "ud_key_id": version["ud_key_id"],
        "bundle": {e.key: {"source": e.source, "generator": e.generator, "standin": e.standin, "list": e.list}
                   for e in version.bundle},
        "public": {name: spec["generator"] for name, spec in version.public_values.items()},
        "config_patches": version["config_patches"],
        "tls_key": "tls/registration-key",
        "outputs": {k: paths[k] for k in ("bundle", "config_in", "config_out", "tls_key")},
    }
    if server_user:
        manifest["server_user"] = server_user
    if registration_secrets:
        manifest["registration_secrets"] = {"path": paths["registration_secrets"], "owner": reg.RUN_UID,
                                            "values": dict(registration_secrets)}
    return manifest


def registration_secret_sources(verification: Verification) -> dict[str, str]:
    """The registration-service secrets file's keys and where the instance reads each from."""
    return {"twilio.api-key-secret": TWILIO_SECRET_PARAMETER} if verification.needs_secrets_file else {}


def compose_file(version: ServerVersion, redis_in_containers: bool, verification: Verification) -> dict:
    rs = version.registration_service
    services = redis.compose_services(DATA) if redis_in_containers else {}
    volumes = [f"{PATHS['registration_yml']}:{reg.CONFIG_PATH}:ro"]
    if verification.needs_secrets_file:
        volumes.append(f"{PATHS['registration_secrets']}:{reg.SECRETS_PATH}:ro")
    services["registration-service"] = {
        "build": {"context": f"{OPT}/registration", "args": {
            "BUILD_IMAGE": image("registration-build"), "RUNTIME_IMAGE": image("signal-runtime"),
            "REPO": rs["repo"], "COMMIT": rs["commit"]}},
        # Its own bridge network (compose's default), never the host's: with the IMDS hop limit of 1 it has no
        # route to the instance role's credentials. Published on loopback only, for nginx's TLS front.
        "ports": [f"127.0.0.1:{rs['port']}:{rs['port']}"],
        "user": f"{reg.RUN_UID}:{reg.RUN_UID}",
        "environment": {"MICRONAUT_ENVIRONMENTS": verification.environment,
                        "MICRONAUT_CONFIG_FILES": verification.config_files},
        "read_only": True, "tmpfs": ["/tmp"], "cap_drop": ["ALL"], "security_opt": ["no-new-privileges:true"],
        "restart": "unless-stopped",
        # Only its configuration: the internal TLS key is nginx's, not registration-service's.
        "volumes": volumes,
    }
    assert rs["port"] not in redis.node_ports()
    return {"version": "2.4", "services": services}


def server_checkout_command(version: ServerVersion, server_repo: str, server_ref: str, src: str) -> str:
    """Clones Signal-Server into `src` and checks out the data file's commit; fails unless `server_ref` names
    that very commit (a moved or re-pointed tag, or a fork whose tag differs, stops the build)."""
    commit = version["commit"]
    return (f"git clone --no-checkout {shell_word(server_repo)} {src} && cd {src} && "
            f"git checkout --detach {commit} && "
            f"test \"$(git rev-parse --verify {shell_word(server_ref + '^{commit}')})\" = {commit}")


def verified_maven_steps(version: ServerVersion, directory: str) -> str:
    """The data file's Maven (`maven`) into `directory`, from Maven Central, checked against its pinned SHA-512
    before anything in it runs; a mismatch stops the build."""
    maven = version["maven"]
    archive = f"{directory}.tar.gz"
    return (f"curl -fsSL --retry 3 -o {archive} {shell_word(maven['url'])} && "
            f"echo {shell_word(maven['sha512'] + '  ' + archive)} | sha512sum -c - && "
            f"mkdir -p {directory} && tar -xzf {archive} -C {directory} --strip-components=1 && rm -f {archive}")


def server_build_steps(version: ServerVersion, maven_dir: str = "/tmp/maven") -> str:
    """In the checked-out source: the verified Maven, our build patch (the data file's `build_patch`), then the
    build with that Maven (never the source's own unverified wrapper)."""
    return (f"{verified_maven_steps(version, maven_dir)} && {version['build_patch']} && "
            f"export PATH={maven_dir}/bin:\"$PATH\" && {version['build']}")


def server_build_command(version: ServerVersion, server_repo: str, server_ref: str) -> str:
    """At first boot: the checkout and build as BUILD_USER in its own home; root only installs the jar."""
    src = f"{BUILD_HOME}/src"
    build = (f"{server_checkout_command(version, server_repo, server_ref, src)} && "
             f"{server_build_steps(version, f'{BUILD_HOME}/maven')}")
    return (f"install -d -o {BUILD_USER} -g {BUILD_USER} -m 0750 {BUILD_HOME} && "
            f"runuser -u {BUILD_USER} -- env HOME={BUILD_HOME} sh -c {shell_word(build)} && "
            f"install -m 0644 -o root -g root {src}/{version['jar']} {PATHS['jar']}")


def render_cloud_init(version: ServerVersion, *, server_repo: str, server_ref: str, jar_s3_uri: str, host: str,
                      acme_email: str, region: str, parameter_prefix: str, config_yml: str, tls_cert_pem: str,
                      data_volume_id: str, redis_in_containers: bool, verification: Verification) -> str:
    """#cloud-config for the instance. Every input is public; tests assert no secret reaches it."""
    rs = version.registration_service
    ports = version.server_ports
    manifest = secrets_manifest(version, store="ssm", prefix=parameter_prefix, paths=PATHS, region=region,
                                registration_secrets=registration_secret_sources(verification),
                                server_user=SERVER_USER)
    files = [
        (PATHS["tool"], template("signal_secrets.py"), "0755"),
        (PATHS["generic_zk_source"], template("GenericZkParams.java"), "0644"),
        (PATHS["manifest"], json.dumps(manifest, indent=2), "0644"),
        (PATHS["config_in"], config_yml, "0640"),
        (PATHS["tls_cert"], tls_cert_pem, "0644"),
        # Plaintext inside its container, published on loopback only: nginx terminates TLS for it (render_nginx_conf).
        (PATHS["registration_yml"], reg.render_registration_config(rs["port"], verification), "0644"),
        (f"{OPT}/registration/Dockerfile", template("Dockerfile.registration"), "0644"),
        (f"{OPT}/registration/CommstackSelfHosted.java", template("CommstackSelfHosted.java"), "0644"),
        (PATHS["compose"], to_yaml(compose_file(version, redis_in_containers, verification)), "0644"),
        ("/etc/systemd/system/signal-server.service", render_systemd_unit(server_ref, region), "0644"),
        ("/etc/systemd/system/signal-redis.service", _compose_unit(region, version), "0644"),
        ("/etc/systemd/system/signal-certbot.service", render_certbot_unit(host, acme_email), "0644"),
        ("/etc/nginx/sites-available/signal.conf",
         render_nginx_conf(host, ports["app"], rs["port"], rs["tls_port"]), "0644"),
        (f"{OPT}/mount-data.sh", _mount_script(data_volume_id), "0755"),
    ]
    if jar_s3_uri:
        fetch_jar = shell_line(["aws", "s3", "cp", "--region", region, jar_s3_uri, PATHS["jar"]])
    else:
        fetch_jar = server_build_command(version, server_repo, server_ref)
    document = {
        "package_update": True,
        "packages": [f"openjdk-{version['java']}-jdk-headless", "git", "curl", "docker.io", "docker-compose", "nginx",
                     "certbot", "python3-boto3", "python3-yaml", "awscli", "openssl"],
        "users": ["default", {"name": SERVER_USER, "system": True, "shell": "/usr/sbin/nologin"},
                  {"name": BUILD_USER, "system": True, "shell": "/usr/sbin/nologin", "homedir": BUILD_HOME}],
        "write_files": [{"path": p, "content": c, "permissions": m} for p, c, m in files],
        "runcmd": [
            f"{OPT}/mount-data.sh",
            f"mkdir -p {DATA}/letsencrypt && rm -rf /etc/letsencrypt && ln -s {DATA}/letsencrypt /etc/letsencrypt",
            ["sh", "-c", fetch_jar],
            "ln -sf /etc/nginx/sites-available/signal.conf /etc/nginx/sites-enabled/signal.conf",
            "rm -f /etc/nginx/sites-enabled/default",
            "systemctl daemon-reload",
            "systemctl enable --now docker signal-redis.service",
            "systemctl enable --now signal-server.service",
            # Retries in the background until the certificate is issued, then (re)starts nginx.
            "systemctl enable --now --no-block signal-certbot.service",
        ],
    }
    return "#cloud-config\n" + to_yaml(document)


# docker.service creates the DOCKER-USER chain, which filters everything containers send through the host.
IMDS_FIREWALL = (f"iptables -C DOCKER-USER -d {IMDS_ADDRESS}/32 -j REJECT 2>/dev/null || "
                 f"iptables -I DOCKER-USER -d {IMDS_ADDRESS}/32 -j REJECT")


def grpc_firewall(port: int) -> str:
    """registration-service's plaintext gRPC port answers nginx's TLS front only. It is published on loopback,
    where any local process could reach it (and micronaut-grpc serves no Unix socket), so the kernel refuses every
    connection to it that is not nginx's (owner match in OUTPUT, which sees local processes): docker-proxy, which
    relays nginx's connection into the container as root, passes; so does anything else root, which could stop
    the firewall anyway. Idempotent: the chain is rebuilt and hooked in once."""
    chain = GRPC_FIREWALL_CHAIN
    return (f"iptables -N {chain} 2>/dev/null || iptables -F {chain}; "
            f"iptables -A {chain} -m owner --uid-owner {NGINX_USER} -j RETURN && "
            f"iptables -A {chain} -m owner --uid-owner root -j RETURN && "
            f"iptables -A {chain} -j REJECT --reject-with tcp-reset && "
            f"{{ iptables -C OUTPUT -p tcp --dport {port} -j {chain} 2>/dev/null || "
            f"iptables -I OUTPUT -p tcp --dport {port} -j {chain}; }}")


def redis_data_dirs_command() -> str:
    """The Redis containers run as the image's user, so their data directories on the data volume belong to it
    (the redis entrypoint chowned them itself when it ran as root; new ones are made here)."""
    dirs = " ".join(f"{DATA}/redis/{port}" for port in redis.node_ports())
    return f"install -d -o {REDIS_UID} -g {REDIS_UID} -m 0700 {dirs} && chown -R {REDIS_UID}:{REDIS_UID} {DATA}/redis"


def _compose_unit(region: str, version: ServerVersion) -> str:
    return (
        "[Unit]\nDescription=Redis cluster and registration-service (docker-compose)\nRequires=docker.service\n"
        "After=docker.service\n"
        # Redis keeps its data on the data volume: never on the root disk when the volume did not mount.
        f"RequiresMountsFor={DATA}\n"
        "\n[Service]\nType=oneshot\nRemainAfterExit=yes\nWorkingDirectory=/opt/signal\n"
        # SSM or the image build can fail transiently at boot (network, IAM not yet propagated): retry.
        "Restart=on-failure\nRestartSec=30\n"
        f"Environment={systemd_environment('AWS_DEFAULT_REGION', region)}\n"
        f"ExecStartPre=/usr/bin/python3 {PATHS['tool']} first-boot {PATHS['manifest']}\n"
        f"ExecStartPre=/usr/bin/python3 {PATHS['tool']} assemble {PATHS['manifest']}\n"
        # Belt and braces with the hop limit: no container reaches the instance metadata service.
        f"ExecStartPre=/bin/sh -c '{IMDS_FIREWALL}'\n"
        f"ExecStartPre=/bin/sh -c '{grpc_firewall(version.registration_service['port'])}'\n"
        f"ExecStartPre=/bin/sh -c '{redis_data_dirs_command()}'\n"
        f"ExecStart=/usr/bin/docker-compose -f {PATHS['compose']} up -d --build\n"
        f"ExecStop=/usr/bin/docker-compose -f {PATHS['compose']} stop\n\n[Install]\nWantedBy=multi-user.target\n"
    )


def _mount_script(volume_id: str) -> str:
    """Mounts the data volume; formats it only when it has no filesystem (a new volume)."""
    nvme = f"/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{volume_id.replace('-', '')}"
    return (
        "#!/bin/sh\nset -e\n"
        f"for i in $(seq 60); do for d in {nvme} /dev/xvdf {DATA_DEVICE}; do [ -e $d ] && DEV=$d && break 2; done; "
        "sleep 5; done\n"
        'blkid "$DEV" || mkfs.ext4 -L signal-data "$DEV"\n'
        f"mkdir -p {DATA}\n"
        f"grep -q signal-data /etc/fstab || echo 'LABEL=signal-data {DATA} ext4 defaults,nofail 0 2' >> /etc/fstab\n"
        f"mountpoint -q {DATA} || mount {DATA}\n"
    )


def offered_zone(instance_type: str, zones, offered) -> str:
    """The first of `zones` (available, in AWS's order) in which `instance_type` is offered."""
    for zone in zones or ():
        if zone in set(offered or ()):
            return zone
    raise ValueError(f"EC2 offers {instance_type} in none of this region's available zones ({', '.join(zones or ())}); "
                     "choose another type: pulumi config set commstack:signalInstanceType t3.large")


@dataclass
class SignalHostArgs:
    version: ServerVersion
    instance_type: str
    server_repo: str
    server_ref: str
    jar_s3_uri: str
    host: str  # chat.<domain>
    acme_email: str
    region: str
    parameter_prefix: str
    security_group_id: pulumi.Input[str]
    instance_profile_name: pulumi.Input[str]
    config_yml: pulumi.Input[str]
    tls_cert_pem: pulumi.Input[str]
    redis_in_containers: bool
    verification: Verification
    data_volume_gb: int = 20


class SignalHost(pulumi.ComponentResource):
    instance: pulumi.CustomResource  # aws.ec2.Instance
    eip: pulumi.CustomResource  # aws.ec2.Eip
    public_ip: pulumi.Output
    user_data: pulumi.Output  # the #cloud-config text
    user_data_base64: pulumi.Output  # what the instance is given (encode_user_data)

    def __init__(self, name: str, args: SignalHostArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("commstack:signal:SignalHost", name, None, opts)
        import pulumi_aws as aws

        ami = aws.ec2.get_ami_output(most_recent=True, owners=[DEBIAN_OWNER],
                                     filters=[aws.ec2.GetAmiFilterArgs(name="name", values=[DEBIAN_12_AMI_PATTERN]),
                                              aws.ec2.GetAmiFilterArgs(name="architecture", values=["x86_64"])],
                                     opts=pulumi.InvokeOptions(parent=self))
        # One AZ for the instance and its volume: the first available one where the instance type is offered
        # (not every type is offered in every zone, and names[0] may not have it). The volume keeps the zone it
        # was made in (ignore_changes: a later choice never moves the data), and the instance follows the volume.
        zones = aws.get_availability_zones_output(state="available", opts=pulumi.InvokeOptions(parent=self))
        offered = aws.ec2.get_instance_type_offerings_output(
            location_type="availability-zone",
            filters=[aws.ec2.GetInstanceTypeOfferingsFilterArgs(name="instance-type", values=[args.instance_type])],
            opts=pulumi.InvokeOptions(parent=self))
        zone = pulumi.Output.all(zones.names, offered.locations).apply(
            lambda found: offered_zone(args.instance_type, found[0], found[1]))
        volume = aws.ebs.Volume(f"{name}-data", availability_zone=zone, size=args.data_volume_gb, type="gp3",
                                encrypted=True, opts=stateful_child(self, ignore_changes=["availabilityZone"]))
        self.user_data = pulumi.Output.all(args.config_yml, args.tls_cert_pem, volume.id).apply(
            lambda a: render_cloud_init(
                args.version, server_repo=args.server_repo, server_ref=args.server_ref, jar_s3_uri=args.jar_s3_uri,
                host=args.host, acme_email=args.acme_email, region=args.region,
                parameter_prefix=args.parameter_prefix, config_yml=a[0], tls_cert_pem=a[1], data_volume_id=a[2],
                redis_in_containers=args.redis_in_containers, verification=args.verification))
        self.user_data_base64 = self.user_data.apply(encode_user_data)
        self.instance = aws.ec2.Instance(
            f"{name}-instance", ami=ami.id, instance_type=args.instance_type, availability_zone=volume.availability_zone,
            iam_instance_profile=args.instance_profile_name, vpc_security_group_ids=[args.security_group_id],
            user_data_base64=self.user_data_base64, user_data_replace_on_change=True,
            # IMDSv2 only (no simple SSRF), answering the instance itself only (IMDS_HOP_LIMIT).
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(http_tokens="required",
                                                                 http_put_response_hop_limit=IMDS_HOP_LIMIT),
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(volume_size=30, volume_type="gp3", encrypted=True),
            tags={"Name": f"{name}-signal-server"},
            # A newer Debian AMI must not replace the server; a replacement is a deliberate `up --replace`.
            # Any other replacement (new user data: a Signal version, acmeEmail, an image tag) deletes the
            # old instance first: the data volume can attach to only one instance, and a new one created
            # beside the old could not take it over (pulumi/pulumi-aws#2769).
            opts=child(self, ignore_changes=["ami"], delete_before_replace=True))
        # Detached only once the old instance has stopped (its filesystems unmounted cleanly).
        aws.ec2.VolumeAttachment(f"{name}-data-attachment", device_name=DATA_DEVICE, volume_id=volume.id,
                                 instance_id=self.instance.id, stop_instance_before_detaching=True,
                                 opts=child(self, delete_before_replace=True))
        self.eip = aws.ec2.Eip(f"{name}-eip", domain="vpc", opts=stateful_child(self))
        aws.ec2.EipAssociation(f"{name}-eip-association", allocation_id=self.eip.allocation_id,
                               instance_id=self.instance.id, opts=child(self))
        self.public_ip = self.eip.public_ip
        self.register_outputs({"public_ip": self.public_ip, "instance_id": self.instance.id})
