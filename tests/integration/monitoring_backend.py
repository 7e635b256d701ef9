"""The monitoring half of the loopback harness: Prometheus, Alertmanager, node_exporter and blackbox_exporter
(real binaries built from the Go module proxy at the pinned tags) and the alert relay (the rendered
script), booted from the rendered files inside the harness's one boot.

The only changes are loopback.py's (addresses, ports, paths, and the short test intervals). The scrape
targets the harness cannot boot are left out, each with its reason (loopback.NOT_BOOTED_TARGETS).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import requests
import yaml

from components.matrix import monitoring
from components.matrix import bridges as matrix_bridges
from tests.integration import gobuild, loopback
from tests.integration.loopback import LOOPBACK, host_path

# A dozen scrapes and rule evaluations at the test interval: Prometheus is up once it answers ready.
BOOT_TIMEOUT = 60.0


@dataclass
class MonitoringServices:
    not_booted: dict[str, str] = field(default_factory=dict)  # scrape job -> why the harness cannot boot it
    services: dict[str, object] = field(default_factory=dict)  # name -> harness Service

    @property
    def booted(self) -> bool:
        return bool(self.services)


def _dump(data) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def boot(harness, spawn: Callable, wait_until: Callable, synapse_ready=None) -> MonitoringServices:
    """Boots the monitoring programs; the relay waits for Synapse (`synapse_ready`, a future) first."""
    rendered, root, ports = harness.rendered, harness.root, harness.ports
    result = MonitoringServices(not_booted=dict(loopback.NOT_BOOTED_TARGETS))
    if monitoring.PROMETHEUS not in rendered.files:
        return result
    bridges = {spec.container: spec.port for kind, spec in matrix_bridges.BRIDGE_SPECS.items()
               if kind in ports.bridges}
    addresses = loopback.monitoring_addresses(ports, bridges)
    booted_bridge_ports = {ports.bridges[kind] for kind in harness.bridge_binaries}
    commands = rendered.commands

    # node_exporter, with the backup job's textfile directory (the harness's backup tests write into it).
    host_path(root, monitoring.NODE_EXPORTER, monitoring.TEXTFILE_DIR).mkdir(parents=True)
    node = spawn(monitoring.NODE_EXPORTER, [str(gobuild.binary("node-exporter")), *loopback.node_exporter_command(
        commands[monitoring.NODE_EXPORTER], root=root, ports=ports)])
    result.services["node"] = node

    # blackbox_exporter: the bridges' health checks.
    if monitoring.BLACKBOX_EXPORTER in rendered.files:
        for path, content in rendered.files[monitoring.BLACKBOX_EXPORTER].items():
            harness.write(monitoring.BLACKBOX_EXPORTER, path, content)
        command = [flag.replace(monitoring.BLACKBOX_CONFIG, str(host_path(root, monitoring.BLACKBOX_EXPORTER,
                                                                          monitoring.BLACKBOX_CONFIG)))
                   for flag in commands[monitoring.BLACKBOX_EXPORTER]]
        result.services["blackbox"] = spawn(monitoring.BLACKBOX_EXPORTER, [
            str(gobuild.binary("blackbox-exporter")), *loopback.listen_on_loopback(command, ports.blackbox)])

    # Alertmanager
    for path, content in rendered.files[monitoring.ALERTMANAGER].items():
        if path == monitoring.ALERTMANAGER_CONFIG:
            content = _dump(loopback.alertmanager_config(yaml.safe_load(content), root=root, addresses=addresses,
                                                         ports=ports))
        harness.write(monitoring.ALERTMANAGER, path, content, mode=0o600)
    am_command = _command_in_temp_dir(harness, monitoring.ALERTMANAGER, monitoring.ALERTMANAGER_CONFIG,
                                      monitoring.ALERTMANAGER_DATA, ports.alertmanager)
    result.services["alertmanager"] = spawn(monitoring.ALERTMANAGER, [str(gobuild.binary("alertmanager")), *am_command])

    # Prometheus
    files = rendered.files[monitoring.PROMETHEUS]
    config = loopback.prometheus_config(yaml.safe_load(files[monitoring.PROMETHEUS_CONFIG]), root=root,
                                        addresses=addresses, booted_bridges=booted_bridge_ports)
    harness.write(monitoring.PROMETHEUS, monitoring.PROMETHEUS_CONFIG, _dump(config))
    harness.write(monitoring.PROMETHEUS, monitoring.RULES_PATH,
                  _dump(loopback.alert_rules(yaml.safe_load(files[monitoring.RULES_PATH]))))
    prom_command = _command_in_temp_dir(harness, monitoring.PROMETHEUS, monitoring.PROMETHEUS_CONFIG,
                                        monitoring.PROMETHEUS_DATA, ports.prometheus)
    prometheus = spawn(monitoring.PROMETHEUS, [str(gobuild.binary("prometheus")), *prom_command])
    result.services["prometheus"] = prometheus

    # The relay: the rendered script and settings, run by this interpreter (the image's is python 3.12).
    for path, content in rendered.files[monitoring.RELAY].items():
        if path == monitoring.RELAY_CONFIG:
            content = json.dumps(loopback.relay_config(json.loads(content), root=root, ports=ports))
        harness.write(monitoring.RELAY, path, content, mode=0o600)
    if synapse_ready is not None:
        synapse_ready.result()  # it registers its bot and creates the room at start
    relay = spawn(monitoring.RELAY, [sys.executable, "-u", str(host_path(root, monitoring.RELAY, monitoring.RELAY_SCRIPT)),
                                     str(host_path(root, monitoring.RELAY, monitoring.RELAY_CONFIG))])
    result.services["relay"] = relay

    for name, service, url in [
        ("node_exporter", node, f"http://{LOOPBACK}:{ports.node_exporter}/metrics"),
        ("alertmanager", result.services["alertmanager"], f"http://{LOOPBACK}:{ports.alertmanager}/-/ready"),
        ("prometheus", prometheus, f"http://{LOOPBACK}:{ports.prometheus}/-/ready"),
        ("alert relay", relay, f"http://{LOOPBACK}:{ports.relay}/health"),
    ] + ([("blackbox_exporter", result.services["blackbox"], f"http://{LOOPBACK}:{ports.blackbox}/-/healthy")]
         if "blackbox" in result.services else []):
        wait_until(name, lambda u=url: requests.get(u, timeout=1).status_code == 200, service.process, service.log,
                   timeout=BOOT_TIMEOUT)
    return result


def _command_in_temp_dir(harness, container: str, config: str, data: str, port: int) -> list[str]:
    """The container's rendered flags with its config file and data directory in the temp dir (the data
    directory made), listening on loopback `port`."""
    data_dir = host_path(harness.root, container, data)
    data_dir.mkdir(parents=True)
    command = [flag.replace(config, str(host_path(harness.root, container, config))).replace(f"={data}", f"={data_dir}")
               for flag in harness.rendered.commands[container]]
    return loopback.listen_on_loopback(command, port)


def prometheus_url(harness) -> str:
    return f"http://{LOOPBACK}:{harness.ports.prometheus}"


def textfile_dir(harness) -> Path:
    return host_path(harness.root, monitoring.NODE_EXPORTER, monitoring.TEXTFILE_DIR)
