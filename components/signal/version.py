"""One supported Signal-Server version, read from configs/signal/<ref>.yaml.

Everything version-specific (tables, buckets, config sections, secrets-bundle
entries) comes from that data file, so a new version is a new file, not new code.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional

import yaml

from components.settings import CONFIGS_DIR

SIGNAL_CONFIGS = CONFIGS_DIR / "signal"


@dataclass(frozen=True)
class KeyAttr:
    name: str
    type: str  # S, N or B


@dataclass(frozen=True)
class IndexSpec:
    name: str
    hash: Optional[KeyAttr]  # None for an LSI (it shares the table's hash key)
    range: Optional[KeyAttr]
    projection: str


@dataclass(frozen=True)
class TableSpec:
    config: str  # dotted path under dynamoDbTables
    name: str  # suffix of the physical name
    hash: KeyAttr
    range: Optional[KeyAttr]
    gsis: tuple[IndexSpec, ...]
    lsis: tuple[IndexSpec, ...]
    ttl: Optional[str]

    @property
    def attributes(self) -> list[KeyAttr]:
        """Every attribute a key or index names, once (DynamoDB rejects unused definitions)."""
        seen: dict[str, KeyAttr] = {}
        for attr in [self.hash, self.range] + [a for i in self.gsis + self.lsis for a in (i.hash, i.range)]:
            if attr is not None:
                seen.setdefault(attr.name, attr)
        return list(seen.values())


@dataclass(frozen=True)
class BucketSpec:
    config: str
    name: str
    purpose: str


@dataclass(frozen=True)
class BundleEntry:
    key: str
    source: str  # program | first_boot | external
    bytes: int = 0
    generator: str = ""
    standin: str = ""
    list: bool = False


@dataclass(frozen=True)
class ServerVersion:
    ref: str
    raw: dict

    @property
    def tables(self) -> tuple[TableSpec, ...]:
        return tuple(_table(t) for t in self.raw["tables"])

    @property
    def buckets(self) -> tuple[BucketSpec, ...]:
        return tuple(BucketSpec(b["config"], b["name"], b["purpose"]) for b in self.raw["buckets"])

    @property
    def bundle(self) -> tuple[BundleEntry, ...]:
        return tuple(BundleEntry(key, **spec) for key, spec in self.raw["secrets_bundle"].items())

    def bundle_from(self, source: str) -> tuple[BundleEntry, ...]:
        return tuple(e for e in self.bundle if e.source == source)

    @property
    def public_values(self) -> dict[str, dict]:
        return dict(self.raw["public_values"])

    @property
    def required_sections(self) -> tuple[str, ...]:
        """The sample config's top-level sections, in its order."""
        return tuple(self.raw["sample_key_paths"])

    @property
    def required_key_paths(self) -> tuple[str, ...]:
        """Every key path of the sample config (see key_paths)."""
        return tuple(f"{section}.{rest}" for section, rests in self.raw["sample_key_paths"].items() for rest in rests)

    @property
    def sample_open_maps(self) -> tuple[str, ...]:
        return tuple(self.raw["sample_open_maps"])

    @property
    def program_config_values(self) -> dict[str, int]:
        """Config paths whose value the program generates: path -> random bytes."""
        return {path: source["program"]["bytes"] for path, source in self.raw["config_patches"].items()
                if "program" in source}

    @property
    def table_settings(self) -> dict[str, Any]:
        return dict(self.raw["table_settings"])

    @property
    def redis_cluster_entries(self) -> tuple[str, ...]:
        return tuple(self.raw["redis"]["cluster"])

    @property
    def redis_standalone_entries(self) -> tuple[str, ...]:
        return tuple(self.raw["redis"]["standalone"])

    @property
    def registration_service(self) -> dict:
        return dict(self.raw["registration_service"])

    @property
    def server_ports(self) -> dict[str, int]:
        return dict(self.raw["server_ports"])

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]


def _key(spec: Optional[dict]) -> Optional[KeyAttr]:
    return KeyAttr(spec["name"], spec["type"]) if spec else None


def _index(spec: dict) -> IndexSpec:
    return IndexSpec(spec["name"], _key(spec.get("hash")), _key(spec.get("range")), spec["projection"])


def _table(spec: dict) -> TableSpec:
    return TableSpec(
        config=spec["config"], name=spec["name"], hash=_key(spec["hash"]), range=_key(spec.get("range")),
        gsis=tuple(_index(i) for i in spec.get("gsis", ())), lsis=tuple(_index(i) for i in spec.get("lsis", ())),
        ttl=spec.get("ttl"),
    )


@lru_cache(maxsize=None)
def load_version(ref: str) -> ServerVersion:
    return ServerVersion(ref, yaml.safe_load((SIGNAL_CONFIGS / f"{ref}.yaml").read_text()))


def template(name: str) -> str:
    return (SIGNAL_CONFIGS / name).read_text()


def set_dotted(target: dict, dotted: str, value: Any) -> None:
    """Sets a.b.c in nested dicts (config paths and bundle keys are dotted)."""
    *parents, last = dotted.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[last] = value


def key_paths(node: Any, open_maps: tuple[str, ...] = (), prefix: str = "") -> list[str]:
    """Dotted paths of every leaf of a YAML document: a path ends at a scalar, a list, a null,
    or a map listed in `open_maps` (one whose keys are data, not schema)."""
    if not isinstance(node, dict) or prefix in open_maps:
        return [prefix]
    return [path for key, value in node.items()
            for path in key_paths(value, open_maps, f"{prefix}.{key}" if prefix else str(key))]


def get_dotted(source: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        source = source[part]
    return source
