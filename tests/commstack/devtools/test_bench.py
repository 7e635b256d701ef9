"""`bench`: the dependency-chain measure, lazy SDK imports, and the report."""

from __future__ import annotations

import shutil
import statistics
import subprocess
from pathlib import Path

import pytest

from commstack.devtools import bench, offline
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


# -- call setup and the message chain (tests/integration/live_bench.py measures) -----------------


def test_percentiles_interpolate_between_closest_ranks():
    twenty = [float(v) for v in range(1, 21)]
    assert bench.percentile(twenty, 50) == 10.5 == statistics.median(twenty)
    # p95 of 20: rank 0.95 * 19 = 18.05, between the 19th (19.0) and the 20th (20.0).
    assert bench.percentile(twenty, 95) == pytest.approx(19.05)
    assert bench.percentile(twenty, 95) == pytest.approx(statistics.quantiles(twenty, n=20, method="inclusive")[-1])
    assert bench.percentile([3.0, 1.0, 2.0], 0) == 1.0 and bench.percentile([3.0, 1.0, 2.0], 100) == 3.0
    assert bench.percentile([7.0], 95) == 7.0
    assert bench.spread([0.4, 0.1, 0.3, 0.2]) == {"n": 4, "min": 0.1, "p50": pytest.approx(0.25),
                                                  "p95": pytest.approx(0.385), "max": 0.4}
    for values, q in (([], 50), ([1.0], 101)):
        with pytest.raises(ValueError):
            bench.percentile(values, q)


def test_the_chain_goal_is_at_most_twenty_percent_over_direct():
    assert bench.chain_verdict(0.120, 0.100) == (pytest.approx(1.2), "within")
    assert bench.chain_verdict(0.121, 0.100)[1] == "OVER"
    assert bench.chain_verdict(0.090, 0.100)[1] == "within"


CALLS = {"mode": "lk-jwt-service", "samples": [0.5, 0.7, 0.6, 0.4],
         "parts": {"openid": [0.01, 0.03], "lk_jwt": [0.02, 0.04], "connect": [0.2, 0.4], "publish": [0.1, 0.1]}}


def test_call_setup_reports_p50_p95_and_the_parts_with_lk_jwt_service():
    lines = bench.format_calls(CALLS)
    assert lines[0].startswith("call setup, 4 joins: OpenID token from Synapse and LiveKit token from lk-jwt-service")
    assert lines[0].endswith("p50 0.550 s, p95 0.685 s (min 0.400, max 0.700)")
    assert lines[1] == ("  per client, p50: OpenID token 0.020 s, lk-jwt-service 0.030 s, LiveKit connect 0.300 s, "
                        "publish microphone 0.100 s (the two clients run side by side)")


def test_call_setup_without_lk_jwt_service_says_so_and_never_claims_it():
    minted = {**CALLS, "mode": "minted", "parts": {"connect": [0.2], "publish": [0.1]}}
    lines = bench.format_calls(minted)
    assert "NOT including lk-jwt-service" in lines[0] and "COMMSTACK_LK_JWT_SERVICE_BIN" in lines[0]
    assert "minted with livekit-api" in lines[0] and "token from lk-jwt-service" not in lines[0]
    assert "lk-jwt-service" not in lines[1] and "LiveKit connect 0.200 s" in lines[1]


def _messages(chain: list[float], direct: list[float]) -> dict:
    return {"chain": {"samples": chain, "send": [c / 2 for c in chain]},
            "direct": {"samples": direct, "send": [d / 2 for d in direct]},
            "warmup": 5, "bases": {"chain": "https://matrix.example.org", "direct": "http://127.0.0.1:8008"}}


def test_message_round_trips_give_both_paths_and_their_ratio_against_the_goal():
    lines = bench.format_messages(_messages([0.030, 0.034, 0.032], [0.025, 0.027, 0.030]))
    assert lines[0] == ("message round trip, one user's send until the other's /sync returns it, 3 per path "
                        "after 5 warm-up, interleaved:")
    assert lines[1] == ("  chain  (https://matrix.example.org on Traefik's 443 with TLS -> nginx -> Synapse): "
                        "p50 32.0 ms, p95 33.8 ms (min 30.0, max 34.0; the send request alone p50 16.0 ms)")
    assert lines[2].startswith("  direct (Synapse's client listener http://127.0.0.1:8008): p50 27.0 ms")
    # 32.0 / 27.0 = 1.185; per iteration +5, +7, +2 ms.
    assert lines[3] == ("  chain/direct (medians): 1.19 (+19%), within the goal of at most +20%; paired by iteration "
                        "(less swayed by other load), the median of chain - direct is +5.0 ms")
    assert "1.33 (+33%), OVER the goal" in bench.format_messages(_messages([0.040], [0.030]))[3]
    # A hair under direct is +0%, never "-0%".
    assert "1.00 (+0%), within" in bench.format_messages(_messages([0.0998], [0.1]))[3]
    assert "0.96 (-4%), within" in bench.format_messages(_messages([0.096], [0.1]))[3]


def test_live_figures_follow_the_harness_line_with_the_load_they_were_measured_under():
    report = {"boot_wall_seconds": 11.0, "cold_boot_seconds": 9.5, "calls": CALLS,
              "messages": _messages([0.03], [0.03]), "load_average": 3.25, "cpus": 2}
    lines = bench.format_report([], (11.0, {"cold_boot_seconds": 9.5}, "ok"), live=(report, "ok")).splitlines()
    at = lines.index("loopback harness cold boot: 11.00 s wall (cold_boot_seconds 9.50)")
    assert lines[at + 1].startswith("call setup, 4 joins") and lines[at + 3].startswith("message round trip")
    assert lines[-1] == "(measured on a shared machine: load average 3.2 over the last minute, 2 CPUs)"
    failed = bench.format_report([], (None, None, "failed (exit 1): boom"), live=(None, "failed (exit 1): boom"))
    assert failed.splitlines()[-1] == "call setup and message round trips: failed (exit 1): boom"


def _args(*argv: str):
    import argparse

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_one_harness_boot_serves_the_cold_boot_the_calls_and_the_chain(monkeypatch):
    calls = []
    report = {"boot_wall_seconds": 12.0, "cold_boot_seconds": 9.0, "calls": CALLS}
    monkeypatch.setattr(bench, "live_harness", lambda *a: calls.append(a) or (report, "ok"))
    monkeypatch.setattr(bench, "harness_boot", lambda: pytest.fail("the harness was booted a second time"))
    assert bench.harness_and_live(_args()) == ((12.0, {"cold_boot_seconds": 9.0}, "ok"), (report, "ok"))
    assert calls == [(20, 50, 5)]
    bench.harness_and_live(_args("--joins", "3", "--messages", "0", "--warmup", "1"))
    assert calls[-1] == (3, 0, 1)


def test_without_joins_or_messages_only_the_cold_boot_runs_and_skip_harness_skips_all(monkeypatch):
    monkeypatch.setattr(bench, "live_harness", lambda *a: pytest.fail("measured calls"))
    monkeypatch.setattr(bench, "harness_boot", lambda: (5.0, {"cold_boot_seconds": 4.0}, "ok"))
    assert bench.harness_and_live(_args("--joins", "0", "--messages", "0")) == ((5.0, {"cold_boot_seconds": 4.0}, "ok"),
                                                                               None)
    assert bench.harness_and_live(_args("--skip-harness")) == ((None, None, "skipped (--skip-harness)"), None)


def test_a_failed_live_run_is_reported_on_both_lines(monkeypatch):
    monkeypatch.setattr(bench, "live_harness", lambda *a: (None, "failed (exit 1): HarnessError: no nginx"))
    harness, live = bench.harness_and_live(_args())
    assert harness == (None, None, "failed (exit 1): HarnessError: no nginx") and live == (None, harness[2])


def test_missing_live_bench_is_skipped_with_a_message(monkeypatch):
    monkeypatch.setattr(bench, "LIVE_MODULE", "tests.integration.no_such_bench")
    assert bench.live_harness(1, 1, 0) == (None, "skipped: tests.integration.no_such_bench does not exist in this checkout")


@pytest.mark.parametrize("flag", ["--joins", "--messages", "--warmup"])
def test_negative_counts_fail_clearly(flag, capsys):
    assert cli(["bench", "--skip-harness", flag, "-1"]) == 2
    assert f"{flag} must be 0 or more" in capsys.readouterr().err


def _load_phase(deployment: str, persisted: int, delivered: int, latencies: list[float], cpu: dict) -> dict:
    return {"deployment": deployment, "senders": 20, "syncers": 10, "rooms": 5, "seconds": 10.0,
            "persisted": persisted, "delivered": delivered, "send_to_sync": latencies, "cpu_seconds": cpu,
            "errors": [], "error_count": 0}


LOAD = {"preset": "balanced", "load_average": [1.5, 1.2, 0.9], "cpus": 2, "phases": [
    _load_phase("monolith", 600, 6000, [0.1, 0.2, 0.3, 0.4], {"synapse": 8.5, "postgres": 4.0, "nginx": 0.4}),
    _load_phase("balanced", 960, 9600, [0.05, 0.1, 0.2, 0.25],
                {"synapse": 1.0, "synapse-sync-1": 5.0, "synapse-writer-1": 4.0, "synapse-redis": 0.5,
                 "postgres": 5.0}),
]}


def test_load_reports_rates_latencies_cpu_and_the_ratio_against_the_goal():
    lines = bench.format_load(LOAD)
    text = "\n".join(lines)
    assert lines[0].startswith("load: 20 senders, 10 users long-polling /sync, 5 rooms")
    assert "monolith    60.0         600.0" in text and "balanced    96.0         960.0" in text
    assert "monolith: Synapse 0.85 in all; synapse 0.85, postgres 0.40, nginx 0.04" in text
    # Redis is not Synapse; the main process and the workers are.
    assert "balanced: Synapse 1.00 in all" in text
    assert "balanced / monolith: 1.60x events persisted per second; goal met" in text
    assert "load average 1.5, 1.2, 0.9" in text and "2 CPUs" in text


def test_the_load_goal_needs_both_the_throughput_and_a_p95_no_worse():
    monolith = bench.load_totals([LOAD["phases"][0]])
    slower = bench.load_totals([_load_phase("balanced", 960, 9600, [0.5, 0.6], {})])
    assert bench.load_verdict(monolith, slower)[1].startswith("goal NOT met")
    short = bench.load_totals([_load_phase("balanced", 700, 7000, [0.01], {})])
    ratio, verdict = bench.load_verdict(monolith, short)
    assert round(ratio, 3) == 1.167 and verdict.startswith("goal NOT met")


def test_load_runs_on_the_live_bench_s_one_boot(monkeypatch):
    calls = []
    report = {"boot_wall_seconds": 12.0, "cold_boot_seconds": 9.0, "load": LOAD}
    monkeypatch.setattr(bench, "live_harness", lambda *a, **kw: calls.append((a, kw)) or (report, "ok"))
    monkeypatch.setattr(bench, "harness_boot", lambda: pytest.fail("the harness was booted a second time"))
    bench.harness_and_live(_args("--joins", "0", "--messages", "0", "--load", "--senders", "4", "--load-seconds", "2"))
    assert calls == [((0, 0, 5), {"load": {"preset": "balanced", "senders": 4, "syncers": 10, "rooms": 5,
                                           "seconds": 2.0, "warmup": 5.0, "rounds": 1}})]


@pytest.mark.parametrize("argv", [["--load", "--senders", "0"], ["--load", "--load-seconds", "0"],
                                  ["--load", "--load-preset", "none"]])
def test_bad_load_sizes_fail_clearly(argv, capsys):
    assert cli(["bench", "--skip-harness", *argv]) == 2
    assert argv[1] in capsys.readouterr().err
