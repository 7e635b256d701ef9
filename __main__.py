"""commstack: reads the stack settings, then composes the components."""

import pulumi

from components.settings import load_settings

settings = load_settings()

pulumi.export("serverName", settings.matrix.server_name)
