"""Values for negative tests that provably differ from the real one.

A "wrong" token made by editing the right one (`token[:-1] + "x"`) is the right token whenever the
generated one already ends in that character (1 run in 62 for an alphanumeric secret)."""

from __future__ import annotations


def different(value: str) -> str:
    """`value` with its last character replaced by another of the same class (letter for letter,
    digit for digit): same length and alphabet, never equal."""
    if not value:
        raise ValueError("an empty value has no different value of the same length")
    last = value[-1]
    pool = "0123456789" if last.isdigit() else "abcdefghijklmnopqrstuvwxyz"
    replacement = next(c for c in pool if c != last.lower())
    changed = value[:-1] + (replacement.upper() if last.isupper() else replacement)
    assert changed != value and len(changed) == len(value)
    return changed
