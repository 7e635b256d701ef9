"""Unknown config keys: ours, the providers' (aws:regin), and misspelt namespaces (comstack:turn),
each named with the nearest known key. Values are never shown: a mistyped key may hold a secret."""

from __future__ import annotations

import difflib
import importlib.util
import re
from functools import lru_cache
from pathlib import Path
from typing import Optional

from components.settings.schema import PROJECT, PROVIDER_NAMESPACES, SETTINGS, set_line

REFERENCE = "docs/configuration.md"
# Namespaces that are no provider's but legitimately appear in a stack's config.
OTHER_NAMESPACES = ("pulumi",)


@lru_cache(maxsize=None)
def provider_keys(namespace: str) -> frozenset[str]:
    """The config keys a provider reads (`<namespace>:<key>`), from its SDK's config/vars.py, without
    importing the SDK (pulumi_aws alone takes seconds to import)."""
    spec = importlib.util.find_spec(f"pulumi_{namespace}")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    vars_file = Path(list(spec.submodule_search_locations)[0]) / "config" / "vars.py"
    if not vars_file.is_file():
        return frozenset()
    names = re.findall(r"__config__\.get\w*\('([A-Za-z0-9_]+)'", vars_file.read_text())
    return frozenset(f"{namespace}:{name}" for name in names)


def known_keys(namespace: str) -> set[str]:
    ours = {key for key in SETTINGS if key.startswith(f"{namespace}:")}
    return ours | (set(provider_keys(namespace)) if namespace in PROVIDER_NAMESPACES else set())


def _namespace_meant(namespace: str) -> Optional[str]:
    """The namespace a key's namespace is (or misspells): ours or a provider's; None for another tool's."""
    candidates = (PROJECT, *PROVIDER_NAMESPACES)
    if namespace in candidates:
        return namespace
    if namespace in OTHER_NAMESPACES:
        return None
    lowered = namespace.lower()
    if lowered in candidates:
        return lowered
    # A near miss of a long name ("comstack"), or a short one's letters swapped ("asw"); "tl" is no "tls".
    close = difflib.get_close_matches(lowered, [c for c in candidates if len(c) >= 5], n=1, cutoff=0.75)
    if close:
        return close[0]
    return next((c for c in candidates if len(c) < 5 and sorted(c) == sorted(lowered)), None)


def unknown_keys(keys: set[str]) -> list[tuple[str, str, str]]:
    """(key, what is wrong, fix line) for each key that no setting of ours or of a provider has."""
    problems = []
    for key in sorted(keys):
        namespace, sep, name = key.partition(":")
        if not sep or key in SETTINGS:
            continue
        meant = _namespace_meant(namespace)
        if meant is None:
            continue  # another tool's setting (pulumi:tags, ...)
        known = known_keys(meant)
        if meant == namespace and key in known:
            continue  # a provider's own setting (aws:profile, docker:host, ...)
        wanted = _nearest(f"{meant}:{name}", known)
        whose = "this program" if meant == PROJECT else f"this program or the {meant} provider"
        if wanted is None:
            problems.append((key, f"is not a setting of {whose} (see {REFERENCE})", f"pulumi config rm {key}"))
            continue
        setting = SETTINGS.get(wanted)
        example = setting.example if setting is not None else "<value>"
        secret = setting is not None and setting.secret
        problems.append((key, f"is not a setting of {whose}; did you mean {wanted}?",
                         f"pulumi config rm {key} && {set_line(wanted, example, secret)}"))
    return problems


def _nearest(key: str, known: set[str]) -> Optional[str]:
    by_lower = {k.lower(): k for k in known}
    if key.lower() in by_lower:
        return by_lower[key.lower()]
    close = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[close[0]] if close else None


def unknown_key_problems(keys: set[str]) -> list[str]:
    """Each unknown key's problem as the message it is reported with."""
    return [f"{key}: {what}. Fix: {fix}" for key, what, fix in unknown_keys(keys)]
