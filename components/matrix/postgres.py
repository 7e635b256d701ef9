"""Postgres for Synapse and the bridges: one role and one database per service.

Provisioning needs no manual step. The rendered SQL is idempotent and a
one-shot `postgres-init` container (same pinned image, `psql` over the
private network) runs it after the server is healthy. It is replaced, and so
re-run, whenever the SQL changes (a bridge added, a password rotated) or the
server container is replaced. We do not also use /docker-entrypoint-initdb.d:
that runs only on an empty data directory, so it could not add a database
later, and uploading the SQL into the server container would restart the
database on every change.

Consumers get `DatabaseCredentials` whose password only resolves once the
provisioner has succeeded, so Synapse and the bridges start after their
role and database exist.

The data volume belongs to one Postgres major (`PostgresArgs.version`): the
legacy major's keeps its old name, a later major's is `postgres-data-<major>`.
A major upgrade (components/matrix/postgres_upgrade.py) adds the new major's
volume while the server stays on the old one, then switches and keeps the old
volume declared and protected for a rollback.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Optional, Sequence

import pulumi
import pulumi_docker as docker

from components.common import (ConfigFile, ContainerSpec, Hardening, checked_job, generated_bytes_b64,
                               generated_secret, service_container, stateful_child)
# The settings' submodules, not the package: components.settings reads the worker presets, which import this.
from components.paths import CONFIGS_DIR
from components.settings.facts import LEGACY_POSTGRES_MAJOR
from components.settings.model import PostgresSettings

LOGICAL_NAME = "postgres"
PORT = 5432
SUPERUSER = "postgres"
DATA_DIR = "/var/lib/postgresql/data"
INIT_SQL_PATH = "/commstack/init.sql"
# Runs before the image's docker-entrypoint.sh: refuses a data directory of another major
# (configs/postgres/entrypoint.sh; docs/operations.md, Postgres major upgrades).
ENTRYPOINT_PATH = "/commstack/postgres-entrypoint.sh"
ENTRYPOINT_SCRIPT = CONFIGS_DIR / "postgres" / "entrypoint.sh"
# Secrets reach the containers as files, not environment variables (which `docker inspect` shows).
# The image's docker-entrypoint reads POSTGRES_PASSWORD_FILE as root and again as postgres (uid 999
# in the Debian images) after gosu, so that user owns it (docker-library/postgres docker-entrypoint.sh).
PASSWORD_FILE = "/run/secrets/postgres-password"
POSTGRES_UID = "999"
# The init job runs psql as root; libpq ignores a password file readable by others.
PGPASS_PATH = "/root/.pgpass"
# Postgres's own max_connections default.
DEFAULT_MAX_CONNECTIONS = 100
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}", re.ASCII)
# Postgres's own defaults for the verifiers it makes (src/common/scram-common.c, scram_iterations).
SCRAM_ITERATIONS = 4096
SCRAM_SALT_BYTES = 16
_SCRAM_VERIFIER = re.compile(r"SCRAM-SHA-256\$[0-9]+:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+", re.ASCII)
# The image's docker-entrypoint.sh runs as root: it chowns and chmods the data and socket
# directories (CHOWN, FOWNER; DAC_OVERRIDE to walk a data directory only postgres may read),
# then drops to postgres with gosu (SETUID, SETGID).
SERVER_HARDENING = Hardening(capabilities=("CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"), memory_mb=1024,
                             why="docker-entrypoint.sh fixes directory ownership, then gosu drops to postgres")
# psql as root reading root's own files: no capability at all.
INIT_HARDENING = Hardening(memory_mb=128)


@dataclass(frozen=True)
class DatabaseSpec:
    name: str
    owner: str
    # Synapse refuses databases not created with C collation and ctype
    # (element-hq/synapse docs/postgres.md, "Set up database").
    synapse_locale: bool = False
    # The most connections its role may hold (ALTER ROLE … CONNECTION LIMIT), so one leaking client
    # cannot take the slots the others need; None: unlimited (-1).
    connection_limit: Optional[int] = None


@dataclass(frozen=True)
class DatabaseCredentials:
    host: str
    port: int
    database: str
    user: str
    password: pulumi.Output[str]  # secret

    def uri(self) -> pulumi.Output[str]:
        """The libpq URI the mautrix bridges take; secret like the password."""
        return pulumi.Output.secret(self.password).apply(
            lambda pw: f"postgres://{self.user}:{pw}@{self.host}:{self.port}/{self.database}?sslmode=disable"
        )


@dataclass
class PostgresArgs:
    network: pulumi.Input[str]
    databases: Sequence[DatabaseSpec]
    # Which major the data is on and any upgrade under way; None: the legacy major, no upgrade.
    version: Optional[PostgresSettings] = None
    # A login role for postgres_exporter (monitoring on): pg_monitor's read-only statistics, no data.
    monitor_role: bool = False
    # The server's max_connections (components/matrix/workers.py max_connections); None or
    # Postgres's default (100) leaves the server's own setting.
    max_connections: Optional[int] = None


MONITOR_ROLE = "commstack_monitor"


def data_volume_names(name: str, major: int) -> tuple[str, str]:
    """(Pulumi resource name, docker volume name) of the data volume of one major. The legacy
    major keeps the names it always had, so existing stacks see no change."""
    if major == LEGACY_POSTGRES_MAJOR:
        return f"{name}-data", f"{LOGICAL_NAME}-data"
    return f"{name}-data-{major}", f"{LOGICAL_NAME}-data-{major}"


def server_image_key(version: PostgresSettings) -> str:
    """images.yaml's postgres, or postgres-<old> while the upgrade job moves the data off the old major."""
    return "postgres" if version.server_major == version.image_major else f"postgres-{version.server_major}"


def server_command(max_connections: Optional[int] = None) -> list[str]:
    """The server's command: `postgres`, with max_connections when a stack needs more than the
    default (only then, so a stack that does not keeps its container)."""
    if max_connections is None or max_connections == DEFAULT_MAX_CONNECTIONS:
        return ["postgres"]
    if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 20:
        raise ValueError(f"max_connections must be a whole number of at least 20, not {max_connections!r}")
    return ["postgres", "-c", f"max_connections={max_connections}"]


def _sql_literal(value: str) -> str:
    if "\x00" in value:
        raise ValueError("a SQL literal cannot hold a NUL byte")
    return "'" + value.replace("'", "''") + "'"


def _check_identifier(value: str) -> str:
    if not _IDENTIFIER.fullmatch(value):
        raise ValueError(f"{value!r} is not a plain lowercase SQL identifier")
    return value


def scram_sha256_verifier(password: str, salt: bytes, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier Postgres stores for `password` (RFC 5802 and 7677, in Postgres's
    `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` form, src/common/scram-common.c
    scram_build_secret). Given to ALTER ROLE ... PASSWORD, Postgres stores it as is: the plaintext
    never reaches the server, its statement log or pg_stat_activity.

    Postgres SASLprep-normalises a password first; for printable ASCII (what generated_secret
    makes) that is the identity, and anything else is refused rather than hashed differently."""
    if not password or not all(" " <= c <= "~" for c in password):
        raise ValueError("a role password must be non-empty printable ASCII (SASLprep is not applied)")
    if len(salt) < SCRAM_SALT_BYTES or iterations < SCRAM_ITERATIONS:
        raise ValueError(f"a SCRAM verifier needs a salt of {SCRAM_SALT_BYTES}+ bytes and {SCRAM_ITERATIONS}+ iterations")
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def render_init_sql(databases: list[tuple[DatabaseSpec, str]], monitor_verifier: Optional[str] = None) -> str:
    """Idempotent provisioning SQL for `psql -v ON_ERROR_STOP=1 -f`.

    `databases` pairs each spec with its role's SCRAM-SHA-256 verifier (scram_sha256_verifier),
    never a plaintext password. CREATE DATABASE cannot run inside a DO block, so creation goes
    through psql's \\gexec guarded by NOT EXISTS; everything else is re-applied every run.
    """
    names = [spec.name for spec, _ in databases]
    if len(set(names)) != len(names):
        raise ValueError(f"database names must be unique: {names}")
    lines = [
        "-- Generated by commstack. Idempotent: run on every deploy with psql -v ON_ERROR_STOP=1 -f.",
        "\\set ON_ERROR_STOP on",
        "",
        "-- Service roles reach only their own database, never the maintenance ones.",
        "REVOKE CONNECT ON DATABASE postgres FROM PUBLIC;",
        "REVOKE CONNECT ON DATABASE template1 FROM PUBLIC;",
    ]
    for spec, verifier in databases:
        db, owner = _check_identifier(spec.name), _check_identifier(spec.owner)
        if not _SCRAM_VERIFIER.fullmatch(verifier or ""):
            raise ValueError(f"the role {owner} needs a SCRAM-SHA-256 verifier for its password, never the password")
        limit = -1 if spec.connection_limit is None else spec.connection_limit
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < -1 or limit == 0:
            raise ValueError(f"the connection limit of {owner} must be a positive whole number, not {limit!r}")
        locale = " LC_COLLATE ''C'' LC_CTYPE ''C''" if spec.synapse_locale else ""
        lines += [
            "",
            f"-- {db}, owned by {owner}",
            f"SELECT 'CREATE ROLE {owner}' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{owner}')\\gexec",
            f"ALTER ROLE {owner} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
            f" CONNECTION LIMIT {limit} PASSWORD {_sql_literal(verifier)};",
            f"SELECT 'CREATE DATABASE {db} WITH OWNER {owner} ENCODING ''UTF8''{locale} TEMPLATE template0'"
            f" WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{db}')\\gexec",
            f"ALTER DATABASE {db} OWNER TO {owner};",
            # Only the owner (and the superuser) may connect.
            f"REVOKE ALL ON DATABASE {db} FROM PUBLIC;",
        ]
        if spec.synapse_locale:
            # A database made earlier by hand with another locale would make
            # Synapse refuse to start; fail here with the reason instead.
            lines.append(
                "DO $$ BEGIN IF EXISTS (SELECT FROM pg_database WHERE datname = "
                f"'{db}' AND (datcollate <> 'C' OR datctype <> 'C')) THEN RAISE EXCEPTION "
                f"'database {db} exists with a non-C locale; Synapse needs LC_COLLATE and LC_CTYPE C'; "
                "END IF; END $$;"
            )
    if monitor_verifier is not None:
        if not _SCRAM_VERIFIER.fullmatch(monitor_verifier):
            raise ValueError(f"the role {MONITOR_ROLE} needs a SCRAM-SHA-256 verifier for its password, never the password")
        lines += [
            "",
            f"-- {MONITOR_ROLE}: postgres_exporter's login; pg_monitor reads statistics and settings, no table data.",
            f"SELECT 'CREATE ROLE {MONITOR_ROLE}' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{MONITOR_ROLE}')\\gexec",
            f"ALTER ROLE {MONITOR_ROLE} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
            f" CONNECTION LIMIT 3 PASSWORD {_sql_literal(monitor_verifier)};",
            f"GRANT pg_monitor TO {MONITOR_ROLE};",
            f"GRANT CONNECT ON DATABASE postgres TO {MONITOR_ROLE};",
        ]
    return "\n".join(lines) + "\n"


def render_pgpass(host: str, port: int, user: str, password: str) -> str:
    """A libpq password file line for every database on host:port (libpq docs, "The Password File")."""
    def escape(field: str) -> str:
        return field.replace("\\", "\\\\").replace(":", "\\:")
    return f"{escape(host)}:{port}:*:{escape(user)}:{escape(password)}\n"


class Postgres(pulumi.ComponentResource):
    credentials: dict[str, DatabaseCredentials]
    server: docker.Container
    provisioner: docker.Container  # the one-shot init job

    def __init__(self, name: str, args: PostgresArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("commstack:matrix:Postgres", name, None, opts)
        if not args.databases:
            raise ValueError("Postgres needs at least one database")

        superuser_password = generated_secret(f"{name}-superuser-password", self)
        self.superuser_password = superuser_password  # for the backup job's pg_dump
        passwords = {spec.name: generated_secret(f"{name}-{spec.name}-password", self) for spec in args.databases}
        # One salt per role, made once and kept in state: the verifier (and so the init SQL) stays the same
        # from one `up` to the next, and the job re-runs only when something really changes.
        salts = {spec.name: generated_bytes_b64(f"{name}-{spec.name}-scram-salt", self, length=SCRAM_SALT_BYTES)
                 for spec in args.databases}

        version = args.version or PostgresSettings(LEGACY_POSTGRES_MAJOR, LEGACY_POSTGRES_MAJOR)
        self.version = version

        def volume(major: int) -> docker.Volume:
            resource, docker_name = data_volume_names(name, major)
            return docker.Volume(resource, name=docker_name, opts=stateful_child(self))

        data = volume(version.server_major)
        self.data_volume = data
        # While upgrading: the new major's volume the job fills. Once upgraded: the old major's, kept
        # (protected, not mounted) for a rollback until the user lets it go.
        self.upgrade_volume: Optional[docker.Volume] = None
        self.kept_volume: Optional[docker.Volume] = None
        envs = {"POSTGRES_USER": SUPERUSER, "POSTGRES_PASSWORD_FILE": PASSWORD_FILE}
        if version.phase == "upgrading":
            self.upgrade_volume = volume(version.image_major)
        elif version.phase == "upgraded":
            self.kept_volume = volume(version.upgrade_from)
            envs["COMMSTACK_POSTGRES_UPGRADED_FROM"] = str(version.upgrade_from)
        self.server = service_container(
            LOGICAL_NAME,
            ContainerSpec(
                image_key=server_image_key(version),
                network=args.network,
                aliases=[LOGICAL_NAME],
                envs=envs,
                files=[ConfigFile(PASSWORD_FILE, superuser_password, permissions="0400", owner=POSTGRES_UID),
                       ConfigFile(ENTRYPOINT_PATH, ENTRYPOINT_SCRIPT.read_text(), executable=True)],
                entrypoint=["/bin/sh", ENTRYPOINT_PATH],
                command=server_command(args.max_connections),
                volumes=[docker.ContainerVolumeArgs(volume_name=data.name, container_path=DATA_DIR)],
                # TCP, not the socket: during first-boot initdb the image runs a
                # socket-only server that must not count as ready.
                healthcheck=["CMD-SHELL", f"pg_isready -h 127.0.0.1 -U {SUPERUSER}"],
                hardening=SERVER_HARDENING,
                extra={"wait": True, "wait_timeout": 120},
            ),
            parent=self,
            resource_name=name,
        )

        specs = list(args.databases)
        self.monitor_password = (generated_secret(f"{name}-{MONITOR_ROLE}-password", self)
                                 if args.monitor_role else None)
        monitor_salt = (generated_bytes_b64(f"{name}-{MONITOR_ROLE}-scram-salt", self, length=SCRAM_SALT_BYTES)
                        if args.monitor_role else None)
        verifiers = [pulumi.Output.all(passwords[s.name], salts[s.name]).apply(
            lambda pair: scram_sha256_verifier(pair[0], base64.b64decode(pair[1]))) for s in specs]
        monitor_verifier = (pulumi.Output.all(self.monitor_password, monitor_salt).apply(
            lambda pair: scram_sha256_verifier(pair[0], base64.b64decode(pair[1]))) if args.monitor_role else None)
        init_sql = pulumi.Output.all(*verifiers, monitor_verifier).apply(
            lambda found: render_init_sql(list(zip(specs, found[:-1])), monitor_verifier=found[-1]))
        wait_then_run = (
            f"for i in $(seq 60); do pg_isready -q -h {LOGICAL_NAME} -U {SUPERUSER} && break; sleep 2; done; "
            f"exec psql -v ON_ERROR_STOP=1 -h {LOGICAL_NAME} -U {SUPERUSER} -d postgres -f {INIT_SQL_PATH}"
        )
        self.provisioner = service_container(
            f"{LOGICAL_NAME}-init",
            ContainerSpec(
                image_key="postgres",
                network=args.network,
                aliases=[],
                # The SQL holds every role's password.
                files=[ConfigFile(INIT_SQL_PATH, pulumi.Output.secret(init_sql), permissions="0400", owner="0"),
                       ConfigFile(PGPASS_PATH, superuser_password.apply(
                           lambda pw: render_pgpass(LOGICAL_NAME, PORT, SUPERUSER, pw)), permissions="0600", owner="0")],
                entrypoint=["/bin/sh", "-c"],
                command=[wait_then_run],
                envs={"PGPASSFILE": PGPASS_PATH},
                # Its output stays in `docker logs`, not in state.
                one_shot=True,
                hardening=INIT_HARDENING,
                extra={
                    # A replaced server (e.g. a new data volume) gets provisioned again.
                    "labels": [docker.ContainerLabelArgs(label="commstack.postgres-server", value=self.server.id)],
                },
            ),
            parent=self,
            depends_on=[self.server],
            resource_name=f"{name}-init",
        )
        provisioned = checked_job(self.provisioner)

        self.credentials = {
            spec.name: DatabaseCredentials(
                host=LOGICAL_NAME,
                port=PORT,
                database=spec.name,
                user=spec.owner,
                password=pulumi.Output.all(passwords[spec.name], provisioned).apply(lambda pair: pair[0]),
            )
            for spec in specs
        }
        self.register_outputs({"databases": [s.name for s in specs], "provisioned": provisioned})
