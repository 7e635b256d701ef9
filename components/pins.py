"""configs/images.yaml, the one source of truth for image pins.

A leaf module (it imports only PyYAML and components.paths), so the settings, which check the
Postgres pin, and components.common, which runs the images, both read it without importing each other.
"""

from functools import lru_cache

import yaml

from components.paths import CONFIGS_DIR


@lru_cache(maxsize=1)
def images() -> dict[str, str]:
    return yaml.safe_load((CONFIGS_DIR / "images.yaml").read_text())


def image(key: str) -> str:
    return images()[key]
