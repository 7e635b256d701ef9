"""Small pieces every component uses: options, secrets, images, files, containers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import pulumi
import pulumi_docker as docker
import pulumi_random as random
import yaml

from components.paths import CONFIGS_DIR  # noqa: F401 - re-exported for callers
from components import pins

# Options for anything whose loss loses data: never deleted by `pulumi up`
# or `destroy`, and kept in the cloud if it ever leaves the program.
STATEFUL = {"protect": True, "retain_on_delete": True}


def child(parent: pulumi.Resource, **kwargs: Any) -> pulumi.ResourceOptions:
    return pulumi.ResourceOptions(parent=parent, **kwargs)


def stateful_child(parent: pulumi.Resource, **kwargs: Any) -> pulumi.ResourceOptions:
    return pulumi.ResourceOptions(parent=parent, **STATEFUL, **kwargs)


def generated_secret(name: str, parent: pulumi.Resource, length: int = 48, protect: bool = False) -> pulumi.Output:
    """A random alphanumeric secret; the value only ever travels as a secret Output.

    Alphanumeric keeps it safe inside URLs, YAML, SQL literals and config files
    without quoting rules.
    """
    password = random.RandomPassword(
        name, length=length, special=False, opts=pulumi.ResourceOptions(parent=parent, protect=protect)
    )
    return pulumi.Output.secret(password.result)


def generated_bytes_b64(name: str, parent: pulumi.Resource, length: int = 32, protect: bool = False) -> pulumi.Output:
    """`length` random bytes, base64: the shape Signal-Server's shared secrets need."""
    raw = random.RandomBytes(name, length=length, opts=pulumi.ResourceOptions(parent=parent, protect=protect))
    return pulumi.Output.secret(raw.base64)


def images() -> dict[str, str]:
    """configs/images.yaml (components/pins.py; tests replace `pins.images` to try another pin)."""
    return pins.images()


def image(key: str) -> str:
    return pins.images()[key]


def to_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1000)


def merge_config(*parts: Mapping[str, Any]) -> dict:
    """Config sections merged key by key, nested mappings included, into a new dict.

    Each feature adds its own keys to a config section (Synapse's `experimental_features` gets
    the bridges' MSC2409/MSC3202 flags and MatrixRTC's MSC4143/4222/4354): a plain `update`
    would let the last one silently drop the others' keys. Two parts setting one key to
    different values is a programming error, so it raises instead of picking a winner."""
    merged: dict = {}
    for part in parts:
        for key, value in part.items():
            if key not in merged:
                merged[key] = merge_config(value) if isinstance(value, Mapping) else value
            elif isinstance(merged[key], dict) and isinstance(value, Mapping):
                merged[key] = merge_config(merged[key], value)
            elif merged[key] != value:
                raise ValueError(f"config key {key!r} is set twice, to {merged[key]!r} and to {value!r}")
    return merged


@dataclass
class ConfigFile:
    """A file the program places in a container."""

    path: str
    content: pulumi.Input[str]
    executable: bool = False
    # Octal mode and numeric uid (also the gid) for files that hold secrets; numeric because the
    # provider resolves names on the Docker host, not in the container.
    permissions: Optional[str] = None
    owner: Optional[str] = None


# Docker's json-file driver, rotated: at most LOG_MAX_FILE files of LOG_MAX_SIZE per container.
LOG_DRIVER = "json-file"
LOG_OPTS = {"max-size": "10m", "max-file": "3"}
NO_NEW_PRIVILEGES = "no-new-privileges:true"
# Scratch space on a read-only root filesystem: no executables, no device files.
SCRATCH = "rw,noexec,nosuid,nodev,size=64m"


@dataclass(frozen=True)
class Hardening:
    """How one container is confined. The defaults are the strictest; every relaxation is declared
    with the container and says why the image needs it (`why`), and tests/policies check the rest.

    Every container runs with no-new-privileges, every Linux capability dropped except
    `capabilities`, a memory limit without swap (`memory_mb`; `commstack:containerMemory` overrides
    it per container), rotated json-file logs, and, with `read_only`, a read-only root filesystem
    whose only writable paths are its volumes and the `tmpfs` mounts listed here (see
    `read_only_root`: uploaded files must lie in `config_dirs` for the root to be read-only).
    """

    capabilities: tuple[str, ...] = ()
    read_only: bool = True
    tmpfs: tuple[tuple[str, str], ...] = (("/tmp", SCRATCH),)
    memory_mb: int = 256
    why: str = ""
    # Directories that hold the container's uploaded files, each an anonymous volume: Docker copies
    # uploads into a volume of a container whose root is read-only (moby daemon/archive.go refuses
    # only the root itself), and the provider removes anonymous volumes with their container
    # (remove_volumes), so every replacement starts from exactly the files the program uploads.
    config_dirs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.capabilities or not self.read_only) and not self.why:
            raise ValueError("a container that keeps capabilities or a writable root must say why (Hardening.why)")
        bad = [c for c in self.capabilities if not c.isupper() or c.startswith("CAP_") or c == "ALL"]
        if bad:
            raise ValueError(f"capabilities are named without CAP_ (e.g. CHOWN), never ALL: {bad}")
        bad_dirs = [d for d in self.config_dirs if not d.startswith("/") or d.rstrip("/") in ("", "/etc", "/usr")]
        if bad_dirs:
            raise ValueError(f"config_dirs must be absolute directories of the service's own, not {bad_dirs}")

    def holds(self, path: str) -> bool:
        """Whether an uploaded file at `path` lands in one of the config dirs."""
        return any(path.startswith(d.rstrip("/") + "/") for d in self.config_dirs)


@dataclass
class ContainerSpec:
    """What differs between the service containers; the rest is policy."""

    image_key: str
    network: pulumi.Input[str]
    aliases: Sequence[str]
    files: Sequence[ConfigFile] = ()
    command: Optional[Sequence[str]] = None
    entrypoint: Optional[Sequence[str]] = None
    envs: Optional[Mapping[str, pulumi.Input[str]]] = None
    ports: Sequence[docker.ContainerPortArgs] = ()
    volumes: Sequence[docker.ContainerVolumeArgs] = ()
    healthcheck: Optional[Sequence[str]] = None
    user: Optional[str] = None
    # A job that runs once to completion (provisioning, table creation, cluster forming):
    # never restarted, and `pulumi up` waits for it to exit (check it with `checked_job`).
    one_shot: bool = False
    extra: dict = field(default_factory=dict)
    # An image the program builds from pinned sources (docker.Image.repo_digest, its id): the
    # container runs it, so a rebuild replaces the container; image_key then names its pinned base.
    built_image: Optional[pulumi.Input[str]] = None
    # Further networks to join, each with its aliases (e.g. the proxy's network for a routed backend).
    # See components/matrix/network.py for the networks and how a container picks its own.
    extra_networks: Sequence[tuple[pulumi.Input[str], Sequence[str]]] = ()
    # Capabilities, read-only root, scratch mounts and memory: see Hardening.
    hardening: Hardening = field(default_factory=Hardening)


def service_container(name: str, spec: ContainerSpec, parent: pulumi.Resource,
                      provider: Optional[pulumi.ProviderResource] = None,
                      depends_on: Sequence[pulumi.Resource] = (),
                      resource_name: Optional[str] = None) -> docker.Container:
    """A long-running service container: pinned image, restart unless stopped,
    private network only, config files uploaded (no bind-mounted hand-edited files).

    `name` is the docker container's name: stable and user-facing (`docker logs
    <name>`, render directories). `resource_name`, normally the component's own
    name, prefixes the Pulumi resources (`<resource_name>-container`,
    `<resource_name>-image`) so child names derive from the parent's. Without it
    the resources are named after the container (`<name>`, `<name>-image`), for
    callers whose container names already start with the component's name.
    """
    container_resource, image_resource = (
        (f"{resource_name}-container", f"{resource_name}-image") if resource_name else (name, f"{name}-image")
    )
    opts = pulumi.ResourceOptions(parent=parent, provider=provider)
    image_id = spec.built_image
    if image_id is None:
        image_id = docker.RemoteImage(image_resource, name=image(spec.image_key), keep_locally=True, opts=opts).image_id
    healthcheck = None
    if spec.healthcheck:
        healthcheck = docker.ContainerHealthcheckArgs(
            tests=list(spec.healthcheck), interval="15s", timeout="5s", retries=5, start_period="30s"
        )
    job = {"restart": "no", "must_run": False, "attach": True} if spec.one_shot else {"restart": "unless-stopped"}
    envs = None
    if spec.envs:
        envs = pulumi.Output.all(**dict(spec.envs)).apply(lambda e: [f"{k}={v}" for k, v in sorted(e.items())])
    return docker.Container(
        container_resource,
        name=name,
        image=image_id,
        **job,
        networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=network, aliases=list(aliases))
                           for network, aliases in [(spec.network, spec.aliases), *spec.extra_networks]],
        uploads=[
            docker.ContainerUploadArgs(file=f.path, content=f.content, executable=f.executable,
                                       permissions=f.permissions, owner=f.owner, group=f.owner)
            for f in spec.files
        ],
        command=list(spec.command) if spec.command else None,
        entrypoints=list(spec.entrypoint) if spec.entrypoint else None,
        envs=envs,
        ports=list(spec.ports),
        volumes=[*spec.volumes, *(docker.ContainerVolumeArgs(container_path=d) for d in spec.hardening.config_dirs)],
        healthcheck=healthcheck,
        user=spec.user,
        **hardened(spec.hardening, uploads=[f.path for f in spec.files]),
        **spec.extra,
        opts=pulumi.ResourceOptions(parent=parent, provider=provider, depends_on=list(depends_on)),
    )


def read_only_root(hardening: Hardening, uploads: Sequence[str]) -> bool:
    """A read-only root filesystem wherever the provider allows it. Files are uploaded into the
    created container before it starts (pulumi-docker `uploads`, Docker's archive API), and Docker
    refuses those into a read-only root (moby daemon/archive.go, ErrRootFSReadOnly) unless they go
    into a volume. So a container gets a read-only root and tmpfs scratch when every uploaded file
    lies in one of its config dirs (anonymous volumes); one with a file elsewhere keeps a writable
    root, and its Hardening says why."""
    return hardening.read_only and all(hardening.holds(path) for path in uploads)


def hardened(hardening: Hardening, uploads: Sequence[str] = ()) -> dict:
    """The docker.Container arguments every container gets from its Hardening."""
    read_only = read_only_root(hardening, uploads)
    return {
        "security_opts": [NO_NEW_PRIVILEGES],
        "capabilities": docker.ContainerCapabilitiesArgs(drops=["ALL"], adds=list(hardening.capabilities)),
        "read_only": read_only,
        "tmpfs": dict(hardening.tmpfs) if read_only and hardening.tmpfs else None,
        "memory": hardening.memory_mb,
        "memory_swap": hardening.memory_mb,  # the same: no swap on top of the limit
        "log_driver": LOG_DRIVER,
        "log_opts": dict(LOG_OPTS),
    }


def container_memory_transformation(overrides: Mapping[str, int]):
    """A stack transformation that gives the containers named in `overrides` (docker names, as in
    `docker ps`) that memory limit in MB instead of their Hardening's (commstack:containerMemory)."""
    def transform(args: pulumi.ResourceTransformationArgs) -> Optional[pulumi.ResourceTransformationResult]:
        if args.type_ != "docker:index/container:Container" or args.props.get("name") not in overrides:
            return None
        memory = overrides[args.props["name"]]
        return pulumi.ResourceTransformationResult(props={**args.props, "memory": memory, "memory_swap": memory},
                                                   opts=args.opts)
    return transform


def require_success(exit_code: Optional[int], *, job: str, urn: str) -> Optional[int]:
    """Fails the deployment when a one-shot job (`attach`) exited non-zero.

    The provider reports the exit code without failing on it, and keeps the
    failed container in state, so a plain re-run would not run the job again.
    """
    if exit_code not in (None, 0):
        raise RuntimeError(f"{job} exited with {exit_code}; see `docker logs {job}`. "
                           f"Fix the cause, then run it again with `pulumi up --replace '{urn}'`")
    return exit_code


def checked_job(job: docker.Container) -> pulumi.Output:
    """The job's exit code, resolving only if it succeeded: feed it into what needs the job done."""
    return pulumi.Output.all(job.exit_code, job.name, job.urn).apply(
        lambda args: require_success(args[0], job=args[1], urn=args[2]))


def tcp_port(port: int, external: Optional[int] = None, protocol: str = "tcp") -> docker.ContainerPortArgs:
    return docker.ContainerPortArgs(internal=port, external=external or port, protocol=protocol)


def published_ports(ports: Sequence[Any]) -> list[docker.ContainerPortArgs]:
    """Host port mappings, one per number and protocol, for entries of configs/ports.yaml
    (`components.edge.ports.PublicPort`), so Docker publishes exactly that list."""
    return [docker.ContainerPortArgs(internal=number, external=number, protocol=protocol)
            for port in ports for number in port.numbers() for protocol in port.protocols]


def publish_address(public_ip: str) -> Optional[str]:
    """The host address published ports bind to: loopback when the stack's public address is
    loopback (the dev stack), so nothing it serves, not even dev's insecure Signal registration,
    is reachable from the LAN; otherwise every interface (None), because a cloud VM's public
    address is usually not on any of its interfaces (AWS Elastic IPs are NAT) and a LAN address
    is what a router forwards to."""
    import ipaddress

    return "127.0.0.1" if ipaddress.ip_address(public_ip).is_loopback else None


def published_address_transformation(address: str):
    """A stack transformation that binds every container's published ports to `address`."""
    def transform(args: pulumi.ResourceTransformationArgs) -> Optional[pulumi.ResourceTransformationResult]:
        if args.type_ != "docker:index/container:Container" or not args.props.get("ports"):
            return None
        ports = []
        for port in args.props["ports"]:
            fields = dict(port) if isinstance(port, Mapping) else {
                "internal": port.internal, "external": port.external, "protocol": port.protocol}
            ports.append(docker.ContainerPortArgs(**{**fields, "ip": address}))
        return pulumi.ResourceTransformationResult(props={**args.props, "ports": ports}, opts=args.opts)
    return transform


def stack_volume_name(stack: str, name: str) -> str:
    """A volume's Docker name in a stack with commstack:volumeNames `stack`."""
    return name if name.startswith(f"{stack}-") else f"{stack}-{name}"


def volume_name_transformation(stack: str):
    """A stack transformation that prefixes every Docker volume's name with the stack's. Containers
    mount volumes by the volume resource's `name` output, so they follow. Only for stacks whose
    volumes never had the unscoped names: a volume's name cannot change in place."""
    def transform(args: pulumi.ResourceTransformationArgs) -> Optional[pulumi.ResourceTransformationResult]:
        if args.type_ != "docker:index/volume:Volume" or not isinstance(args.props.get("name"), str):
            return None
        return pulumi.ResourceTransformationResult(
            props={**args.props, "name": stack_volume_name(stack, args.props["name"])}, opts=args.opts)
    return transform
