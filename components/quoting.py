"""Quoting for the formats config values land in: shells, systemd units, nginx.

Every value is validated in components/settings.py first; these functions make
sure that even a legal value with special characters (an e-mail address such as
o'brien@example.org, an S3 key with parentheses) stays one word or one literal.
YAML and JSON are always written by a serializer (components.common.to_yaml,
json.dumps), never by string formatting.
"""

from __future__ import annotations

import re
import shlex
from typing import Iterable

_NGINX_WORD = re.compile(r"^[A-Za-z0-9._:/@+=-]+$")


def shell_word(value: str) -> str:
    """One POSIX shell word whatever `value` holds."""
    return shlex.quote(str(value))


def shell_line(words: Iterable[str]) -> str:
    """A command line whose every word is quoted (for `sh -c`, cloud-init runcmd strings)."""
    return " ".join(shell_word(w) for w in words)


def _systemd_plain(value: str, what: str) -> str:
    if any(c in value for c in "\n\r\x00"):
        raise ValueError(f"{what} cannot hold a line break or NUL: {value!r}")
    return value


def systemd_exec_word(value: str) -> str:
    """One word of an Exec*= line (systemd.service "Command lines"): double-quoted, with `\\` and `"`
    escaped, `%` doubled (specifiers, systemd.unit) and `$` doubled (environment substitution)."""
    value = _systemd_plain(value, "a systemd command-line word")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def systemd_environment(name: str, value: str) -> str:
    """The value of an Environment= line for one variable (systemd.exec: quotes and specifiers apply,
    `$` has no meaning there)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"{name!r} is not an environment variable name")
    value = _systemd_plain(value, "a systemd Environment= value")
    escaped = f"{name}={value}".replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


def systemd_text(value: str) -> str:
    """Free text such as Description=: one line, specifiers escaped."""
    return _systemd_plain(value, "a systemd setting").replace("%", "%%")


def nginx_word(value: str) -> str:
    """A bare nginx token (server names, paths): refused unless it needs no quoting at all."""
    if not _NGINX_WORD.match(value):
        raise ValueError(f"{value!r} is not a plain nginx token")
    return value
