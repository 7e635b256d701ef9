"""Kinds of setting values: how a value is parsed, what it may be, and what the reference calls it.

Every kind gets the value already normalised by the one rule all settings share
(components/settings/schema.py, "Case and whitespace"): surrounding whitespace removed, not
empty, printable ASCII, and lowercased when the kind is `fold_case`. `parse` returns the
typed value or raises `Invalid` with what is wrong and, where it can tell, the value the user
most likely meant (the loader checks that suggestion validates before printing it).
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
import unicodedata
from typing import Any, Callable, Optional, Sequence

import components.settings.facts as facts


class Invalid(ValueError):
    """A value its kind refuses: `what` is wrong with it; `fix` is a value that would do, if one is known."""

    def __init__(self, what: str, fix: Optional[str] = None):
        super().__init__(what)
        self.what = what
        self.fix = fix


def shown(value: Any, limit: int = 60) -> str:
    """A value as an error message quotes it: repr (so control characters show as escapes), cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 5] + "…" + text[-4:]


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# The longest value any setting but a secret takes; a longer one is a paste gone wrong.
MAX_LENGTH = 4096


def normalise(raw: Any, fold_case: bool, multiline: bool = False) -> str:
    """The rule every setting follows (schema.py, "Case and whitespace"): surrounding whitespace removed;
    printable ASCII only (line breaks too, for a multi-line kind); lowercased when the kind is case-blind.
    Raises Invalid."""
    text = str(raw).strip()
    if len(text) > MAX_LENGTH:
        raise Invalid(f"is {len(text)} characters long; a setting is at most {MAX_LENGTH}")
    odd = next((c for c in text if not (" " <= c <= "~" or (multiline and c in "\r\n"))), None)
    if odd is not None:
        what = "a control character" if unicodedata.category(odd).startswith("C") else "a character that is not ASCII"
        raise Invalid(f"{shown(text)} contains {what} ({odd!r}, U+{ord(odd):04X}); every setting except a secret is "
                      "printable ASCII", _ascii_digits(text))
    return text.lower() if fold_case else text


def _ascii_digits(text: str) -> Optional[str]:
    """`text` with each digit of another script (١, ², ５) as its ASCII digit; None if anything else is odd."""
    out = []
    for char in text:
        if " " <= char <= "~":
            out.append(char)
            continue
        digit = unicodedata.digit(char, None)
        if digit is None:
            return None
        out.append(str(digit))
    return "".join(out)


class Kind:
    """What one setting's value is. Subclasses set `type_name` (the reference's type column)
    and implement `parse` and `allowed` (the reference's allowed-values column).

    A kind's parameters are named in `fields` and given positionally or by name; a class attribute
    of that name is the default. (Plain classes, not dataclasses: the program builds the schema at
    every evaluation, and dataclass creation costs milliseconds each.)"""

    fields: tuple[str, ...] = ()
    type_name = "string"
    multiline = False  # a value of several lines (PEM): line breaks are allowed
    fold_case = False  # DNS names, keywords and other case-blind values are compared in lower case
    secret = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(self.fields) or set(kwargs) - set(self.fields):
            raise TypeError(f"{type(self).__name__} takes {', '.join(self.fields) or 'no parameters'}")
        values = {**dict(zip(self.fields, args)), **kwargs}
        for name in self.fields:
            if name in values:
                setattr(self, name, values[name])
            elif not hasattr(type(self), name):
                raise TypeError(f"{type(self).__name__} needs {name}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(repr(getattr(self, f)) for f in self.fields)})"

    def parse(self, text: str) -> Any:
        return text

    def allowed(self) -> str:
        return ""


class Boolean(Kind):
    type_name = "boolean"
    fold_case = True

    def parse(self, text: str) -> bool:
        if text in ("true", "false"):
            return text == "true"
        raise Invalid(f"must be true or false, not {shown(text)}",
                      "true" if text in ("yes", "on", "1", "y") else "false" if text in ("no", "off", "0", "n") else None)

    def allowed(self) -> str:
        return "`true`, `false`"


class Choice(Kind):
    """One of a few words; matched in any case. A close misspelling is offered as the fix."""

    fields = ('choices',)

    choices: tuple[str, ...]
    type_name = "choice"
    fold_case = True

    def parse(self, text: str) -> str:
        if text in self.choices:
            return text
        close = difflib.get_close_matches(text, self.choices, n=1, cutoff=0.75)
        raise Invalid(f"must be one of {', '.join(self.choices)}, not {shown(text)}", close[0] if close else None)

    def allowed(self) -> str:
        return ", ".join(f"`{c}`" for c in self.choices)


class Port(Kind):
    """A TCP port from a fixed list."""

    fields = ('ports',)

    ports: tuple[int, ...]
    type_name = "integer"

    def parse(self, text: str) -> int:
        if text in map(str, self.ports):
            return int(text)
        raise Invalid(f"must be {' or '.join(map(str, self.ports))}, not {shown(text)}")

    def allowed(self) -> str:
        return ", ".join(f"`{p}`" for p in self.ports)


class Integer(Kind):
    """A whole number in [minimum, maximum], ASCII digits only (no sign, no exponent, no underscores)."""

    fields = ('minimum', 'maximum', 'what', 'digits')

    minimum: int
    maximum: int
    what: str = "a whole number"
    digits: Optional[int] = None  # exactly this many digits
    type_name = "integer"

    def parse(self, text: str) -> int:
        width = len(str(self.maximum))
        if not re.fullmatch(r"[0-9]+", text, re.ASCII):
            raise Invalid(f"must be {self.what} ({self.minimum}-{self.maximum}), not {shown(text)}")
        if self.digits and len(text) != self.digits:
            raise Invalid(f"must be {self.what} of {self.digits} digits, not {shown(text)}")
        # Compare the length first: int() of thousands of digits is slow (and refused beyond 4300).
        if len(text.lstrip("0")) > width or not self.minimum <= int(text) <= self.maximum:
            raise Invalid(f"{shown(text)} is out of range: {self.what} from {self.minimum} to {self.maximum}")
        return int(text)

    def allowed(self) -> str:
        return f"{self.minimum} to {self.maximum}"


class Pattern(Kind):
    """Text matched whole (`fullmatch`) against an ASCII pattern; `shape` says in words what it is.
    `check` adds a rule a pattern cannot say (None when fine, else what is wrong)."""

    fields = ('pattern', 'shape', 'fold_case', 'check', 'max_length', 'type_name', 'show_pattern')

    pattern: str
    shape: str
    fold_case: bool = False
    check: Optional[Callable[[str], Optional[str]]] = None
    max_length: Optional[int] = None
    type_name: str = "string"
    show_pattern: bool = True

    @property
    def compiled(self) -> re.Pattern:
        return _compiled(self.pattern)

    def parse(self, text: str) -> str:
        if self.max_length and len(text) > self.max_length:
            raise Invalid(f"{shown(text)} is {len(text)} characters; at most {self.max_length}")
        if not self.compiled.fullmatch(text):
            lowered = text.lower()
            raise Invalid(f"{shown(text)} is not {self.shape}",
                          lowered if lowered != text and self.compiled.fullmatch(lowered) else None)
        why = self.check(text) if self.check else None
        if why:
            raise Invalid(why)
        return text

    def allowed(self) -> str:
        pattern = f" (`{self.pattern}`)" if self.show_pattern else ""
        return f"{self.shape}{pattern}"


_PATTERNS: dict[str, re.Pattern] = {}


def _compiled(pattern: str) -> re.Pattern:
    compiled = _PATTERNS.get(pattern)
    if compiled is None:
        compiled = _PATTERNS[pattern] = re.compile(pattern, re.ASCII)
    return compiled


# -- DNS names and addresses ----------------------------------------------------------------------

DNS_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
DOMAIN_PATTERN = rf"(?:{DNS_LABEL}\.)+{DNS_LABEL}"


class Domain(Kind):
    """A DNS name of at least two labels, lowercase ASCII (IDNs in their xn-- form)."""

    type_name = "DNS name"
    fold_case = True

    def parse(self, text: str) -> str:
        if facts.valid_ip(text):
            raise Invalid(f"{shown(text)} is an IP address, but the Matrix server_name and the matrix./element. "
                          "hosts need a DNS name; use a domain you control (or commstack.localhost to try it on "
                          "this machine)")
        if not _compiled(DOMAIN_PATTERN).fullmatch(text):
            raise Invalid(f"{shown(text)} is not a valid DNS name (lowercase labels joined by dots)",
                          text.rstrip(".") if _compiled(DOMAIN_PATTERN).fullmatch(text.rstrip(".")) else None)
        if text.rsplit(".", 1)[-1].isdigit():
            raise Invalid(f"{shown(text)} ends in an all-digit label, which no top-level domain is")
        if len(text) > facts.MAX_HOSTNAME_LENGTH:
            raise Invalid(f"{shown(text)} is {len(text)} characters; certificates carry it as their common name, "
                          f"which may be at most {facts.MAX_HOSTNAME_LENGTH}")
        return text

    def allowed(self) -> str:
        return f"lowercase DNS labels joined by dots, at most {facts.MAX_HOSTNAME_LENGTH} characters; not an IP address"


class Label(Kind):
    type_name = "DNS label"
    fold_case = True

    def parse(self, text: str) -> str:
        if not _compiled(DNS_LABEL).fullmatch(text):
            raise Invalid(f"{shown(text)} is not a single DNS label")
        return text

    def allowed(self) -> str:
        return "one DNS label: 1-63 of a-z, 0-9 and inner `-`"


class IPv4(Kind):
    type_name = "IPv4 address"

    def parse(self, text: str) -> str:
        if not facts.valid_ipv4(text):
            raise Invalid(f"{shown(text)} is not an IPv4 address")
        return str(ipaddress.ip_address(text))

    def allowed(self) -> str:
        return "dotted-quad IPv4"


_HOST_PART = (r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
              r"|\[[0-9A-Fa-f:.]+\])")


def port_problem(port: Optional[str]) -> Optional[str]:
    if port is not None and not 1 <= int(port) <= 65535:
        return f"port {int(port)} is out of range (1-65535)"
    return None


class Url(Kind):
    """A URL of the given schemes: a host, an optional port 1-65535, and (if `path`) a path."""

    fields = ('schemes', 'path')

    schemes: tuple[str, ...]
    path: bool = False
    type_name = "URL"

    @property
    def compiled(self) -> re.Pattern:
        schemes = "|".join(map(re.escape, self.schemes))
        path = r"(?:/[A-Za-z0-9_.~%/-]*)?" if self.path else "/?"
        return _compiled(rf"(?P<scheme>{schemes})://(?P<host>{_HOST_PART})(?::(?P<port>[0-9]{{1,5}}))?{path}")

    def parse(self, text: str) -> str:
        matched = self.compiled.fullmatch(text)
        if not matched:
            raise Invalid(f"{shown(text)} is not a {'/'.join(self.schemes)}://host[:port] URL")
        why = port_problem(matched.group("port"))
        if why:
            raise Invalid(f"{shown(text)}: {why}")
        return text

    def allowed(self) -> str:
        return f"{' or '.join(s + '://' for s in self.schemes)}host[:port]{'[/path]' if self.path else ''}"


class DockerHost(Kind):
    """unix:///path, ssh://[user@]host[:port] or npipe:. tcp:// is refused: Docker's TCP socket without TLS
    lets anyone who reaches it run anything as root on the host, and with TLS the client key would have
    to live in the stack and be handed to every command that talks to the engine (create-admin, backup,
    restore). SSH already authenticates the admin, encrypts, and is what those commands speak."""

    type_name = "URL"

    PATTERN = (rf"unix://(?P<path>(?:/[A-Za-z0-9._-]+)+)"
               rf"|(?P<scheme>tcp|ssh)://(?:(?P<user>[A-Za-z0-9._-]+)@)?(?P<host>{_HOST_PART})(?::(?P<port>[0-9]{{1,5}}))?"
               r"|npipe:////\./pipe/[A-Za-z0-9._-]+")

    def parse(self, text: str) -> str:
        matched = _compiled(self.PATTERN).fullmatch(text)
        if not matched:
            raise Invalid(f"{shown(text)} is not a Docker host URL (unix:///path or ssh://user@host[:port])")
        why = port_problem(matched.group("port"))
        if why:
            raise Invalid(f"{shown(text)}: {why}")
        if matched.group("scheme") == "tcp":
            host = matched.group("host")
            local = host.strip("[]").lower() in ("localhost", "127.0.0.1", "::1")
            raise Invalid(f"{shown(text)}: tcp:// is refused, because Docker's TCP socket lets whoever reaches it "
                          "control the host; reach a remote engine over SSH instead",
                          "unix:///var/run/docker.sock" if local else f"ssh://{host}")
        return text

    def allowed(self) -> str:
        return "`unix:///path` or `ssh://[user@]host[:port]`; `tcp://` is refused (use ssh://)"


def docker_host_parts(url: str) -> tuple[str, str]:
    """(scheme, host) of a valid Docker host URL; host is empty for unix:// and npipe://."""
    matched = _compiled(DockerHost.PATTERN).fullmatch(url)
    if not matched or not matched.group("scheme"):
        return (url.split(":", 1)[0], "")
    return matched.group("scheme"), matched.group("host")


# -- AWS ---------------------------------------------------------------------------------------------


class Listed(Kind):
    """One of the entries of a data file, matched in any case; a near miss is offered as the fix."""

    fields = ("type_name", "options", "source")
    fold_case = True

    def parse(self, text: str) -> str:
        options = self.options()
        if text in options:
            return text
        close = difflib.get_close_matches(text, list(options), n=1, cutoff=0.8)
        raise Invalid(f"{shown(text)} is not an {self.type_name} ({self.source})", close[0] if close else None)

    def allowed(self) -> str:
        return f"an {self.type_name} ({self.source})"


class AwsRegion(Listed):
    """A region of AWS's commercial partition; an availability zone is named as such."""

    def __init__(self) -> None:
        super().__init__("AWS region", facts.aws_regions,
                         "configs/aws/regions.json lists the commercial partition's regions")

    def parse(self, text: str) -> str:
        if text[:-1] in self.options() and text[-1:].isalpha():
            raise Invalid(f"{shown(text)} is an availability zone; the region is {text[:-1]}", text[:-1])
        return super().parse(text)


def Ec2InstanceType() -> Listed:  # noqa: N802 - a kind, named like the others
    return Listed("EC2 instance type", facts.ec2_instance_types, "configs/aws/instance-types.json")


# -- JSON values -----------------------------------------------------------------------------------

# Settings hold short lists and objects; deeper JSON is a paste gone wrong. Checked before parsing,
# so no nesting depth reaches the parser's recursion limit.
MAX_JSON_DEPTH = 8


def load_json(text: str) -> Any:
    """json.loads for a setting's value, or Invalid (deeply nested, or not JSON at all)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:
                raise Invalid(f"is JSON nested deeper than {MAX_JSON_DEPTH} levels")
        elif char in "]}":
            depth -= 1
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise Invalid(f"is not JSON: {shown(text)}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class JsonList(Kind):
    """A JSON list of strings, each one an `item`; no entry twice. The fix keeps the valid entries, once each."""

    fields = ('item', 'items_name', 'normalise')

    item: Kind
    items_name: str = "strings"
    normalise: Optional[Callable[[str], str]] = None  # the entry's canonical form, for the duplicate check

    @property
    def type_name(self) -> str:  # type: ignore[override]
        return f"JSON list of {self.items_name}"

    def parse(self, text: str) -> tuple:
        try:
            parsed = load_json(text)
        except Invalid as invalid:
            # A bare word that is one valid entry: offer it as a list of one.
            raise Invalid(f"must be a JSON list of strings: it {invalid.what}", self._as_list(text)) from None
        if not isinstance(parsed, list) or not all(isinstance(entry, str) for entry in parsed):
            raise Invalid(f"must be a JSON list of strings, not {shown(text)}")
        good, bad, fixed = [], [], []
        for entry in parsed:
            try:
                value = self.item.parse(normalise(entry, self.item.fold_case))
            except Invalid as invalid:
                bad.append(invalid.what if invalid.what.startswith(shown(entry.strip())) else
                           f"{shown(entry)}: {invalid.what}")
                if invalid.fix is not None:
                    fixed.append(invalid.fix)
                continue
            good.append(value)
            fixed.append(self.canonical(value))
        unique = list(dict.fromkeys(fixed))
        fix = compact_json(unique) if unique else None
        if bad:
            raise Invalid(f"has entries that are not {self.items_name}: {'; '.join(bad)}", fix)
        canonical = [self.canonical(v) for v in good]
        if len(set(canonical)) != len(canonical):
            twice = sorted({v for v in canonical if canonical.count(v) > 1})
            raise Invalid(f"lists {', '.join(map(shown, twice))} twice", fix)
        return tuple(good)

    def _as_list(self, text: str) -> Optional[str]:
        try:
            return compact_json([self.canonical(self.item.parse(normalise(text, self.item.fold_case)))])
        except Invalid:
            return None

    def canonical(self, value: str) -> str:
        return self.normalise(value) if self.normalise else value

    def allowed(self) -> str:
        return f"each: {self.item.allowed()}; no entry twice"


class Secret(Kind):
    """A secret: only whether it is set is looked at; the value stays inside a secret Output."""

    type_name = "secret"
    secret = True

    def allowed(self) -> str:
        return "any text (surrounding whitespace is removed)"


class Custom(Kind):
    """A value with a parser of its own (a JSON object of a particular shape, a git ref, ...)."""

    fields = ('parser', 'description', 'type_name', 'fold_case')

    parser: Callable[[str], Any]
    description: str
    type_name: str = "string"
    fold_case: bool = False

    def parse(self, text: str) -> Any:
        return self.parser(text)

    def allowed(self) -> str:
        return self.description


def nearest(value: str, options: Sequence[str], cutoff: float = 0.6) -> Optional[str]:
    close = difflib.get_close_matches(value, list(options), n=1, cutoff=cutoff)
    return close[0] if close else None


__all__ = ["AwsRegion", "Boolean", "Choice", "Custom", "DockerHost", "Domain", "Ec2InstanceType", "IPv4", "Integer",
           "Invalid", "JsonList", "Kind", "Label", "Listed", "Pattern", "Port", "Secret", "Url", "compact_json",
           "docker_host_parts", "load_json", "nearest", "normalise", "shown"]
