"""The session's loopback harness: rendered once, booted once, torn down at the end.

A missing Debian program fails the session with the apt-get line (never a skip).
"""

from __future__ import annotations

import time

import pytest

from tests.integration.harness import Harness, render, start, workers_config


@pytest.fixture(scope="session")
def harness(request) -> Harness:
    booted = start()
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\nharness cold boot: {booted.cold_boot_seconds:.2f} s")
    yield booted
    booted.stop()


@pytest.fixture(scope="session")
def worker_harness(request) -> Harness:
    """The second deployment of the session: the test stack's Matrix core with Synapse's balanced
    worker preset (the main process, every worker, Redis, nginx, Traefik and the Go-built bridges,
    on a Postgres of its own). Booted on first use, so only the pytest worker whose tests need it
    pays for it; the Signal half, TURN, Element and calls stay with the first deployment."""
    started = time.perf_counter()
    booted = start(render(workers_config()), core_only=True)
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\nworker harness: rendered and booted in {time.perf_counter() - started:.2f} s "
              f"(boot {booted.cold_boot_seconds:.2f} s)")
    yield booted
    booted.stop()
