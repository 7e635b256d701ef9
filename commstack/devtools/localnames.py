"""`python -m commstack.devtools.localnames STACK`: the hosts-file line for a `.localhost` stack.

Names under `.localhost` are loopback by definition (RFC 6761 §6.3); browsers and
systems with nss-myhostname resolve them by themselves, but a plain glibc resolver
without it does not, and then curl, Python's requests and the like cannot reach the stack.
Prints nothing when every name resolves or the domain is not under `.localhost`;
otherwise the `/etc/hosts` line that fixes it. Used by ./scripts/up.
"""

from __future__ import annotations

import socket
import sys
from typing import Callable, Optional, Sequence

HOSTS_FILE = "/etc/hosts"


def stack_hostnames(config: dict[str, str]) -> list[str]:
    """Every name the stack serves: the domain, its Matrix hosts and, with Signal on, chat. and friends."""
    from components.settings import CONFIG_KEYS, SIGNAL_SUBDOMAINS

    def value(key: str) -> str:
        return (config.get(key) or str(CONFIG_KEYS[key].default)).strip().lower()

    domain = value("commstack:domain")
    if not domain:
        return []
    names = [domain] + [f"{value(key)}.{domain}" for key in
                        ("commstack:matrixSubdomain", "commstack:elementSubdomain", "commstack:turnSubdomain")]
    if value("commstack:signal") == "true":
        names += [f"{sub}.{domain}" for sub in SIGNAL_SUBDOMAINS]
    return list(dict.fromkeys(names))


def resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, None)
        return True
    except (socket.gaierror, UnicodeError):
        return False


def hosts_line(names: Sequence[str], resolve: Callable[[str], bool] = resolves) -> Optional[str]:
    """`127.0.0.1 name …` for the .localhost names that do not resolve (None when all do)."""
    local = [n for n in names if n == "localhost" or n.endswith(".localhost")]
    if not local or all(resolve(n) for n in local):
        return None
    return "127.0.0.1 " + " ".join(local)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from commstack.devtools import offline

    args = list(sys.argv[1:] if argv is None else argv)
    stack = args[0] if args else "dev"
    try:
        config = offline.stack_config(stack)
    except (FileNotFoundError, ValueError):
        return 0  # a stack without a file has no domain yet; the program will say so
    line = hosts_line(stack_hostnames(config))
    if line:
        print(f"note: this machine does not resolve the stack's .localhost names (no nss-myhostname): browsers "
              f"and `commstack doctor` cope, but curl and other programs cannot reach the stack by name. Add this "
              f"line to {HOSTS_FILE}:\n  {line}\n  e.g.: echo '{line}' | sudo tee -a {HOSTS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
