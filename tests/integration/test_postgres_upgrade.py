"""The Postgres major upgrade job run for real: the harness's Postgres 15 (Debian's) holding a Synapse with
users, a room, messages and an image; the rendered job's scripts (configs/postgres-upgrade/upgrade.sh and the
backup job's own backup.sh, with the rendered env files) upgrade it into Postgres 16 (the build the PyPI
package `pgserver`, pinned in requirements.txt, ships); then Synapse boots on Postgres 16 with the same
users, history and media. Also: a failed backup stops the upgrade before anything changes, and the old data
directory is kept.

This module boots a harness of its own: it stops Synapse and swaps its Postgres.
"""

from __future__ import annotations

import importlib.util
import secrets
import shlex
import shutil
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from components import common, pins
from components.matrix import postgres_upgrade as component
from tests.integration import gobuild
from tests.integration.harness import harness_config, render, start, wait_until
from tests.integration.loopback import LOOPBACK
from tests.integration.test_backup import (assert_everything_is_back, databases, job, run, seed_history, server_keys,
                                           start_synapse, stop_synapse)

OLD_MAJOR, NEW_MAJOR = 15, 16
# The next major's image, as a bump of configs/images.yaml would pin it (the render only names it).
NEW_IMAGE = "postgres:16.10-bookworm"


def pgserver_bin() -> Path:
    """Postgres 16's programs from the pinned `pgserver` wheel (a relocatable build with its own share dir)."""
    spec = importlib.util.find_spec("pgserver")
    assert spec is not None and spec.submodule_search_locations, (
        "the Postgres 16 build comes from the PyPI package pgserver: .venv/bin/pip install -r requirements.txt")
    bin_dir = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
    version = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.split()[-1].startswith(f"{NEW_MAJOR}."), version.stdout
    return bin_dir


def upgrading_render():
    """The program's files for the first phase of the upgrade: images.yaml bumped to 16, postgresUpgradeFrom 15."""
    pinned = {**common.images(), "postgres": NEW_IMAGE}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pins, "images", lambda: pinned)
        return render({**harness_config(), "commstack:postgresUpgradeFrom": str(OLD_MAJOR)})


@pytest.fixture(scope="module")
def stack():
    new_bin = pgserver_bin()
    restic = gobuild.binary("restic")
    upgrading = upgrading_render()
    booted = start()
    try:
        password = booted.rendered.text("postgres", "/run/secrets/postgres-password")
        done = booted.psql_superuser("-c", f"alter role postgres password '{password}'")
        assert done.returncode == 0, done.stderr
        # The postgres OS user runs the new major's programs: a copy where it can reach them (the clone,
        # and so the venv, may sit under a directory only root can enter). The build is relocatable; its
        # programs find their libraries at $ORIGIN/../../../pgserver.libs (the wheel's layout, kept).
        install = booted.root / f"postgres-{NEW_MAJOR}-install"
        package = new_bin.parent.parent
        shutil.copytree(new_bin.parent, install / "pgserver" / "pginstall", ignore=shutil.ignore_patterns("include"))
        shutil.copytree(package.parent / "pgserver.libs", install / "pgserver.libs")
        yield SimpleNamespace(harness=booted, restic=restic, jobs={}, new_bin=install / "pgserver" / "pginstall" / "bin",
                              upgrading=upgrading)
    finally:
        booted.stop()


def upgrade_job(stack) -> Path:
    """The postgres-upgrade container's scripts for loopback: the backup job's (with the harness's secrets,
    see test_backup.job) plus the rendered upgrade.sh and upgrade-env.sh, re-pointed at this machine."""
    harness = stack.harness
    scripts = job(stack, "upgrade")
    if (scripts / "upgrade.sh").exists():
        return scripts
    rendered = stack.upgrading.files[component.CONTAINER]
    # The job carries the backup job's own scripts, byte for byte.
    for name in ("lib.sh", "backup.sh"):
        assert rendered[f"/commstack/{name}"] == (scripts / name).read_text(), name
    (scripts / "upgrade.sh").write_text(rendered[component.SCRIPT_PATH])
    values = {}
    for line in rendered[component.ENV_PATH].splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            values[key] = shlex.split(value)[0]
    assert (values["OLD_MAJOR"], values["NEW_MAJOR"]) == (str(OLD_MAJOR), str(NEW_MAJOR))
    password = harness.root / "upgrade-superuser-password"
    password.write_text(harness.rendered.text("postgres", "/run/secrets/postgres-password"))
    password.chmod(0o400)
    as_postgres = harness._postgres_user()
    if as_postgres:
        import os
        os.chown(password, as_postgres["user"], as_postgres["group"])
    values.update(NEW_BIN=str(stack.new_bin), NEW_DATA=str(harness.root / f"postgres-data-{NEW_MAJOR}"),
                  NEW_SOCKET_DIR=str(harness.root / f"postgres-{NEW_MAJOR}-run"), SUPERUSER_PASSWORD_FILE=str(password))
    (scripts / "upgrade-env.sh").write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items()))
    return scripts


def fingerprint(harness) -> dict[str, list[str]]:
    """Every table of every database with its row count (plain SQL: the Postgres 16 build has no libxml)."""
    counts = {}
    for db in databases(harness):
        query = harness.psql_superuser("-At", "-d", db, "-c", (
            "select string_agg(format('select %L || '' '' || count(*) from %I.%I', schemaname || '.' || relname, "
            "schemaname, relname), ' union all ') from pg_stat_user_tables"))
        assert query.returncode == 0, query.stderr
        if not query.stdout.strip():  # a database with no tables (a bridge that is not booted here)
            counts[db] = []
            continue
        done = harness.psql_superuser("-At", "-d", db, "-c", query.stdout.strip())
        assert done.returncode == 0, done.stderr
        counts[db] = sorted(done.stdout.splitlines())
    return counts


def can_log_in(harness, role: str) -> bool:
    done = harness.psql_superuser("-At", "-c", f"select rolcanlogin from pg_roles where rolname = '{role}'")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip() == "t"


def snapshot_count(scripts: Path) -> int:
    return len(snapshot_ids(scripts))


def snapshot_ids(scripts: Path) -> list[str]:
    """The stack's snapshots (not the drills' records), oldest first."""
    from commstack.operations import backup as backup_cli

    done = run(scripts, "snapshots.sh")
    assert done.returncode == 0, done.stderr
    return [s.short_id for s in backup_cli.parse_snapshots(done.stdout)]


def swap_to_new_major(stack, new_data: Path) -> None:
    """What the second `pulumi up` does: the old server stops, the new major's starts on the new volume
    (same port and socket), and the provisioner's init SQL runs again on it."""
    harness = stack.harness
    old = next(s for s in harness.services if s.name == "postgres")
    old.process.send_signal(signal.SIGINT)  # fast shutdown
    old.process.wait(timeout=60)
    service = harness.spawn(f"postgres-{NEW_MAJOR}", [
        str(stack.new_bin / "postgres"), "-D", str(new_data), "-p", str(harness.ports.postgres),
        "-k", str(harness.pg_socket_dir), "-c", f"listen_addresses={LOOPBACK}",
    ], **harness._postgres_user())
    wait_until(f"postgres {NEW_MAJOR}", lambda: harness.psql_superuser("-c", "select 1").returncode == 0,
               service.process, service.log)
    init_sql = harness.write("postgres-init", harness.init_sql_path,
                             harness.rendered.text("postgres-init", harness.init_sql_path))
    done = harness.psql_superuser("-f", str(init_sql))
    assert done.returncode == 0, done.stderr


def test_a_failed_backup_stops_the_upgrade_before_anything_changes(stack):
    harness = stack.harness
    scripts = upgrade_job(stack)
    assert run(scripts, "backup.sh").returncode == 0  # the repository exists, with the stack's password
    wrong = scripts.parent / "wrong-password"
    wrong.write_text("not-the-password\n")
    snapshots = snapshot_count(scripts)
    done = run(scripts, "upgrade.sh", RESTIC_PASSWORD_FILE=str(wrong))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "wrong password for the backup repository" in done.stderr
    assert "the backup before the upgrade failed, so the upgrade did not start; nothing was changed" in done.stderr
    new_data = harness.root / f"postgres-data-{NEW_MAJOR}"
    assert not new_data.exists() or not any(new_data.iterdir())
    assert can_log_in(harness, "synapse")  # no role was frozen
    assert requests.get(f"{harness.synapse_url}/_matrix/client/versions", timeout=5).ok  # still serving on 15
    assert snapshot_count(scripts) == snapshots


def test_an_upgrade_that_fails_after_its_dumps_leaves_none_behind(stack):
    """The dumps hold every message and the roles' dump every role's password verifier: whatever stops the job
    after step 3, they are gone, and the old major's roles log in again."""
    harness = stack.harness
    scripts = upgrade_job(stack)
    # The new major's programs, but an initdb that fails: the job stops at step 4, after dumping everything.
    broken = harness.root / "postgres-16-broken-initdb"
    broken.mkdir(exist_ok=True)
    for program in stack.new_bin.iterdir():
        if not (broken / program.name).exists():
            (broken / program.name).symlink_to(program)
    (broken / "initdb").unlink()
    (broken / "initdb").write_text("#!/bin/sh\necho 'initdb: disk full' >&2\nexit 1\n")
    (broken / "initdb").chmod(0o755)
    # upgrade.sh reads NEW_BIN from upgrade-env.sh (after env.sh): a copy of the job with that one line changed.
    variant = scripts.parent / "commstack-broken-initdb"
    if not variant.exists():
        shutil.copytree(scripts, variant)
        with (variant / "upgrade-env.sh").open("a") as env:
            env.write(f"export NEW_BIN={shlex.quote(str(broken))}\n")
    done = run(variant, "upgrade.sh")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "step 3/6" in done.stdout and "initdb of Postgres 16 failed" in done.stderr, done.stdout + done.stderr
    staging = scripts.parent / "backup" / "staging"
    assert not (staging / "upgrade").exists(), sorted(p.name for p in (staging / "upgrade").iterdir())
    assert not (staging / "postgres").exists()  # the backup's own dumps too
    assert can_log_in(harness, "synapse")
    new_data = harness.root / f"postgres-data-{NEW_MAJOR}"
    assert not new_data.exists() or not any(new_data.iterdir())
    # Step 2 ended Synapse's sessions; its pool reconnects, one failed request per dead connection, and the old
    # major serves again.
    wait_until("synapse on Postgres 15 again", lambda: requests.get(
        f"{harness.synapse_url}/_matrix/client/v3/register/available?username=nobody-yet", timeout=5).status_code == 200,
        timeout=60)


def test_upgrade_from_15_to_16_keeps_every_row_and_synapse_boots_on_16(stack):
    harness = stack.harness
    scripts = upgrade_job(stack)
    seeded = seed_history(stack)
    keys_before = server_keys(harness.synapse_url)
    snapshots_before = snapshot_ids(scripts)
    old_data = harness.root / "postgres-data"
    new_data = harness.root / f"postgres-data-{NEW_MAJOR}"

    done = run(scripts, "upgrade.sh")
    assert done.returncode == 0, done.stdout + done.stderr
    for step in range(1, 7):
        assert f"step {step}/6" in done.stdout, step
    assert "synapse: " in done.stdout and f"as in Postgres {OLD_MAJOR}" in done.stdout
    # The backup came first: a snapshot none of the earlier ones (the job's retention may have thinned those).
    assert snapshot_ids(scripts)[-1] not in snapshots_before
    assert (new_data / "PG_VERSION").read_text().strip() == str(NEW_MAJOR)
    assert (new_data / component.done_marker(OLD_MAJOR)).is_file()
    assert not (new_data / "commstack-upgrade-started").exists()
    # The old data directory is kept as it was (a rollback needs only its roles' LOGIN back).
    assert (old_data / "PG_VERSION").read_text().strip() == str(OLD_MAJOR)
    assert not can_log_in(harness, "synapse"), "writes to the old major must stop once it is dumped"
    frozen = fingerprint(harness)  # the old server's rows, as dumped (no one can write any more)
    assert len(frozen["synapse"]) > 100 and any(not line.endswith(" 0") for line in frozen["synapse"])

    again = run(scripts, "upgrade.sh")
    assert again.returncode == 0 and "already done" in again.stdout, again.stdout + again.stderr

    bridges = stop_synapse(harness)
    swap_to_new_major(stack, new_data)
    version = harness.psql_superuser("-At", "-c", "show server_version_num")
    assert int(version.stdout) // 10000 == NEW_MAJOR
    assert fingerprint(harness) == frozen  # every table and row count, and the media, as on 15
    assert can_log_in(harness, "synapse")
    assert (old_data / "PG_VERSION").read_text().strip() == str(OLD_MAJOR)
    start_synapse(harness, bridges)
    assert_everything_is_back(stack, seeded, keys_before)
    # A new message lands in Postgres 16.
    from tests.integration.test_backup import authed, login
    token = login(harness.synapse_url, seeded.user_id, seeded.password)
    sent = requests.put(f"{harness.synapse_url}/_matrix/client/v3/rooms/{seeded.room}/send/m.room.message/"
                        f"after-{secrets.token_hex(3)}", headers=authed(token), timeout=10,
                        json={"msgtype": "m.text", "body": "on postgres 16"})
    assert sent.status_code == 200, sent.text
