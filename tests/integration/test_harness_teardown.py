"""The harness stops its programs in dependency order: a client gets SIGTERM, and has exited, before
the backend it uses does (Redis exiting first left Signal-Server logging errors in a tight loop)."""

from __future__ import annotations

import subprocess
import time

from tests.integration.harness import Harness, Service, stop_rank


def _recorder(name: str, record, directory) -> Service:
    """A process that appends its name to `record` when it gets SIGTERM, taking a moment to exit."""
    script = f'trap "sleep 0.2; echo {name} >> {record}; exit 0" TERM; while :; do sleep 0.05; done'
    process = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    return Service(name, process, directory / f"{name}.log")


def test_clients_stop_before_their_backends(tmp_path):
    record = tmp_path / "stopped"
    root = tmp_path / "root"
    root.mkdir()
    # Spawned as a parallel boot might: datastores and clients interleaved.
    names = ["redis-0", "signal-server-1", "postgres", "synapse", "bridge-whatsapp", "redis-1", "proxy",
             "synapse-redis", "synapse-sync-1", "lk-jwt-service", "livekit", "a-test-client"]
    harness = Harness(rendered=None, root=root, ports=None, binaries={})
    harness.services = [_recorder(name, record, tmp_path) for name in names]
    time.sleep(0.3)  # every trap installed
    harness.stop()
    stopped = record.read_text().split()
    assert sorted(stopped) == sorted(names)
    ranks = [stop_rank(name) for name in stopped]
    assert ranks == sorted(ranks), stopped
    assert stopped.index("signal-server-1") < min(stopped.index("redis-0"), stopped.index("redis-1"))
    assert stopped.index("synapse") < stopped.index("postgres")
    assert stopped.index("bridge-whatsapp") < stopped.index("synapse-sync-1") < stopped.index("synapse")
    assert stopped.index("synapse") < stopped.index("synapse-redis")
    assert all(s.process.poll() is not None for s in harness.services)
    assert not root.exists()
