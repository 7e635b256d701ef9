"""The session's loopback harness: rendered once, booted once, torn down at the end.

A missing Debian program fails the session with the apt-get line (never a skip).
"""

from __future__ import annotations

import pytest

from tests.integration.harness import Harness, start


@pytest.fixture(scope="session")
def harness(request) -> Harness:
    booted = start()
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\nharness cold boot: {booted.cold_boot_seconds:.2f} s")
    yield booted
    booted.stop()
