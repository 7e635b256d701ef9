"""`python -m commstack bench`: how heavy is each committed stack?

For every Pulumi.<stack>.yaml it evaluates the whole program on the offline
engine in fresh interpreters (so SDK import costs count, as they do for
`pulumi up`), several times, and reports min/median times, the resource
count and the longest dependency chain (parent, provider and dependency
edges; its custom resources are created one after another, so its length is
a floor on `pulumi up`'s duration). A first, untimed run under
`python -X importtime` shows what each provider SDK costs that stack,
lazily loaded submodules (`aws.ec2`, …) included. Last, the loopback
harness's cold boot when tests/integration/harness exists.

On that one harness boot (tests/integration/live_bench.py; its wall time then counts from the
render, in the measuring process) it also times, unless `--joins 0 --messages 0`:
- call setup, `--joins` times (default 20), p50/p95: two users' OpenID tokens from Synapse and
  LiveKit tokens from lk-jwt-service via Traefik, until both LiveKit SDK clients are in the room,
  each publishing a microphone track and seeing the other. lk-jwt-service cannot be built in CI;
  without COMMSTACK_LK_JWT_SERVICE_BIN the figure starts from tokens minted with livekit-api and
  says so.
- message round trips, `--messages` per path (default 50): a send until the other user's /sync
  returns it, through the chain (Traefik on 443 with TLS, nginx, Synapse) and direct to Synapse,
  interleaved; the ratio of their medians against the goal of at most 20% added by the chain.

With `--load` it also loads that boot's Matrix core and, booted beside it, the same stack with a
worker preset (`--load-preset`, balanced by default; tests/integration/load_bench.py): `--senders`
users sending back to back and `--syncers` users long-polling /sync, through Traefik, nginx and
Synapse; events persisted and delivered per second, send-to-sync p50/p95, the CPU of each process,
and the preset's throughput over the monolith's against the goal (1.5x with p95 no worse).

With `--test-command` it also times the test command CI runs (./scripts/test) in this checkout,
with the caches as they are; with `--cold`, as on a fresh machine instead: in a clean clone of
HEAD in a temp dir with no venv and empty pip, Go build, Go module and commstack caches
(COMMSTACK_CACHE), then a second time there with those caches warm. The goals are 20 minutes
cold and 6 minutes warm. Debian packages are not uninstalled for the cold run: their install
time is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from commstack.devtools import offline

PROVIDER_SDKS = ("pulumi_docker", "pulumi_aws", "pulumi_cloudflare", "pulumi_random", "pulumi_tls")
HARNESS_MODULE = "tests.integration.harness"
HARNESS_TIMEOUT = 600
TEST_COMMAND = ["./scripts/test"]
TEST_COMMAND_TIMEOUT = 90 * 60  # CI's limit
TEST_COMMAND_GOALS = {"cold": 20 * 60, "warm": 6 * 60}

_MEASURE = "import json, sys; from commstack.devtools.bench import measure_stack; print(json.dumps(measure_stack(sys.argv[1])))"


@dataclass
class StackBench:
    stack: str
    process_seconds: list[float] = field(default_factory=list)
    evaluate_seconds: list[float] = field(default_factory=list)
    resources: int = 0
    custom_resources: int = 0
    chain: list[str] = field(default_factory=list)
    sdks: list[str] = field(default_factory=list)
    sdk_import_seconds: dict[str, float] = field(default_factory=dict)
    error: Optional[str] = None


def longest_chain(evaluation: offline.Evaluation) -> list[offline.Registration]:
    """The custom resources on the longest path of the creation-order graph.

    A resource waits for its dependencies, its parent and its explicit provider;
    components take no time, so only custom resources count toward the length.
    """
    by_urn = {r.urn: r for r in evaluation.registrations}
    best: dict[str, list[offline.Registration]] = {}

    def waits_for(reg: offline.Registration) -> set[str]:
        edges = set(reg.dependencies) | {reg.parent}
        if reg.provider:
            edges.add(reg.provider.rsplit("::", 1)[0])  # a provider reference is "<urn>::<id>"
        return {u for u in edges if u in by_urn and u != reg.urn}

    def chain_to(reg: offline.Registration) -> list[offline.Registration]:
        if reg.urn not in best:
            longest = max((chain_to(by_urn[u]) for u in sorted(waits_for(reg))), key=len, default=[])
            best[reg.urn] = longest + [reg] if reg.custom else longest
        return best[reg.urn]

    # In URN order, so that ties resolve the same way on every run.
    return max((chain_to(r) for r in sorted(evaluation.registrations, key=lambda r: r.urn)), key=len, default=[])


def measure_stack(stack: str) -> dict:
    """One evaluation in this process (run in a fresh interpreter by `bench`)."""
    from commstack.devtools.render import offline_config

    config, secret_keys, _ = offline_config(stack)
    start = time.perf_counter()
    evaluation = offline.evaluate(stack, config=config, secret_keys=secret_keys)
    elapsed = time.perf_counter() - start
    return {
        "evaluateSeconds": elapsed,
        "resources": len(evaluation.registrations),
        "customResources": sum(r.custom for r in evaluation.registrations),
        "chain": [r.name for r in longest_chain(evaluation)],
        "sdks": [m for m in PROVIDER_SDKS if m in sys.modules],
    }


def _python(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=offline.ROOT, capture_output=True, text=True, timeout=timeout)


def sdk_import_seconds(importtime_log: str) -> dict[str, float]:
    """Seconds spent executing each provider SDK's modules, from `-X importtime` output
    ("import time: self [us] | cumulative | module"); self times, so dependencies such as
    pulumi itself are not counted twice."""
    totals = dict.fromkeys(PROVIDER_SDKS, 0.0)
    for line in importtime_log.splitlines():
        if not line.startswith("import time:"):
            continue
        fields = line[len("import time:"):].split("|")
        if len(fields) != 3 or not fields[0].strip().isdigit():
            continue  # the header line
        module = fields[2].strip()
        sdk = module.split(".", 1)[0]
        if sdk in totals:
            totals[sdk] += int(fields[0]) / 1e6
    return totals


def _failure(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("import time:")]
    return lines[-1] if lines else f"exit status {proc.returncode}"


def bench_stack(stack: str, repeat: int) -> StackBench:
    result = StackBench(stack)
    warmup = _python("-X", "importtime", "-c", _MEASURE, stack, timeout=300)
    if warmup.returncode != 0:
        result.error = _failure(warmup)
        return result
    result.sdk_import_seconds = sdk_import_seconds(warmup.stderr)
    for _ in range(repeat):
        start = time.perf_counter()
        proc = _python("-c", _MEASURE, stack, timeout=300)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            result.error = _failure(proc)
            return result
        measured = json.loads(proc.stdout.strip().splitlines()[-1])
        result.process_seconds.append(wall)
        result.evaluate_seconds.append(measured["evaluateSeconds"])
        result.resources, result.custom_resources = measured["resources"], measured["customResources"]
        result.chain, result.sdks = measured["chain"], measured["sdks"]
    return result


def harness_boot() -> tuple[Optional[float], Optional[dict], str]:
    """(wall seconds, the harness's JSON report, message) of one cold boot."""
    harness = offline.ROOT.joinpath(*HARNESS_MODULE.split("."))
    if not (harness.with_suffix(".py").exists() or (harness / "__init__.py").exists()):
        return None, None, f"skipped: {HARNESS_MODULE} does not exist in this checkout"
    start = time.perf_counter()
    try:
        proc = _python("-m", HARNESS_MODULE, "--boot-only", "--json", timeout=HARNESS_TIMEOUT)
    except subprocess.TimeoutExpired:
        return None, None, f"failed: no answer within {HARNESS_TIMEOUT} s"
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return wall, None, f"failed (exit {proc.returncode}): {lines[-1] if lines else 'no output'}"
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return wall, None, "booted, but its --json output did not parse"
    return wall, report, "ok"


# -- calls and the message chain, on the booted harness (tests/integration/live_bench.py) ---------

LIVE_MODULE = "tests.integration.live_bench"
LIVE_TIMEOUT = 1200
DEFAULT_JOINS = 20
DEFAULT_MESSAGES = 50
DEFAULT_WARMUP = 5
CHAIN_GOAL = 1.20  # the chain (Traefik, nginx) may add at most 20% to Synapse's own round trip
CALL_PARTS = (("openid", "OpenID token"), ("lk_jwt", "lk-jwt-service"), ("connect", "LiveKit connect"),
              ("publish", "publish microphone"))


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between the closest ranks
    (numpy's default, statistics.quantiles' "inclusive"): p50 is the median, p95 of 20 values
    lies between the 19th and the 20th."""
    if not values:
        raise ValueError("no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not between 0 and 100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def spread(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "min": min(values), "p50": percentile(values, 50), "p95": percentile(values, 95),
            "max": max(values)}


def live_harness(joins: int, messages: int, warmup: int,
                 load: Optional[dict] = None) -> tuple[Optional[dict], str]:
    """(the live bench's JSON report, message): one harness boot, then the call setups, the
    message round trips and (with `load`) the load phases on it. lk-jwt-service takes part when
    COMMSTACK_LK_JWT_SERVICE_BIN is set."""
    harness = offline.ROOT.joinpath(*LIVE_MODULE.split(".")).with_suffix(".py")
    if not harness.exists():
        return None, f"skipped: {LIVE_MODULE} does not exist in this checkout"
    load_args = []
    if load:
        load_args = ["--load", load["preset"], "--senders", str(load["senders"]), "--syncers", str(load["syncers"]),
                     "--rooms", str(load["rooms"]), "--load-seconds", str(load["seconds"]),
                     "--load-warmup", str(load["warmup"]), "--load-rounds", str(load["rounds"])]
    try:
        proc = _python("-m", LIVE_MODULE, "--joins", str(joins), "--messages", str(messages), "--warmup", str(warmup),
                       *load_args, "--json", timeout=LIVE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return None, f"failed: no answer within {LIVE_TIMEOUT} s"
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        return None, f"failed (exit {proc.returncode}): {lines[-1] if lines else 'no output'}"
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1]), "ok"
    except (json.JSONDecodeError, IndexError):
        return None, "ran, but its --json output did not parse"


def chain_verdict(chain_p50: float, direct_p50: float) -> tuple[float, str]:
    """(chain/direct ratio of the medians, "within" or "OVER" the 20% goal)."""
    ratio = chain_p50 / direct_p50
    return ratio, "within" if ratio <= CHAIN_GOAL else "OVER"


def format_calls(calls: dict) -> list[str]:
    total = spread(calls["samples"])
    if calls["mode"] == "lk-jwt-service":
        what = ("OpenID token from Synapse and LiveKit token from lk-jwt-service (both via Traefik on 443), "
                "then both SDK clients in the room")
    else:
        what = ("NOT including lk-jwt-service (not booted: set COMMSTACK_LK_JWT_SERVICE_BIN to its binary); "
                "from LiveKit tokens minted with livekit-api from the program's key to both SDK clients in the room")
    lines = [f"call setup, {total['n']} joins: {what}, each publishing a microphone track and seeing the other: "
             f"p50 {total['p50']:.3f} s, p95 {total['p95']:.3f} s (min {total['min']:.3f}, max {total['max']:.3f})"]
    parts = [f"{label} {percentile(calls['parts'][key], 50):.3f} s" for key, label in CALL_PARTS
             if calls.get("parts", {}).get(key)]
    if parts:
        lines.append(f"  per client, p50: {', '.join(parts)} (the two clients run side by side)")
    return lines


def format_messages(messages: dict) -> list[str]:
    chain, direct = spread(messages["chain"]["samples"]), spread(messages["direct"]["samples"])
    ratio, verdict = chain_verdict(chain["p50"], direct["p50"])
    bases = messages.get("bases", {})

    def row(name: str, where: str, figures: dict) -> str:
        send = percentile(messages[name]["send"], 50) if messages[name].get("send") else None
        return (f"  {name:<6} ({where}): p50 {figures['p50'] * 1000:.1f} ms, p95 {figures['p95'] * 1000:.1f} ms "
                f"(min {figures['min'] * 1000:.1f}, max {figures['max'] * 1000:.1f}"
                + (f"; the send request alone p50 {send * 1000:.1f} ms)" if send is not None else ")"))

    return [
        f"message round trip, one user's send until the other's /sync returns it, {chain['n']} per path "
        f"after {messages.get('warmup', 0)} warm-up, interleaved:",
        row("chain", f"{bases.get('chain', 'https://matrix.<domain>')} on Traefik's 443 with TLS -> nginx -> Synapse",
            chain),
        row("direct", f"Synapse's client listener {bases.get('direct', '')}".rstrip(), direct),
        f"  chain/direct (medians): {ratio:.2f} ({round((ratio - 1) * 100):+d}%), {verdict} the goal of at most "
        f"+{round((CHAIN_GOAL - 1) * 100)}%; paired by iteration (less swayed by other load), "
        f"the median of chain - direct is {paired_difference(messages) * 1000:+.1f} ms",
    ]


def paired_difference(messages: dict) -> float:
    """The median, over iterations, of (chain - direct) for the two samples taken side by side."""
    return statistics.median(c - d for c, d in zip(messages["chain"]["samples"], messages["direct"]["samples"]))


# -- load: the monolith against a worker preset (tests/integration/load_bench.py) ------------------------

LOAD_GOAL = 1.5  # the preset persists at least 1.5 times the monolith's events per second, with p95 no worse
SYNAPSE_PROCESSES = ("synapse",)  # and every synapse-<group>-<n> worker


def load_totals(phases: list[dict]) -> dict:
    """One deployment's phases together: events per second persisted and delivered, send-to-sync
    p50/p95, and CPU seconds per process per measured second."""
    seconds = sum(p["seconds"] for p in phases)
    latencies = [x for p in phases for x in p["send_to_sync"]]
    cpu: dict[str, float] = {}
    for phase in phases:
        for name, used in phase["cpu_seconds"].items():
            cpu[name] = cpu.get(name, 0.0) + used
    return {"persisted_per_second": sum(p["persisted"] for p in phases) / seconds,
            "delivered_per_second": sum(p["delivered"] for p in phases) / seconds,
            "p50": percentile(latencies, 50) if latencies else None,
            "p95": percentile(latencies, 95) if latencies else None,
            "cpu_per_second": {name: used / seconds for name, used in cpu.items()},
            "errors": sum(p["error_count"] for p in phases), "seconds": seconds}


def load_verdict(monolith: dict, preset: dict) -> tuple[float, str]:
    """(the preset's throughput over the monolith's, whether the goal is met)."""
    ratio = preset["persisted_per_second"] / monolith["persisted_per_second"]
    p95_ok = preset["p95"] is not None and monolith["p95"] is not None and preset["p95"] <= monolith["p95"]
    met = ratio >= LOAD_GOAL and p95_ok
    return ratio, ("goal met" if met else
                   f"goal NOT met (needs >= {LOAD_GOAL:.1f}x and p95 no worse than the monolith's)")


def format_load(load: dict) -> list[str]:
    phases = load["phases"]
    first = phases[0]
    preset = load["preset"]
    totals = {name: load_totals([p for p in phases if p["deployment"] == name]) for name in ("monolith", preset)}
    lines = [f"load: {first['senders']} senders, {first['syncers']} users long-polling /sync, {first['rooms']} rooms, "
             f"through Traefik (TLS), nginx and Synapse; {len(phases) // 2} round(s) of "
             f"{first['seconds']:.0f} s per deployment"]

    def ms(value: Optional[float]) -> str:
        return "-" if value is None else f"{value * 1000:.0f} ms"

    rows = [("deployment", "persisted/s", "delivered/s", "send-to-sync p50", "p95", "errors")]
    for name, total in totals.items():
        rows.append((name, f"{total['persisted_per_second']:.1f}", f"{total['delivered_per_second']:.1f}",
                     ms(total["p50"]), ms(total["p95"]), str(total["errors"])))
    lines += ["  " + line for line in _table(rows)]
    lines.append("  CPU (cores busy over the measured seconds):")
    for name, total in totals.items():
        cpu = total["cpu_per_second"]
        synapse = sum(v for k, v in cpu.items() if k.startswith(SYNAPSE_PROCESSES) and k != "synapse-redis")
        parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]))
        lines.append(f"    {name}: Synapse {synapse:.2f} in all; {parts}")
    ratio, verdict = load_verdict(totals["monolith"], totals[preset])
    lines.append(f"  {preset} / monolith: {ratio:.2f}x events persisted per second; {verdict}")
    average = load.get("load_average")
    if average:
        lines.append(f"  (a shared machine: load average {average[0]:.1f}, {average[1]:.1f}, {average[2]:.1f} "
                     f"over 1, 5, 15 minutes after the run, {load.get('cpus')} CPUs)")
    return lines


def format_live(report: Optional[dict], message: str) -> list[str]:
    if report is None:
        return [f"call setup and message round trips: {message}"]
    lines = []
    if "calls" in report:
        lines += format_calls(report["calls"])
    if "messages" in report:
        lines += format_messages(report["messages"])
    if "load" in report:
        lines += format_load(report["load"])
    if "load_average" in report:
        lines.append(f"(measured on a shared machine: load average {report['load_average']:.1f} "
                     f"over the last minute, {report.get('cpus')} CPUs)")
    return lines


@dataclass
class CommandTiming:
    label: str  # "cold" (fresh caches) or "warm" (a second run)
    seconds: float
    returncode: Optional[int]  # None: killed at the timeout
    summary: str  # the last line of its output (pytest's summary, or the error)
    where: str = ""


def fresh_environment(tmp: Path, source: Path = offline.ROOT) -> tuple[Path, dict[str, str]]:
    """A clean clone of HEAD and an environment whose caches are all empty dirs under `tmp`:
    what a fresh machine (or CI) starts from, except for the Debian packages."""
    clone = tmp / "commstack"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(source), str(clone)], check=True,
                   capture_output=True, text=True)
    caches = tmp / "caches"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(
        COMMSTACK_CACHE=str(caches / "commstack"),  # gobuild's binaries
        GOCACHE=str(caches / "go-build"),
        GOMODCACHE=str(caches / "go-mod"),
        GOPATH=str(caches / "go-path"),
        PIP_CACHE_DIR=str(caches / "pip"),  # the venv's packages come from PyPI again
    )
    for name in ("COMMSTACK_CACHE", "GOCACHE", "GOMODCACHE", "GOPATH", "PIP_CACHE_DIR"):
        Path(env[name]).mkdir(parents=True)
    return clone, env


def time_test_command(label: str, checkout: Path, env: Optional[dict[str, str]] = None,
                      command: Optional[list[str]] = None, log: Optional[Path] = None) -> CommandTiming:
    """One run of the test command (CI's `./scripts/test`) in `checkout`, timed from the outside."""
    command = command or TEST_COMMAND
    log = log or Path(tempfile.mkdtemp(prefix="commstack-bench-")) / f"{label}.log"  # never inside the checkout
    started = time.perf_counter()
    with open(log, "w") as out:
        try:
            proc = subprocess.run(command, cwd=checkout, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=TEST_COMMAND_TIMEOUT)
            returncode: Optional[int] = proc.returncode
        except subprocess.TimeoutExpired:
            returncode = None
    seconds = time.perf_counter() - started
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    summary = lines[-1].strip("= ") if lines else "no output"
    if returncode is None:
        summary = f"killed after {TEST_COMMAND_TIMEOUT // 60} min; last line: {summary}"
    return CommandTiming(label, seconds, returncode, summary, str(log))


def time_test_commands(cold: bool) -> list[CommandTiming]:
    """Warm only: one run here. Cold: a fresh clone and caches, then a second run there (warm)."""
    if not cold:
        return [time_test_command("warm", offline.ROOT)]
    logs = Path(tempfile.mkdtemp(prefix="commstack-bench-logs-"))
    tmp = Path(tempfile.mkdtemp(prefix="commstack-bench-cold-"))
    try:
        clone, env = fresh_environment(tmp)
        runs = [time_test_command("cold", clone, env, log=logs / "cold.log")]
        runs.append(time_test_command("warm", clone, env, log=logs / "warm.log"))
    finally:
        # Go makes its module cache read-only; its own command removes it.
        subprocess.run(["go", "clean", "-modcache"], env={**os.environ, "GOMODCACHE": str(tmp / "caches" / "go-mod")},
                       capture_output=True, check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    return runs


def format_test_command(runs: list[CommandTiming]) -> list[str]:
    lines = []
    for run in runs:
        goal = TEST_COMMAND_GOALS[run.label]
        verdict = "within" if run.seconds <= goal else "OVER"
        status = "passed" if run.returncode == 0 else ("timed out" if run.returncode is None
                                                         else f"failed (exit {run.returncode})")
        lines.append(f"test command ({' '.join(TEST_COMMAND)}), {run.label} caches: {run.seconds / 60:.1f} min "
                     f"({run.seconds:.0f} s), {verdict} the {goal // 60} min goal; {status}: {run.summary}"
                     + (f" [log: {run.where}]" if run.where else ""))
    return lines


def _min_median(values: list[float]) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f}" if values else "-"


def format_report(stacks: list[StackBench], harness: tuple[Optional[float], Optional[dict], str],
                  test_command: Optional[list[CommandTiming]] = None,
                  live: Optional[tuple[Optional[dict], str]] = None) -> str:
    rows = [("stack", "resources", "custom", "evaluate s (min/median)", "process s (min/median)", "longest chain",
             "provider SDKs imported")]
    for s in stacks:
        if s.error:
            rows.append((s.stack, "-", "-", "-", "-", "-", f"error: {s.error}"))
            continue
        rows.append((s.stack, str(s.resources), str(s.custom_resources), _min_median(s.evaluate_seconds),
                     _min_median(s.process_seconds), str(len(s.chain)),
                     ", ".join(m.removeprefix("pulumi_") for m in s.sdks) or "none"))
    lines = _table(rows)
    lines.append("")
    for s in stacks:
        if s.chain:
            lines.append(f"{s.stack}: longest chain, {len(s.chain)} resources: {' -> '.join(s.chain)}")
    measured = [s for s in stacks if s.sdk_import_seconds]
    if measured:
        lines.append("")
        lines.append("seconds each stack spends importing each provider SDK (-X importtime, submodules included):")
        lines += _table([("stack", *(m.removeprefix("pulumi_") for m in PROVIDER_SDKS))] + [
            (s.stack, *(f"{s.sdk_import_seconds[m]:.2f}" if m in s.sdks else "-" for m in PROVIDER_SDKS))
            for s in measured])
    lines.append("")
    wall, report, message = harness
    if wall is None or report is None:
        lines.append(f"loopback harness cold boot: {message}")
    else:
        numbers = {k: v for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        details = ", ".join(f"{k} {v:.2f}" for k, v in numbers.items())
        lines.append(f"loopback harness cold boot: {wall:.2f} s wall" + (f" ({details})" if details else ""))
    if live is not None:
        lines += format_live(*live)
    if test_command:
        lines.append("")
        lines += format_test_command(test_command)
    return "\n".join(lines)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeat", type=int, default=3, help="evaluations per stack (default 3)")
    parser.add_argument("--stack", action="append", default=[], help="bench only this stack; repeatable")
    parser.add_argument("--skip-harness", action="store_true", help="do not boot the loopback harness")
    parser.add_argument("--joins", type=int, default=DEFAULT_JOINS,
                        help=f"call setups to time on the harness, p50/p95 (default {DEFAULT_JOINS}; 0: none)")
    parser.add_argument("--messages", type=int, default=DEFAULT_MESSAGES,
                        help=f"message round trips per path, through Traefik/nginx and direct to Synapse "
                             f"(default {DEFAULT_MESSAGES}; 0: none)")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                        help=f"round trips per path done first and not counted (default {DEFAULT_WARMUP})")
    parser.add_argument("--load", action="store_true",
                        help="also load the harness's Matrix core: the monolith and a worker preset, "
                             "events per second, send-to-sync p50/p95 and CPU per process (docs/workers.md)")
    parser.add_argument("--load-preset", default="balanced", help="the worker preset --load measures (default balanced)")
    parser.add_argument("--senders", type=int, default=20, help="--load: users sending back to back (default 20)")
    parser.add_argument("--syncers", type=int, default=10, help="--load: users long-polling /sync (default 10)")
    parser.add_argument("--rooms", type=int, default=5, help="--load: rooms the senders share (default 5)")
    parser.add_argument("--load-seconds", type=float, default=30.0, help="--load: measured seconds per phase (default 30)")
    parser.add_argument("--load-warmup", type=float, default=5.0, help="--load: seconds before each phase (default 5)")
    parser.add_argument("--load-rounds", type=int, default=1,
                        help="--load: monolith and preset phases, alternating (default 1)")
    parser.add_argument("--test-command", action="store_true",
                        help="also time ./scripts/test (what CI runs) here, with the caches as they are (goal 6 min)")
    parser.add_argument("--cold", action="store_true",
                        help="time ./scripts/test as on a fresh machine: a clean clone of HEAD with empty venv, pip, "
                             "Go and commstack caches (goal 20 min), then again there warm (goal 6 min); slow")


def main(args: argparse.Namespace) -> int:
    if args.repeat < 1:
        print("error: --repeat must be at least 1", file=sys.stderr)
        return 2
    committed = offline.committed_stacks()
    unknown = [s for s in args.stack if s not in committed]
    if unknown:
        print(f"error: no stack file for {', '.join(unknown)}; committed stacks: {', '.join(committed)}",
              file=sys.stderr)
        return 2
    negative = [f"--{name}" for name in ("joins", "messages", "warmup") if getattr(args, name) < 0]
    if args.load:
        negative += [f"--{name.replace('_', '-')}" for name in ("senders", "syncers", "rooms", "load_rounds")
                     if getattr(args, name) < 1]
        negative += [f"--{name.replace('_', '-')}" for name in ("load_seconds",) if getattr(args, name) <= 0]
        if args.load_preset not in ("balanced", "specialized"):
            negative.append("--load-preset (balanced or specialized)")
    if negative:
        print(f"error: {', '.join(negative)} must be 0 or more (the load sizes at least 1)", file=sys.stderr)
        return 2
    stacks = [bench_stack(stack, args.repeat) for stack in args.stack or committed]
    harness, live = harness_and_live(args)
    runs = time_test_commands(cold=args.cold) if (args.test_command or args.cold) else None
    print(format_report(stacks, harness, runs, live))
    # Times are information, not a verdict; a stack that does not evaluate, or a failing test command, is.
    return 1 if any(s.error for s in stacks) or any(r.returncode != 0 for r in runs or []) else 0


def harness_and_live(args: argparse.Namespace) -> tuple[tuple[Optional[float], Optional[dict], str],
                                                        Optional[tuple[Optional[dict], str]]]:
    """The harness cold boot and, on that same boot, the call and message figures."""
    if args.skip_harness:
        return (None, None, "skipped (--skip-harness)"), None
    load = None
    if args.load:
        load = {"preset": args.load_preset, "senders": args.senders, "syncers": args.syncers, "rooms": args.rooms,
                "seconds": args.load_seconds, "warmup": args.load_warmup, "rounds": args.load_rounds}
    if not (args.joins or args.messages or load):
        return harness_boot(), None
    report, message = live_harness(args.joins, args.messages, args.warmup, **({"load": load} if load else {}))
    if report is None:
        return (None, None, message), (None, message)
    return (report["boot_wall_seconds"], {"cold_boot_seconds": report["cold_boot_seconds"]}, "ok"), (report, message)
