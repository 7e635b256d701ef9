"""Postgres major upgrades in the offline engine: a major change in configs/images.yaml is refused
before any resource exists unless the upgrade runs; the upgrade's two phases render the one-shot job,
the new protected volume, and keep the old one."""

from __future__ import annotations

import re
import shlex

import pytest

from commstack.devtools import offline
from components import common, pins
from components.matrix import postgres_upgrade
from components.matrix.postgres_upgrade import NEW_DATA_DIR, render_upgrade_env
from components.settings import LEGACY_POSTGRES_MAJOR, SettingsError, postgres_image_major
from tests import test_hardening as hardening
from tests.conftest import TEST_SECRETS, stack_config

CONTAINER = "docker:index/container:Container"
VOLUME = "docker:index/volume:Volume"
NEXT_MAJOR_IMAGE = "postgres:16.10-bookworm"


@pytest.fixture
def next_major(monkeypatch):
    """configs/images.yaml as a bump of postgres to 16 leaves it: postgres-15 still pinned."""
    pinned = dict(common.images())
    pinned["postgres"] = NEXT_MAJOR_IMAGE
    monkeypatch.setattr(pins, "images", lambda: pinned)
    return pinned


def evaluate(stack="dev", record=None, **overrides) -> offline.Evaluation:
    return offline.evaluate(stack, config=stack_config(stack, **overrides), secret_keys=list(TEST_SECRETS),
                            record=record or offline.Evaluation(stack=stack))


def refused(stack="dev", **overrides) -> list[str]:
    record = offline.Evaluation(stack=stack)
    with pytest.raises(SettingsError) as raised:
        evaluate(stack, record=record, **overrides)
    assert record.registrations == [], "resources were registered before the refusal"
    return raised.value.problems


def containers(ev: offline.Evaluation) -> dict[str, dict]:
    return {reg.plain_inputs["name"]: reg.plain_inputs for reg in ev.of_type(CONTAINER)}


def volumes(ev: offline.Evaluation) -> dict[str, offline.Registration]:
    return {reg.plain_inputs["name"]: reg for reg in ev.of_type(VOLUME)}


def server_image(ev: offline.Evaluation) -> str:
    return ev.named("matrix-postgres-image").plain_inputs["name"]


def test_images_yaml_pins_the_old_majors_a_stack_can_upgrade_from():
    pinned = common.images()
    current = postgres_image_major(pinned["postgres"])
    assert current == LEGACY_POSTGRES_MAJOR  # today's stacks are all on it
    older = {k: v for k, v in pinned.items() if re.fullmatch(r"postgres-\d+", k)}
    assert older, "a bump of postgres to a new major must keep the old one as postgres-<major>"
    for key, reference in older.items():
        major = int(key.split("-")[1])
        assert postgres_image_major(reference) == major and major <= current, (key, reference)
        assert reference.startswith("postgres:") and "latest" not in reference
    assert pinned[f"postgres-{current}"] == pinned["postgres"]


@pytest.mark.parametrize("reference, major", [("postgres:15.14-bookworm", 15), ("postgres:16", 16),
                                              ("postgres:17.2", 17), ("postgres:bookworm", None)])
def test_postgres_image_major(reference, major):
    assert postgres_image_major(reference) == major


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_a_major_bump_without_the_upgrade_is_refused_with_the_steps(next_major, stack):
    problems = refused(stack)
    assert len(problems) == 1, problems
    (problem,) = problems
    assert problem.startswith("commstack:postgresUpgradeFrom: configs/images.yaml runs postgres:16.10-bookworm "
                              "(Postgres 16) but this stack's data is on Postgres 15")
    assert "Nothing was changed" in problem
    for step in ("python -m commstack backup", "pulumi config set commstack:postgresUpgradeFrom 15",
                 "pulumi config set commstack:postgresMajor 16", "pulumi up"):
        assert step in problem, step
    assert problem.endswith("Fix: pulumi config set commstack:postgresUpgradeFrom 15")


def test_a_stack_recorded_on_a_newer_major_than_the_image_is_refused():
    (problem,) = refused(postgresMajor="16")
    assert problem.startswith("commstack:postgresMajor: this stack's data is on Postgres 16, but configs/images.yaml "
                              "runs postgres:15.14-bookworm (Postgres 15), an older major")


@pytest.mark.parametrize("overrides, key, what", [
    ({"postgresUpgradeFrom": "15"}, "commstack:postgresUpgradeFrom", "15 is not older than configs/images.yaml's Postgres 15"),
    ({"postgresMajor": "fifteen"}, "commstack:postgresMajor", "must be a Postgres major version number"),
    ({"postgresUpgradeFrom": "9.6"}, "commstack:postgresUpgradeFrom", "must be a Postgres major version number"),
])
def test_bad_postgres_settings_are_refused(overrides, key, what):
    problems = refused(**overrides)
    assert any(p.startswith(f"{key}:") and what in p for p in problems), problems


@pytest.mark.parametrize("overrides, key, what", [
    ({"postgresUpgradeFrom": "14"}, "commstack:postgresUpgradeFrom",
     "configs/images.yaml pins no image for Postgres 14 (a postgres-14 entry)"),
    ({"postgresUpgradeFrom": "15", "postgresMajor": "14"}, "commstack:postgresMajor",
     "it is 15 (the job has not switched yet) or 16 (switched), not 14"),
    ({"postgresUpgradeFrom": "15", "backup": "false"}, "commstack:backup", "takes a backup first"),
])
def test_an_upgrade_that_cannot_run_is_refused(next_major, overrides, key, what):
    problems = refused(**overrides)
    assert any(p.startswith(f"{key}:") and what in p for p in problems), problems


def test_steady_stacks_keep_their_volume_and_run_no_job():
    ev = evaluate()
    assert set(volumes(ev)) >= {"postgres-data"} and "postgres-data-16" not in volumes(ev)
    # The legacy major keeps the resource name it always had: no replacement of the data.
    assert volumes(ev)["postgres-data"].name == "matrix-postgres-data"
    assert "postgres-upgrade" not in containers(ev)
    assert server_image(ev) == common.images()["postgres"]


def test_upgrading_runs_the_one_shot_job_into_a_new_protected_volume(next_major):
    ev = evaluate(postgresUpgradeFrom="15")
    vols = volumes(ev)
    for name in ("postgres-data", "postgres-data-16"):
        assert vols[name].protect is True and vols[name].retain_on_delete is True, name
    # The server stays on the old major and its volume while the job moves the data.
    assert server_image(ev) == next_major["postgres-15"]
    server = containers(ev)["postgres"]
    assert [v["volumeName"] for v in server["volumes"]] == ["postgres-data"]
    assert not any(e.startswith("COMMSTACK_POSTGRES_UPGRADED_FROM=") for e in server["envs"])

    job_reg = ev.named("matrix-postgres-upgrade-container")
    job = job_reg.plain_inputs
    assert job["name"] == "postgres-upgrade"
    assert job["restart"] == "no" and job["mustRun"] is False and job["attach"] is True
    assert job["entrypoints"] == ["/bin/sh", postgres_upgrade.SCRIPT_PATH]
    # In the backup job's image (the new major's Postgres plus restic), on the database network only.
    backup = containers(ev)["backup"]
    assert job["image"] == backup["image"]
    assert [n["name"] for n in job["networksAdvanced"]] == ["commstack-matrix-database"]
    assert not job.get("ports")
    mounts = {v["containerPath"]: v["volumeName"] for v in job["volumes"]}
    assert mounts[NEW_DATA_DIR] == "postgres-data-16"
    assert "postgres-data" not in mounts.values(), "the job never mounts the old data"
    for path, name in {v["containerPath"]: v["volumeName"] for v in backup["volumes"]}.items():
        assert mounts[path] == name  # the backup's media and repository
    # It runs after the old server is provisioned and the backup job exists.
    assert ev.named("matrix-postgres-init-container").urn in job_reg.dependencies
    assert ev.named("matrix-backup-container").urn in job_reg.dependencies

    uploads = {u["file"]: u for u in job["uploads"]}
    script = uploads[postgres_upgrade.SCRIPT_PATH]
    assert script["content"] == (postgres_upgrade.UPGRADE_CONFIGS / "upgrade.sh").read_text()
    assert script["executable"] is True
    for name in ("lib.sh", "backup.sh", "env.sh"):
        assert uploads[f"/commstack/{name}"]["content"] == {u["file"]: u for u in backup["uploads"]}[f"/commstack/{name}"]["content"]
    env = dict(line[len("export "):].split("=", 1) for line in uploads[postgres_upgrade.ENV_PATH]["content"].splitlines()
               if line.startswith("export "))
    env = {k: shlex.split(v)[0] for k, v in env.items()}
    assert env["OLD_MAJOR"] == "15" and env["NEW_MAJOR"] == "16"
    assert env["NEW_BIN"] == "/usr/lib/postgresql/16/bin" and env["NEW_DATA"] == NEW_DATA_DIR
    password = uploads[postgres_upgrade.SUPERUSER_PASSWORD_FILE]
    assert (password["permissions"], password["owner"]) == ("0400", "999")
    assert password["content"] == {u["file"]: u for u in server["uploads"]}["/run/secrets/postgres-password"]["content"]
    plain = str(offline.strip_secrets(job_reg.inputs))
    assert password["content"] not in plain


@pytest.mark.parametrize("upgraded", [False, True])
def test_both_phases_keep_every_container_hardened_and_postgres_private(next_major, upgraded):
    ev = evaluate(postgresUpgradeFrom="15", **({"postgresMajor": "16"} if upgraded else {}))
    hardening.test_every_container_the_program_makes_is_a_known_container(ev)
    hardening.test_every_container_is_confined(ev)
    joined = hardening.networks_of(ev)
    assert joined["postgres"] == {"commstack-matrix-database"}
    assert joined.get("postgres-upgrade", {"commstack-matrix-database"}) == {"commstack-matrix-database"}


def test_upgraded_runs_the_new_major_on_the_new_volume_and_keeps_the_old(next_major):
    ev = evaluate(postgresUpgradeFrom="15", postgresMajor="16")
    vols = volumes(ev)
    assert vols["postgres-data"].protect is True and vols["postgres-data"].retain_on_delete is True
    assert vols["postgres-data"].name == "matrix-postgres-data"  # the same resource: kept, not recreated
    assert vols["postgres-data-16"].protect is True
    assert server_image(ev) == NEXT_MAJOR_IMAGE
    server = containers(ev)["postgres"]
    assert [v["volumeName"] for v in server["volumes"]] == ["postgres-data-16"]
    # The wrapper refuses the new volume unless the job marked it done.
    assert "COMMSTACK_POSTGRES_UPGRADED_FROM=15" in server["envs"]
    assert "postgres-upgrade" not in containers(ev)


def test_upgrade_env_is_quoted_and_names_the_new_majors_programs():
    text = render_upgrade_env(old_major=15, new_major=17, staging_dir="/staging")
    assert "export NEW_BIN=/usr/lib/postgresql/17/bin" in text
    assert "export NEW_SOCKET_DIR=/staging/postgres-17" in text
    assert text.splitlines()[0].startswith("# Generated by commstack")


# -- the server's entrypoint wrapper (configs/postgres/entrypoint.sh), run for real by sh ---------------------


def run_entrypoint(tmp_path, data_files: dict[str, str], **env: str):
    import os
    import subprocess

    from components.matrix.postgres import ENTRYPOINT_SCRIPT

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    image_entrypoint = bin_dir / "docker-entrypoint.sh"  # stands in for the image's: says it was reached
    image_entrypoint.write_text('#!/bin/sh\necho "image entrypoint: $*"\n')
    image_entrypoint.chmod(0o755)
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    for name, content in data_files.items():
        (data / name).write_text(content)
    return subprocess.run(["sh", str(ENTRYPOINT_SCRIPT), "postgres"], capture_output=True, text=True, timeout=30,
                          env={"PATH": f"{bin_dir}:{os.environ['PATH']}", "PGDATA": str(data), **env})


def test_entrypoint_refuses_an_old_majors_data_directory(tmp_path):
    done = run_entrypoint(tmp_path, {"PG_VERSION": "15\n"}, PG_MAJOR="16")
    assert done.returncode == 1 and "image entrypoint" not in done.stdout
    assert "holds Postgres 15 data, but this is a Postgres 16 server" in done.stderr
    assert "pulumi config set commstack:postgresUpgradeFrom 15" in done.stderr


@pytest.mark.parametrize("files", [{}, {"PG_VERSION": "16\n"}])
def test_entrypoint_starts_the_image_on_its_own_major_or_an_empty_directory(tmp_path, files):
    done = run_entrypoint(tmp_path, files, PG_MAJOR="16")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "image entrypoint: postgres\n"


def test_entrypoint_after_an_upgrade_needs_the_jobs_done_marker(tmp_path):
    unfinished = run_entrypoint(tmp_path, {"PG_VERSION": "16\n"}, PG_MAJOR="16", COMMSTACK_POSTGRES_UPGRADED_FROM="15")
    assert unfinished.returncode == 1 and "the upgrade job" in unfinished.stderr and "did not finish" in unfinished.stderr
    marked = run_entrypoint(tmp_path, {"commstack-upgraded-from-15": "2026-12-02T00:00:00Z\n"}, PG_MAJOR="16",
                            COMMSTACK_POSTGRES_UPGRADED_FROM="15")
    assert marked.returncode == 0 and marked.stdout == "image entrypoint: postgres\n", marked.stderr
