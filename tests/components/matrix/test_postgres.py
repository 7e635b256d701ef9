"""Postgres: the init SQL, the provisioner job and the credentials it hands out."""

import base64
import hashlib
import hmac
import re
from urllib.parse import urlsplit

import pulumi
import pytest

from commstack.devtools import offline
from components.matrix.postgres import (
    INIT_SQL_PATH, DatabaseSpec, Postgres, PostgresArgs, render_init_sql, scram_sha256_verifier,
)

SYNAPSE_DB = DatabaseSpec("synapse", "synapse", synapse_locale=True, connection_limit=15)
BRIDGE_DB = DatabaseSpec("mautrix_whatsapp", "mautrix_whatsapp")


def statements(sql: str) -> list[str]:
    return [line for line in sql.splitlines() if line and not line.startswith("--")]


SALT = bytes(range(16))
VERIFIERS = {name: scram_sha256_verifier(password, SALT) for name, password in (("synapse", "pwsynapse1"),
                                                                                 ("bridge", "pwbridge2"))}


def scram_proof_matches(verifier: str, password: str) -> bool:
    """What the server checks in a SCRAM exchange (RFC 5802 section 3), from the client's side: the ClientKey
    derived from the password hashes to the verifier's StoredKey, and its ServerKey is the password's."""
    scheme, parameters, keys = verifier.split("$")
    iterations, salt = parameters.split(":")
    stored_b64, server_b64 = keys.split(":")
    assert scheme == "SCRAM-SHA-256"
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return (hashlib.sha256(client_key).digest() == base64.b64decode(stored_b64)
            and hmac.new(salted, b"Server Key", hashlib.sha256).digest() == base64.b64decode(server_b64))


def test_scram_verifier_has_postgres_shape_and_matches_only_its_password():
    verifier = scram_sha256_verifier("pwsynapse1", SALT)
    assert re.fullmatch(r"SCRAM-SHA-256\$4096:AAECAwQFBgcICQoLDA0ODw==\$[A-Za-z0-9+/]{43}=:[A-Za-z0-9+/]{43}=", verifier)
    assert scram_proof_matches(verifier, "pwsynapse1")
    assert not scram_proof_matches(verifier, "pwsynapse2")
    assert scram_sha256_verifier("pwsynapse1", bytes(16)) != verifier  # the salt is in it


@pytest.mark.parametrize("password, salt", [("", SALT), ("naïve", SALT), ("tab\there", SALT), ("ok", b"short")])
def test_scram_verifier_refuses_what_postgres_would_hash_differently(password, salt):
    with pytest.raises(ValueError):
        scram_sha256_verifier(password, salt)


def test_init_sql_creates_each_role_and_database_guarded_for_reruns():
    sql = render_init_sql([(SYNAPSE_DB, VERIFIERS["synapse"]), (BRIDGE_DB, VERIFIERS["bridge"])])
    lines = statements(sql)
    assert lines[0] == "\\set ON_ERROR_STOP on"
    for spec, password in ((SYNAPSE_DB, VERIFIERS["synapse"]), (BRIDGE_DB, VERIFIERS["bridge"])):
        create_role = [l for l in lines if l.startswith(f"SELECT 'CREATE ROLE {spec.owner}'")]
        assert len(create_role) == 1 and create_role[0].endswith("\\gexec")
        assert f"WHERE rolname = '{spec.owner}'" in create_role[0]
        alter = [l for l in lines if l.startswith(f"ALTER ROLE {spec.owner} ")]
        # Re-applied every run, so a changed limit reaches an existing role; no limit is -1.
        limit = spec.connection_limit or -1
        assert alter == [f"ALTER ROLE {spec.owner} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION"
                         f" NOBYPASSRLS CONNECTION LIMIT {limit} PASSWORD '{password}';"]
        create_db = [l for l in lines if l.startswith(f"SELECT 'CREATE DATABASE {spec.name} ")]
        assert len(create_db) == 1 and f"WITH OWNER {spec.owner} " in create_db[0]
        assert f"WHERE datname = '{spec.name}')\\gexec" in create_db[0]
        assert f"REVOKE ALL ON DATABASE {spec.name} FROM PUBLIC;" in lines


def test_only_the_synapse_database_gets_c_locale_and_a_locale_guard():
    lines = statements(render_init_sql([(SYNAPSE_DB, VERIFIERS["synapse"]), (BRIDGE_DB, VERIFIERS["bridge"])]))
    synapse_create = next(l for l in lines if l.startswith("SELECT 'CREATE DATABASE synapse "))
    bridge_create = next(l for l in lines if l.startswith("SELECT 'CREATE DATABASE mautrix_whatsapp "))
    assert re.search(r"ENCODING ''UTF8'' LC_COLLATE ''C'' LC_CTYPE ''C'' TEMPLATE template0'", synapse_create)
    assert "LC_COLLATE" not in bridge_create and "TEMPLATE template0" in bridge_create
    guards = [l for l in lines if l.startswith("DO $$")]
    assert len(guards) == 1 and "datname = 'synapse'" in guards[0] and "RAISE EXCEPTION" in guards[0]


V = VERIFIERS["bridge"]


@pytest.mark.parametrize("databases, message", [
    ([(DatabaseSpec("Synapse", "synapse"), V)], "identifier"),
    ([(DatabaseSpec("synapse", "drop table;"), V)], "identifier"),
    ([(DatabaseSpec("synapse\n", "synapse"), V)], "identifier"),
    ([(DatabaseSpec("x", "x"), "")], "verifier"),
    # A plaintext password is refused: it would reach the server, its log and pg_stat_activity.
    ([(DatabaseSpec("x", "x"), "pwbridge2")], "verifier"),
    ([(DatabaseSpec("x", "x"), V + "'; drop role x; --")], "verifier"),
    ([(DatabaseSpec("x", "x"), V), (DatabaseSpec("x", "y"), V)], "unique"),
    ([(DatabaseSpec("x", "x", connection_limit=0), V)], "connection limit"),
    ([(DatabaseSpec("x", "x", connection_limit="5; DROP ROLE x"), V)], "connection limit"),
])
def test_init_sql_rejects_unsafe_input(databases, message):
    with pytest.raises(ValueError, match=message):
        render_init_sql(databases)


@pulumi.runtime.test
def test_postgres_provisions_by_job_and_hands_out_matching_credentials(recorded):
    pg = Postgres("pg", PostgresArgs(network="net", databases=[SYNAPSE_DB, BRIDGE_DB]))
    creds = pg.credentials

    def check(args):
        synapse_password, bridge_password, bridge_uri = args
        component = recorded.of_type("commstack:matrix:Postgres")[0]
        assert all(r.parent == component.urn for r in recorded.children_of(component.urn))

        server = recorded.named("pg-container").plain_inputs
        assert server["name"] == "postgres"
        assert server["restart"] == "unless-stopped"
        assert not server.get("ports"), "Postgres must never be published"
        assert server["networksAdvanced"][0]["aliases"] == ["postgres"]
        assert server["wait"] is True and server["healthcheck"]["tests"][0] == "CMD-SHELL"
        # The password is a file owned by the postgres user (the entrypoint re-reads it after gosu),
        # and the environment only names it: `docker inspect` shows envs.
        assert server["envs"] == ["POSTGRES_PASSWORD_FILE=/run/secrets/postgres-password", "POSTGRES_USER=postgres"]
        password_file, entrypoint = server["uploads"]
        # The entrypoint wrapper refuses a data directory of another major, then runs the image's own.
        assert server["entrypoints"] == ["/bin/sh", entrypoint["file"]] and server["command"] == ["postgres"]
        assert "exec docker-entrypoint.sh" in entrypoint["content"] and entrypoint["executable"] is True
        assert (password_file["file"], password_file["permissions"], password_file["owner"], password_file["group"]) == (
            "/run/secrets/postgres-password", "0400", "999", "999")
        superuser_password = password_file["content"]
        assert len(superuser_password) >= 32
        assert set(offline.secret_paths(recorded.named("pg-container").inputs)) & {"uploads", "uploads[0].content"}

        (volume,) = recorded.of_type("docker:index/volume:Volume")
        assert volume.protect is True and volume.retain_on_delete is True
        assert server["volumes"][0]["containerPath"] == "/var/lib/postgresql/data"
        assert server["volumes"][0]["volumeName"] == volume.plain_outputs["name"]

        job_reg = recorded.named("pg-init-container")
        job = job_reg.plain_inputs
        assert job["name"] == "postgres-init"
        assert job["restart"] == "no" and job["mustRun"] is False and job["attach"] is True
        assert recorded.named("pg-container").urn in job_reg.dependencies
        assert not job.get("ports")
        upload, pgpass = job["uploads"]
        assert upload["file"] == INIT_SQL_PATH
        # psql (as root) finds the superuser password in a libpq password file, not in PGPASSWORD.
        assert job["envs"] == [f"PGPASSFILE={pgpass['file']}"]
        assert (pgpass["permissions"], pgpass["owner"]) == ("0600", "0")
        assert pgpass["content"].splitlines() == [f"postgres:5432:*:postgres:{superuser_password}"]
        assert "uploads" in set(offline.secret_paths(job_reg.inputs)) or {
            "uploads[0].content", "uploads[1].content"} <= set(offline.secret_paths(job_reg.inputs))
        for reg in recorded.of_type("docker:index/container:Container"):
            assert superuser_password not in str(offline.unwrap(reg.inputs.get("envs"))), reg.name
        assert INIT_SQL_PATH in job["command"][0] and "ON_ERROR_STOP=1" in job["command"][0]
        sql = upload["content"]
        # Postgres gets each role's SCRAM verifier, never the password itself.
        assert synapse_password not in sql and bridge_password not in sql
        alter = re.search(r"^ALTER ROLE synapse WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                          r"NOBYPASSRLS CONNECTION LIMIT 15 PASSWORD '(SCRAM-SHA-256\$4096:[^']+)';$", sql, re.M)
        assert alter and scram_proof_matches(alter.group(1), synapse_password)
        assert not scram_proof_matches(alter.group(1), bridge_password)
        bridge_verifier = re.search(r"^ALTER ROLE mautrix_whatsapp .* PASSWORD '([^']+)';$", sql, re.M).group(1)
        assert scram_proof_matches(bridge_verifier, bridge_password)
        # Each role has its own salt, kept in state: the same verifier on every run.
        assert bridge_verifier.split("$")[1] != alter.group(1).split("$")[1]
        salts = [r for r in recorded.of_type("random:index/randomBytes:RandomBytes") if "scram-salt" in r.name]
        assert sorted(r.name for r in salts) == ["pg-mautrix_whatsapp-scram-salt", "pg-synapse-scram-salt"]
        assert synapse_password != bridge_password and len(synapse_password) >= 32

        uri = urlsplit(bridge_uri)
        assert (uri.scheme, uri.username, uri.password, uri.hostname, uri.port, uri.path, uri.query) == (
            "postgres", "mautrix_whatsapp", bridge_password, "postgres", 5432, "/mautrix_whatsapp", "sslmode=disable")
        for reg in recorded.registrations:
            plain = str(offline.strip_secrets(reg.inputs)) + str(offline.strip_secrets(reg.outputs))
            assert synapse_password not in plain and bridge_password not in plain

    return pulumi.Output.all(creds["synapse"].password, creds["mautrix_whatsapp"].password,
                             creds["mautrix_whatsapp"].uri()).apply(check)


@pulumi.runtime.test
def test_credentials_are_secret(recorded):
    pg = Postgres("pg", PostgresArgs(network="net", databases=[BRIDGE_DB]))

    return offline.expect_secret(pg.credentials["mautrix_whatsapp"].uri())


def test_a_failed_provisioner_stops_the_deployment_and_says_how_to_rerun_it():
    from components.common import require_success

    urn = "urn:pulumi:dev::commstack::commstack:matrix:Postgres$docker:index/container:Container::matrix-postgres-init-container"
    assert require_success(0, job="postgres-init", urn=urn) == 0
    assert require_success(None, job="postgres-init", urn=urn) is None  # unknown during preview
    with pytest.raises(RuntimeError) as failure:
        require_success(3, job="postgres-init", urn=urn)
    message = str(failure.value)
    # The failed run stays in state, so the fix is a forced replacement of exactly this resource.
    assert "postgres-init exited with 3" in message and "docker logs postgres-init" in message
    assert f"pulumi up --replace '{urn}'" in message


def test_pgpass_escapes_its_separators():
    from components.matrix.postgres import render_pgpass

    assert render_pgpass("db", 5432, "u:x", "p\\w:d") == "db:5432:*:u\\:x:p\\\\w\\:d\n"
