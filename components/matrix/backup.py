"""Backups of the Matrix half: restic snapshots of every database, the media, the signing key and
the ACME store, daily, with a weekly restore drill.

One long-running `backup` container (the pinned Postgres image plus the pinned restic binary, so
pg_dump is the server's own major) runs configs/backup/schedule.sh. The job's scripts are the files
in configs/backup/; the only rendered one is env.sh, every value shell-quoted, so the loopback
harness runs the very same scripts for real. What is kept follows Synapse's backup guide
(element-hq/synapse docs/usage/administration/backups.md): `pg_dump -Fc` without the data of
e2e_one_time_keys_json, local_content and local_thumbnails, the signing key; the bridges keep
their state in their own databases, which are dumped too.

The repository is a protected local volume by default, or off the host (`BackupRepository`): an
S3 bucket the program creates on AWS (components/matrix/backup_bucket.py), any S3-compatible
endpoint, or restic's rest-server in append-only mode on another machine. Off the host, this host
only adds snapshots: with the AWS bucket its key cannot delete or replace history, with rest-server
`--append-only` the server refuses every delete but of lock files. The retention policy then runs
from the admin's machine, with the admin's own credentials (`python -m commstack backup-prune`);
only the local volume is pruned by the job itself (HOST_PRUNES). Its password is generated,
protected, and a secret stack output.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import pulumi
import pulumi_docker as docker

from components.common import (ConfigFile, ContainerSpec, Hardening, child, generated_secret, image, service_container,
                               stateful_child)
from components.settings import CONFIGS_DIR, BackupSettings

CONTAINER = "backup"
SCRIPTS_DIR = "/commstack"
SCRIPTS = ("lib.sh", "backup.sh", "restore.sh", "drill.sh", "snapshots.sh", "schedule.sh", "health.sh", "metrics.sh")
BACKUP_CONFIGS = CONFIGS_DIR / "backup"
ENV_PATH = f"{SCRIPTS_DIR}/env.sh"
PASSWORD_FILE = "/run/secrets/restic-password"
# The off-host repository's credentials (shell exports restic reads: AWS_* for S3, RESTIC_REST_* for rest-server).
CREDENTIALS_FILE = "/run/secrets/repository-credentials.sh"
# The CA certificate a rest-server's TLS certificate is checked against, when it is not a public one.
REPOSITORY_CA_FILE = f"{SCRIPTS_DIR}/repository-ca.pem"
PGPASS_PATH = "/root/.pgpass"
LOCAL_REPOSITORY = "/repository"
MEDIA_DIR = "/data/synapse-media"
SIGNING_KEY_FILE = "/data/synapse-signing/signing.key"
ACME_DIR = "/data/traefik-acme"
STAGING_DIR = "/staging"
# The job's status for Prometheus (configs/backup/metrics.sh), a volume node_exporter reads (monitoring on).
METRICS_DIR = "/metrics"
# Synapse's backup guide: this table's data is not worth keeping.
EXCLUDE_TABLE_DATA = "e2e_one_time_keys_json"
# restic's snapshot host: stable, unlike a container's random hostname.
BACKUP_HOST = "commstack"
DRILL_WEEKDAY = 7  # Sunday (date +%u)
# Containers that hold the databases open; `restore --stop-services` stops them first.
SYNAPSE_CONTAINER = "synapse"


# Why a warning and not a refusal: a same-host repository still protects against what loses most data (a bad
# upgrade, a deleted room, a damaged database, an operator's mistake), refusing would stop every existing stack on
# the default target from deploying (security fixes included) until its owner has a second machine, and the fix is
# a setting away. So every preview and up says it, with the commands.
SAME_HOST_WARNING = (
    "backups: this stack serves the internet, but its backup repository is a volume on the same Docker host "
    "(commstack:backupTarget local): whoever takes over the host can erase every backup with it. Move them off "
    "the host, where the host can add snapshots but never delete them: `pulumi config set commstack:backupTarget aws` "
    "(an S3 bucket whose key cannot delete history) or `pulumi config set commstack:backupTarget rest` (restic's "
    "rest-server --append-only on another machine); see docs/operations.md, Backups.")


@dataclass(frozen=True)
class BackupRepository:
    """Where the snapshots go, when not the local volume: an S3 bucket (restic's `s3:` URL) or a rest-server
    (`rest:`). `credentials` are the environment variables restic takes them from (s3_credentials,
    rest_credentials); they reach the job only as a secret file."""

    url: pulumi.Input[str]
    credentials: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    region: Optional[str] = None
    ca_certificate: Optional[str] = None  # PEM, for a rest-server whose certificate no public CA signed


@dataclass
class BackupArgs:
    network: pulumi.Input[str]  # the Postgres network
    settings: BackupSettings
    postgres_host: str
    postgres_port: int
    superuser: str
    superuser_password: pulumi.Output[str]
    databases: Sequence[str]
    media_volume: pulumi.Input[str]
    signing_key: pulumi.Output[str]  # the signing.key file Synapse reads (secret)
    acme_volume: Optional[pulumi.Input[str]] = None
    repository: Optional[BackupRepository] = None  # None: the protected local volume
    # Containers to stop before a restore (Synapse and the bridges), for the CLI.
    stop_containers: Sequence[str] = ()
    # The stack serves the internet (a public certificate, public DNS or a public address): a same-host
    # repository is then worth a loud warning at every preview and up (SAME_HOST_WARNING).
    faces_internet: bool = False
    extra_networks: Sequence[pulumi.Input[str]] = ()  # egress, for an S3 repository
    metrics_volume: Optional[pulumi.Input[str]] = None  # node_exporter's textfile directory (monitoring on)


def s3_repository_url(endpoint: str, bucket: str, prefix: str = "restic") -> str:
    """restic's S3 repository URL: `s3:<endpoint>/<bucket>/<prefix>` (an AWS host needs no scheme)."""
    return f"s3:{endpoint.rstrip('/')}/{bucket}/{prefix}"


def aws_repository_url(region: str, bucket: str) -> str:
    return s3_repository_url(f"s3.{region}.amazonaws.com", bucket)


def rest_repository_url(url: str) -> str:
    """restic's rest-server repository URL: `rest:https://host:port/path/` (credentials stay out of it)."""
    return f"rest:{url.rstrip('/')}/"


def s3_credentials(access_key_id: pulumi.Input[str], secret_access_key: pulumi.Input[str]) -> dict:
    return {"AWS_ACCESS_KEY_ID": access_key_id, "AWS_SECRET_ACCESS_KEY": secret_access_key}


def rest_credentials(username: pulumi.Input[str], password: pulumi.Input[str]) -> dict:
    """rest-server's HTTP basic auth, as restic >= 0.17 reads it from the environment."""
    return {"RESTIC_REST_USERNAME": username, "RESTIC_REST_PASSWORD": password}


def render_env(*, repository: str, databases: Sequence[str], settings: BackupSettings, postgres_host: str,
               postgres_port: int, superuser: str, acme: bool, credentials: bool, host_prunes: bool,
               region: Optional[str] = None, ca_certificate: bool = False, metrics: bool = False) -> str:
    """env.sh, sourced by every script: the only rendered file among them. Every value shell-quoted.
    `host_prunes`: the job applies the retention policy itself (the local volume only)."""
    for db in databases:
        if not db.replace("_", "").isalnum() or not db.islower():
            raise ValueError(f"database name {db!r} must be a plain lowercase identifier")
    values = {
        "RESTIC_REPOSITORY": repository,
        "RESTIC_PASSWORD_FILE": PASSWORD_FILE,
        "RESTIC_CACHE_DIR": f"{STAGING_DIR}/restic-cache",
        "PGHOST": postgres_host,
        "PGPORT": str(postgres_port),
        "PGUSER": superuser,
        "PGPASSFILE": PGPASS_PATH,
        "DATABASES": " ".join(databases),
        "EXCLUDE_TABLE_DATA": EXCLUDE_TABLE_DATA,
        "MEDIA_DIR": MEDIA_DIR,
        "SIGNING_KEY_FILE": SIGNING_KEY_FILE,
        "ACME_DIR": ACME_DIR if acme else "",
        "STAGING_DIR": STAGING_DIR,
        "BACKUP_HOST": BACKUP_HOST,
        "KEEP_DAILY": str(settings.keep_daily),
        "KEEP_WEEKLY": str(settings.keep_weekly),
        "KEEP_MONTHLY": str(settings.keep_monthly),
        "SCHEDULE_AT": settings.schedule,
        "DRILL_WEEKDAY": str(DRILL_WEEKDAY),
        "CREDENTIALS_FILE": CREDENTIALS_FILE if credentials else "",
        "HOST_PRUNES": "1" if host_prunes else "0",
        "METRICS_DIR": METRICS_DIR if metrics else "",
    }
    if region:
        values["AWS_DEFAULT_REGION"] = region
    if ca_certificate:
        values["RESTIC_CACERT"] = REPOSITORY_CA_FILE
    lines = ["# Generated by commstack: the backup job's settings, sourced by configs/backup/lib.sh."]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def render_credentials(values: Mapping[str, str]) -> str:
    """The credentials file: one quoted `export NAME=value` per variable."""
    for name in values:
        if not name.replace("_", "").isalnum() or not name.isupper():
            raise ValueError(f"{name!r} is not an environment variable name")
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in values.items())


def script_files() -> list[ConfigFile]:
    return [ConfigFile(f"{SCRIPTS_DIR}/{name}", (BACKUP_CONFIGS / name).read_text(), executable=True)
            for name in SCRIPTS]


class Backup(pulumi.ComponentResource):
    repository_url: pulumi.Output[str]
    repository_password: pulumi.Output[str]  # secret
    container: docker.Container

    def __init__(self, name: str, args: BackupArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("commstack:matrix:Backup", name, None, opts)
        from components.matrix.postgres import render_pgpass

        # Without it no snapshot can ever be read: generated once, protected, a secret output.
        self.repository_password = generated_secret(f"{name}-repository-password", self, length=48, protect=True)
        # STAGING_DIR (dumps before upload, restores, restic's cache) stays in the container's own
        # layer: safe to lose with it.
        volumes = [docker.ContainerVolumeArgs(volume_name=args.media_volume, container_path=MEDIA_DIR)]
        if args.acme_volume is not None:
            volumes.append(docker.ContainerVolumeArgs(volume_name=args.acme_volume, container_path=ACME_DIR))
        if args.metrics_volume is not None:
            volumes.append(docker.ContainerVolumeArgs(volume_name=args.metrics_volume, container_path=METRICS_DIR))
        files = script_files()
        repo = args.repository
        if repo is None and args.faces_internet:
            pulumi.log.warn(SAME_HOST_WARNING, self)
        if repo is None:
            local = docker.Volume(f"{name}-repository", name=f"{CONTAINER}-repository", opts=stateful_child(self))
            volumes.append(docker.ContainerVolumeArgs(volume_name=local.name, container_path=LOCAL_REPOSITORY))
            self.repository_url = pulumi.Output.from_input(LOCAL_REPOSITORY)
        else:
            self.repository_url = pulumi.Output.from_input(repo.url)
            if repo.credentials:
                files.append(ConfigFile(CREDENTIALS_FILE, pulumi.Output.secret(
                    pulumi.Output.all(**dict(repo.credentials)).apply(render_credentials)),
                    permissions="0400", owner="0"))
            if repo.ca_certificate:
                files.append(ConfigFile(REPOSITORY_CA_FILE, repo.ca_certificate))
        env = self.repository_url.apply(lambda url: render_env(
            repository=url, databases=args.databases, settings=args.settings, postgres_host=args.postgres_host,
            postgres_port=args.postgres_port, superuser=args.superuser, acme=args.acme_volume is not None,
            credentials=bool(repo and repo.credentials), host_prunes=repo is None,
            region=repo.region if repo else None, ca_certificate=bool(repo and repo.ca_certificate),
            metrics=args.metrics_volume is not None))
        files += [
            ConfigFile(ENV_PATH, env),
            ConfigFile(PASSWORD_FILE, self.repository_password, permissions="0400", owner="0"),
            ConfigFile(PGPASS_PATH, args.superuser_password.apply(
                lambda pw: render_pgpass(args.postgres_host, args.postgres_port, args.superuser, pw)),
                permissions="0600", owner="0"),
            ConfigFile(SIGNING_KEY_FILE, pulumi.Output.secret(args.signing_key), permissions="0400", owner="0"),
        ]
        # Relative to the project, like the Signal images (pulumi-docker resolves it against Pulumi.yaml's directory).
        context = BACKUP_CONFIGS.relative_to(CONFIGS_DIR.parent).as_posix()
        built = docker.Image(
            f"{name}-image", image_name=f"commstack/backup:{image('restic').rpartition(':')[2]}", skip_push=True,
            build=docker.DockerBuildArgs(context=context, dockerfile=f"{context}/Dockerfile",
                                         args={"POSTGRES_IMAGE": image("postgres"), "RESTIC_IMAGE": image("restic")}),
            opts=child(self))
        # For the Postgres major upgrade job, whose first step is this job's backup.sh.
        self.image_id, self.files, self.volumes = built.repo_digest, files, volumes
        self.container = service_container(
            CONTAINER,
            ContainerSpec(
                image_key="restic",
                built_image=built.repo_digest,
                network=args.network,
                aliases=[CONTAINER],
                files=files,
                entrypoint=["/bin/sh", f"{SCRIPTS_DIR}/schedule.sh"],
                volumes=volumes,
                extra_networks=[(network, []) for network in args.extra_networks],
                healthcheck=["CMD", "sh", f"{SCRIPTS_DIR}/health.sh"],
                hardening=Hardening(
                    capabilities=("CHOWN", "DAC_OVERRIDE", "FOWNER"),
                    memory_mb=1024,
                    why="root reads Synapse's media (uid 991) and, in a restore, writes it back with its owners; "
                        "pg_dump and restic need more than the default memory"),
                extra={"labels": [docker.ContainerLabelArgs(label="commstack.backup.stop-before-restore",
                                                            value=",".join(args.stop_containers))]},
            ),
            parent=self,
            resource_name=name,
        )
        self.register_outputs({"repository_url": self.repository_url,
                               "repository_password": self.repository_password})
