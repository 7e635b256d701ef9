"""The program's init SQL (run twice by the harness) gives each service a role that reaches only its own database."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import psycopg2
import pytest

from tests.integration.loopback import host_path


def _credentials(harness) -> dict[str, dict]:
    """service -> user/password/database, read from each consumer's rendered config."""
    db = harness.rendered.yaml("synapse", "/data/homeserver.yaml")["database"]["args"]
    found = {"synapse": {"user": db["user"], "password": db["password"], "database": db["database"]}}
    for container in harness.rendered.files:
        if container.startswith("bridge-"):
            uri = urlsplit(harness.rendered.yaml(container, "/data/config.yaml")["database"]["uri"])
            found[container] = {"user": uri.username, "password": uri.password, "database": uri.path.lstrip("/")}
    return found


def _connect(harness, creds: dict, database: str):
    return psycopg2.connect(host="127.0.0.1", port=harness.ports.postgres, user=creds["user"],
                            password=creds["password"], dbname=database, connect_timeout=5)


def test_every_service_has_its_own_role_and_database(harness):
    creds = _credentials(harness)
    assert set(creds) == {"synapse", "bridge-whatsapp", "bridge-telegram"}
    assert len({c["user"] for c in creds.values()}) == len({c["database"] for c in creds.values()}) == 3


def test_each_role_reaches_its_own_database(harness):
    for service, creds in _credentials(harness).items():
        with _connect(harness, creds, creds["database"]) as conn, conn.cursor() as cur:
            cur.execute("select current_user, current_database()")
            assert cur.fetchone() == (creds["user"], creds["database"]), service


def test_each_role_is_refused_on_every_other_database(harness):
    creds = _credentials(harness)
    databases = [c["database"] for c in creds.values()] + ["postgres", "template1"]
    for service, own in creds.items():
        for database in databases:
            if database == own["database"]:
                continue
            with pytest.raises(psycopg2.OperationalError, match="permission denied for database"):
                _connect(harness, own, database).close()


def test_a_wrong_password_is_refused(harness):
    synapse = _credentials(harness)["synapse"]
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        _connect(harness, {**synapse, "password": "wrong"}, synapse["database"]).close()


def test_synapse_database_has_c_collation(harness):
    done = harness.psql_superuser("-At", "-c", "select datcollate, datctype, pg_encoding_to_char(encoding) "
                                              "from pg_database where datname = 'synapse'")
    assert done.stdout.strip() == "C|C|UTF8"


def _init_sql(harness) -> str:
    return harness.rendered.text("postgres-init", harness.init_sql_path)


def test_roles_get_scram_verifiers_and_the_plaintext_never_reaches_postgres(harness):
    """The init SQL gives Postgres each role's SCRAM-SHA-256 verifier: the role logs in with its password
    (test_each_role_reaches_its_own_database), Postgres stores exactly that verifier, and with every statement
    logged, a run of the init SQL leaves no password in the server's log."""
    creds = _credentials(harness)
    sql = _init_sql(harness)
    log = next(s.log for s in harness.services if s.name == "postgres")
    for service, own in creds.items():
        assert own["password"] not in sql, service
        verifier = re.search(rf"^ALTER ROLE {own['user']} .* PASSWORD '(SCRAM-SHA-256\$[^']+)';$", sql, re.M).group(1)
        stored = harness.psql_superuser("-At", "-c", f"select rolpassword from pg_authid where rolname = '{own['user']}'")
        assert stored.stdout.strip() == verifier, service
    logged_from = log.stat().st_size
    done = harness.psql_superuser("-c", "set log_statement = 'all'",
                                  "-f", str(host_path(harness.root, "postgres-init", harness.init_sql_path)))
    assert done.returncode == 0, done.stderr
    logged = log.read_bytes()[logged_from:].decode(errors="replace")
    assert "ALTER ROLE synapse WITH LOGIN" in logged and "PASSWORD 'SCRAM-SHA-256$4096:" in logged
    for service, own in creds.items():
        assert own["password"] not in logged, service
    # ... and the roles still log in after the re-run.
    test_each_role_reaches_its_own_database(harness)
