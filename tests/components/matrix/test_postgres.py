"""Postgres: the init SQL, the provisioner job and the credentials it hands out."""

import re
from urllib.parse import urlsplit

import pulumi
import pytest

from commstack.devtools import offline
from components.matrix.postgres import (
    INIT_SQL_PATH, DatabaseSpec, Postgres, PostgresArgs, render_init_sql,
)

SYNAPSE_DB = DatabaseSpec("synapse", "synapse", synapse_locale=True, connection_limit=15)
BRIDGE_DB = DatabaseSpec("mautrix_whatsapp", "mautrix_whatsapp")


def statements(sql: str) -> list[str]:
    return [line for line in sql.splitlines() if line and not line.startswith("--")]


def test_init_sql_creates_each_role_and_database_guarded_for_reruns():
    sql = render_init_sql([(SYNAPSE_DB, "pwsynapse1"), (BRIDGE_DB, "pwbridge2")])
    lines = statements(sql)
    assert lines[0] == "\\set ON_ERROR_STOP on"
    for spec, password in ((SYNAPSE_DB, "pwsynapse1"), (BRIDGE_DB, "pwbridge2")):
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
    lines = statements(render_init_sql([(SYNAPSE_DB, "a1"), (BRIDGE_DB, "b2")]))
    synapse_create = next(l for l in lines if l.startswith("SELECT 'CREATE DATABASE synapse "))
    bridge_create = next(l for l in lines if l.startswith("SELECT 'CREATE DATABASE mautrix_whatsapp "))
    assert re.search(r"ENCODING ''UTF8'' LC_COLLATE ''C'' LC_CTYPE ''C'' TEMPLATE template0'", synapse_create)
    assert "LC_COLLATE" not in bridge_create and "TEMPLATE template0" in bridge_create
    guards = [l for l in lines if l.startswith("DO $$")]
    assert len(guards) == 1 and "datname = 'synapse'" in guards[0] and "RAISE EXCEPTION" in guards[0]


def test_password_literal_is_quoted():
    sql = render_init_sql([(BRIDGE_DB, "it's")])
    assert "PASSWORD 'it''s';" in sql


@pytest.mark.parametrize("databases, message", [
    ([(DatabaseSpec("Synapse", "synapse"), "pw")], "identifier"),
    ([(DatabaseSpec("synapse", "drop table;"), "pw")], "identifier"),
    ([(DatabaseSpec("x", "x"), "")], "password"),
    ([(DatabaseSpec("x", "x"), "a"), (DatabaseSpec("x", "y"), "b")], "unique"),
    ([(DatabaseSpec("x", "x", connection_limit=0), "pw")], "connection limit"),
    ([(DatabaseSpec("x", "x", connection_limit="5; DROP ROLE x"), "pw")], "connection limit"),
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
        assert f"ALTER ROLE synapse WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 15 PASSWORD '{synapse_password}';" in sql
        assert f"PASSWORD '{bridge_password}';" in sql
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
