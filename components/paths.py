"""Where the project's files live. A leaf module: components and settings both import it."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS_DIR = ROOT / "configs"
