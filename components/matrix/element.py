"""Element Web, pointed at this homeserver.

config.json keys: element-hq/element-web docs/config.md (v1.11.112). Only
`default_server_config` names the homeserver; mixing it with
`default_server_name`/`default_hs_url` is an error there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_docker as docker

from components.common import ConfigFile, ContainerSpec, Hardening, service_container

LOGICAL_NAME = "element"
HTTP_PORT = 80  # the image's nginx (ELEMENT_WEB_PORT defaults to 80)
CONFIG_PATH = "/app/config.json"
# The image runs nginx as its own non-root user (element-web Dockerfile `USER nginx`) and binds
# port 80 through the engine's unprivileged-port sysctl: no capability at all.
HARDENING = Hardening(memory_mb=64)


def render_element_config(homeserver_base_url: str, server_name: str) -> dict:
    return {
        "default_server_config": {
            "m.homeserver": {"base_url": homeserver_base_url, "server_name": server_name},
        },
        "disable_guests": True,
        "room_directory": {"servers": [server_name]},
        "show_labs_settings": False,
    }


@dataclass
class ElementArgs:
    network: pulumi.Input[str]
    homeserver_base_url: str
    server_name: str


class Element(pulumi.ComponentResource):
    container: docker.Container
    internal_url: str = f"http://{LOGICAL_NAME}:{HTTP_PORT}"

    def __init__(self, name: str, args: ElementArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("commstack:matrix:Element", name, None, opts)
        config = json.dumps(render_element_config(args.homeserver_base_url, args.server_name), indent=2) + "\n"
        self.container = service_container(
            LOGICAL_NAME,
            ContainerSpec(
                image_key="element",
                network=args.network,
                aliases=[LOGICAL_NAME],
                files=[ConfigFile(CONFIG_PATH, config)],
                envs={"ELEMENT_WEB_PORT": str(HTTP_PORT)},
                healthcheck=["CMD-SHELL", f"wget -q -O /dev/null http://127.0.0.1:{HTTP_PORT}/config.json || exit 1"],
                hardening=HARDENING,
            ),
            parent=self,
            resource_name=name,
        )
        self.register_outputs({"internal_url": self.internal_url})
