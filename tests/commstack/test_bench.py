"""`bench`: the dependency-chain measure, lazy SDK imports, and the report."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from commstack import bench, offline
from commstack.__main__ import main as cli

STACK = "urn:pulumi:dev::commstack::pulumi:pulumi:Stack::commstack-dev"


def reg(name: str, custom: bool = True, parent: str = STACK, deps=(), provider: str = "") -> offline.Registration:
    return offline.Registration(
        type="test:index:Thing" if custom else "test:index:Group", name=name, urn=f"urn:{name}", parent=parent,
        custom=custom, inputs={}, outputs={}, protect=None, retain_on_delete=None, ignore_changes=[],
        replace_on_changes=[], dependencies=list(deps), aliases=[], provider=provider)


def test_longest_chain_follows_dependencies_parents_and_providers_counting_only_custom_resources():
    evaluation = offline.Evaluation(stack="dev", registrations=[
        reg("provider"),
        reg("network", provider="urn:provider::provider-id"),
        reg("group", custom=False, deps=["urn:network"]),
        reg("db", parent="urn:group", deps=["urn:network"]),
        reg("app", deps=["urn:db"]),
        reg("lonely"),
    ])
    assert [r.name for r in bench.longest_chain(evaluation)] == ["provider", "network", "db", "app"]
    assert bench.longest_chain(offline.Evaluation(stack="empty")) == []


def test_dev_chain_is_a_real_path_through_the_program(dev_evaluation):
    chain = bench.longest_chain(dev_evaluation)
    by_urn = {r.urn: r for r in dev_evaluation.registrations}

    def waits_for(later, earlier) -> bool:
        edges = set(later.dependencies) | {later.parent} | {later.provider.rsplit("::", 1)[0]}
        return earlier.urn in edges or any(
            not by_urn[u].custom and waits_for(by_urn[u], earlier) for u in edges if u in by_urn)

    assert len(chain) >= 3 and all(r.custom for r in chain)
    assert all(waits_for(b, a) for a, b in zip(chain, chain[1:]))


def test_a_stack_without_cloudflare_never_imports_its_sdk():
    measured = bench.bench_stack("dev", repeat=1)
    assert measured.error is None
    assert "pulumi_cloudflare" not in measured.sdks and "pulumi_docker" in measured.sdks
    assert measured.resources > 0 and len(measured.process_seconds) == 1
    assert measured.process_seconds[0] > measured.evaluate_seconds[0] > 0


def test_sdk_import_time_sums_self_times_of_each_sdk_and_its_submodules():
    log = "\n".join([
        "import time: self [us] | cumulative | imported package",
        "import time:      1000 |       1000 |   pulumi",
        "import time:     50000 |      51000 | pulumi_aws",
        "import time:    250000 |     300000 |   pulumi_aws.ec2",
        "import time:      7000 |       7000 | pulumi_docker",
        "import time:       900 |        900 | yaml",
    ])
    seconds = bench.sdk_import_seconds(log)
    assert seconds["pulumi_aws"] == pytest.approx(0.30)
    assert seconds["pulumi_docker"] == pytest.approx(0.007)
    assert seconds["pulumi_cloudflare"] == 0.0


def test_report_lists_each_stack_chain_imports_and_harness():
    dev = bench.StackBench("dev", [2.0, 1.0, 3.0], [0.5, 0.4, 0.6], 90, 80, ["a", "b"], ["pulumi_docker"],
                           dict.fromkeys(bench.PROVIDER_SDKS, 0.0) | {"pulumi_docker": 0.12})
    stacks = [dev, bench.StackBench("prod", error="ModuleNotFoundError: x")]
    report = bench.format_report(stacks, (4.2, {"cold_boot_seconds": 3.9, "ok": True}, "ok")).splitlines()
    assert report[1].split()[:3] == ["dev", "90", "80"] and "1.00 / 2.00" in report[1]
    assert report[2].split()[0] == "prod" and report[2].endswith("error: ModuleNotFoundError: x")
    assert "dev: longest chain, 2 resources: a -> b" in report
    header = [line.split() for line in report].index(["stack", "docker", "aws", "cloudflare", "random", "tls"])
    assert report[header + 1].split() == ["dev", "0.12", "-", "-", "-", "-"]
    assert report[-1] == "loopback harness cold boot: 4.20 s wall (cold_boot_seconds 3.90)"


def test_missing_harness_is_skipped_with_a_message(monkeypatch):
    monkeypatch.setattr(bench, "HARNESS_MODULE", "tests.integration.no_such_harness")
    wall, report, message = bench.harness_boot()
    assert (wall, report) == (None, None) and message.startswith("skipped")


@pytest.mark.parametrize("argv, error", [
    (["bench", "--stack", "nope", "--skip-harness"], "no stack file for nope"),
    (["bench", "--repeat", "0"], "--repeat must be at least 1"),
])
def test_bad_arguments_fail_clearly(argv, error, capsys):
    assert cli(argv) == 2
    assert error in capsys.readouterr().err


def test_the_cold_environment_is_a_clean_clone_with_empty_caches(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for args in (["init", "-q"], ["add", "-A"]):
        (source / "committed.txt").write_text("at HEAD\n")
        subprocess.run(["git", *args], cwd=source, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one"], cwd=source, check=True)
    (source / "uncommitted.txt").write_text("not at HEAD\n")
    (source / ".venv").mkdir()
    clone, env = bench.fresh_environment(tmp_path / "fresh", source=source)
    assert sorted(p.name for p in clone.iterdir()) == [".git", "committed.txt"]
    for name in ("COMMSTACK_CACHE", "GOCACHE", "GOMODCACHE", "GOPATH", "PIP_CACHE_DIR"):
        cache = Path(env[name])
        assert cache.is_dir() and list(cache.iterdir()) == [] and cache.is_relative_to(tmp_path / "fresh"), name
    assert "VIRTUAL_ENV" not in env


def test_the_test_command_is_timed_with_its_status_and_summary(tmp_path):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    passed = bench.time_test_command("warm", checkout, command=[
        "bash", "-c", "echo collecting; sleep 0.2; echo '======= 3 passed in 0.2s ======='"])
    log = Path(passed.where)
    try:
        assert passed.returncode == 0 and passed.summary == "3 passed in 0.2s"
        assert 0.2 <= passed.seconds < 10
        assert not list(checkout.iterdir()) and "3 passed" in log.read_text()  # the log is kept outside the checkout
    finally:
        shutil.rmtree(log.parent)
    failed = bench.time_test_command("cold", checkout, log=tmp_path / "cold.log",
                                     command=["bash", "-c", "echo 'error: no go' >&2; exit 3"])
    assert (failed.returncode, failed.summary) == (3, "error: no go")


def test_report_gives_each_test_command_run_against_its_goal():
    runs = [bench.CommandTiming("cold", 19.5 * 60, 0, "412 passed in 700s"),
            bench.CommandTiming("warm", 7 * 60, 1, "1 failed, 411 passed")]
    report = bench.format_report([], (None, None, "skipped (--skip-harness)"), runs).splitlines()
    assert report[-2] == ("test command (./scripts/test), cold caches: 19.5 min (1170 s), within the 20 min goal; "
                          "passed: 412 passed in 700s")
    assert report[-1].startswith("test command (./scripts/test), warm caches: 7.0 min (420 s), OVER the 6 min goal; "
                                 "failed (exit 1)")
    assert "test command" not in bench.format_report([], (None, None, "skipped"))
