"""The shapes of particular settings: patterns with their sources, and the JSON values with rules
of their own (CIDR lists, backup retention, container memory). Used by the schema."""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Optional

import components.settings.facts as facts
from components.settings.kinds import Custom, Invalid, JsonList, Kind, Pattern, compact_json, load_json, shown

# An e-mail address: an RFC 5322 dot-atom local part (letters, digits and !#$%&'*+/=?^_`{|}~-, dots
# between), then a DNS name with a letter-only top-level label. Quoted local parts, comments and
# address literals are refused. Characters a shell would act on stay legal (o'brien@example.org):
# every place the address lands quotes it (components/quoting.py).
_EMAIL_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
EMAIL = (rf"(?=.{{1,64}}@){_EMAIL_ATOM}(?:\.{_EMAIL_ATOM})*@(?=.{{1,253}}\Z)"
         r"(?:(?!-)[A-Za-z0-9-]{1,63}(?<!-)\.)+[A-Za-z]{2,63}")
HHMM = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]"
# s3://bucket/key: S3's bucket naming rules, and a key of S3's "safe" characters
# (docs.aws.amazon.com/AmazonS3/latest/userguide/object-keys.html) except `*`, which the key's
# IAM resource ARN (components/signal/iam.py) would read as a wildcard.
S3_URI_PATTERN = r"s3://(?!xn--)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/(?!/)[A-Za-z0-9!_.'()/-]{1,1024}"
S3_BUCKET_PATTERN = r"(?!xn--)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
E164_PATTERN = r"\+[1-9][0-9]{6,14}"
# A restored Signal table set's suffix (<stack>-signal-<Table>-<suffix>): lowercase letters, digits and inner
# hyphens, short enough that every restored name stays far below DynamoDB's 255 characters.
TABLE_SUFFIX_PATTERN = r"[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?"
SIGNAL_TABLE_SUFFIX_RE = re.compile(TABLE_SUFFIX_PATTERN, re.ASCII)
REPO_PATTERN = r"https://[A-Za-z0-9.-]+/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+?(?:\.git)?"

S3_URI = Pattern(S3_URI_PATTERN, "an s3://bucket/key URI (key of letters, digits and ! - _ . ' ( ) /)",
                 type_name="URL", show_pattern=False)
S3_BUCKET = Pattern(S3_BUCKET_PATTERN, "an S3 bucket name (3-63 of a-z, 0-9, `.` and `-`)", show_pattern=False)
E164 = Pattern(E164_PATTERN, "an E.164 phone number (+ and 7 to 15 digits)")
TABLE_SUFFIX = Pattern(TABLE_SUFFIX_PATTERN, "a table suffix (1-40 lowercase letters, digits and inner hyphens)",
                       show_pattern=False)
GIT_REPO = Pattern(REPO_PATTERN, "an https git repository URL (https://host/owner/name)", type_name="URL",
                   show_pattern=False)
EMAIL_PATTERN = EMAIL


def twilio_sid(prefix: str, what: str) -> Pattern:
    """Twilio SIDs: a two-letter type prefix and 32 hex digits (twilio.com/docs/glossary/what-is-a-sid)."""
    return Pattern(rf"{prefix}[0-9a-f]{{32}}", f"{what} ({prefix} + 32 hex digits)")


def app_hash() -> Pattern:
    """SMS Retriever app hash: 11 characters of base64 (developers.google.com/identity/sms-retriever/verify)."""
    return Pattern(r"[A-Za-z0-9+/]{11}", "an 11-character SMS Retriever app hash")


def _git_ref(text: str) -> str:
    if not facts.valid_git_ref(text):
        raise Invalid(f"{shown(text)} is not a valid git ref")
    refs = facts.supported_signal_refs()
    if text not in refs:
        raise Invalid(f"{shown(text)} has no data file configs/signal/{text}.yaml; supported: {', '.join(refs)}",
                      refs[-1] if refs else None)
    return text


GIT_REF = Custom(_git_ref, "a git tag with a data file configs/signal/<ref>.yaml", type_name="git ref")


# -- CIDR lists ----------------------------------------------------------------------------------------


class Cidr(Kind):
    type_name = "CIDR"

    def parse(self, text: str) -> str:
        why = facts.cidr_problem(text)
        if why is None:
            return str(ipaddress.ip_network(text))
        address = text.split("/", 1)[0]
        fix = None
        if facts.valid_ip(address) and ("host bits" in why or "bare address" in why):
            fix = f"{address}/{ipaddress.ip_address(address).max_prefixlen}"
        raise Invalid(why, fix)

    def allowed(self) -> str:
        return "a network in CIDR notation (10.0.0.0/8, 198.51.100.7/32, 2001:db8::/48)"


class CidrList(JsonList):
    """CIDRs for SSH: none twice, and together never every address of a family (0.0.0.0/0, or two /1s)."""

    def parse(self, text: str) -> tuple:
        networks = super().parse(text)
        for version, whole in ((4, "0.0.0.0/0"), (6, "::/0")):
            family = [ipaddress.ip_network(n) for n in networks if ipaddress.ip_network(n).version == version]
            if any(n.prefixlen == 0 for n in ipaddress.collapse_addresses(family)):
                raise Invalid(f"must not open SSH to the whole internet: together the entries cover every "
                              f"IPv{version} address ({whole}); list the addresses you administer from")
        return networks

    def allowed(self) -> str:
        return super().allowed() + "; together never a whole address family"


CIDR_LIST = CidrList(Cidr(), "CIDRs", normalise=lambda n: str(ipaddress.ip_network(n)))


# -- JSON objects ------------------------------------------------------------------------------------


def json_object(text: str, what: str, fix: Optional[str] = None):
    """The parsed JSON of `text`, or Invalid saying it must be `what`."""
    try:
        return load_json(text)
    except Invalid as invalid:
        raise Invalid(f"must be {what}: it {invalid.what}", fix) from None

RETENTION_KEYS = ("daily", "weekly", "monthly")
RETENTION_FIX = '{"daily":7,"weekly":4,"monthly":6}'


def _retention(text: str) -> dict[str, int]:
    parsed = json_object(text, "a JSON object with daily, weekly and monthly counts (0-1000)", RETENTION_FIX)
    retention = json.loads(RETENTION_FIX)
    if (not isinstance(parsed, dict) or set(parsed) - set(RETENTION_KEYS)
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 1000 for v in parsed.values())):
        raise Invalid(f"must be a JSON object with daily, weekly and monthly counts (0-1000), not {shown(text)}",
                      RETENTION_FIX)
    retention.update(parsed)
    if sum(retention.values()) == 0:
        raise Invalid("keeps no snapshot at all", RETENTION_FIX)
    return retention


RETENTION = Custom(_retention, "a JSON object of `daily`, `weekly` and `monthly` counts, each 0-1000, not all 0",
                   type_name="JSON object")

# The largest limit a container gets: 1 TiB, well past any host the program runs on.
MAX_CONTAINER_MEMORY_MB = 1024 * 1024


def _container_memory(text: str) -> dict[str, int]:
    """Sizes only: which names exist depends on other settings (the worker preset), a rule in load.py."""
    parsed = json_object(text, "a JSON object of container name to size")
    if not isinstance(parsed, dict):
        raise Invalid(f"must be a JSON object of container name to size, not {shown(text)}")
    sizes = {}
    for container, size in parsed.items():
        mb = facts.memory_mb(size) if isinstance(size, (str, int)) else None
        if mb is None or not facts.MIN_CONTAINER_MEMORY_MB <= mb <= MAX_CONTAINER_MEMORY_MB:
            raise Invalid(f"{container}: {shown(size)} is not a memory size from {facts.MIN_CONTAINER_MEMORY_MB}m "
                          f"to 1024g (e.g. 512m or 4g)")
        sizes[container] = mb
    return sizes


def plain_name(name: str) -> str:
    """A name as a message shows it: as is when plain, else quoted with escapes."""
    return name if re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name, re.ASCII) else shown(name)


CONTAINER_MEMORY = Custom(_container_memory, "a JSON object of container name (as `docker ps` shows it) to size: "
                                             "`512m`, `4g` (at least 32m)", type_name="JSON object")


# -- Synapse workers and media retention -----------------------------------------------------------------


class WorkerPreset(Kind):
    """One of components/matrix/workers.py's presets (read there, so a new preset needs no change here)."""

    type_name = "choice"
    fold_case = True

    @staticmethod
    def presets() -> tuple[str, ...]:
        from components.matrix import workers

        return tuple(workers.PRESETS)

    def parse(self, text: str) -> str:
        presets = self.presets()
        if text in presets:
            return text
        raise Invalid(f"must be one of {', '.join(presets)}, not {shown(text)}")

    def allowed(self) -> str:
        return ", ".join(f"`{p}`" for p in self.presets())


WORKER_PRESET = WorkerPreset()


def _worker_counts(text: str) -> dict[str, int]:
    """The shape only; which groups may have several processes depends on the preset (a rule in load.py)."""
    parsed = json_object(text, "a JSON object of worker group to number of processes")
    if not isinstance(parsed, dict):
        raise Invalid(f"must be a JSON object of worker group to number of processes, not {shown(text)}")
    return parsed


WORKER_COUNTS = Custom(_worker_counts, "a JSON object of worker group to number of processes, for the groups of "
                                       "the preset that may run several", type_name="JSON object")
# Synapse durations (synapse/config/_base.py parse_duration) in days, weeks or years; or `forever`.
MEDIA_LIFETIME = Pattern(r"[1-9][0-9]{0,4}[dwy]|forever", "a lifetime such as 30d, 8w or 1y (a whole number of "
                                                          "days, weeks or years), or forever", fold_case=True,
                         type_name="duration")


# -- restic's rest-server, monitoring, e-mail -----------------------------------------------------------

# rest-server: https only (the credentials and the data travel in it); its user names (htpasswd.go validUsername).
REST_URL_PATTERN = r"https://(?P<host>[A-Za-z0-9.-]+)(?::(?P<port>[0-9]{1,5}))?(?:/[A-Za-z0-9._~-]+)*/?"


def _rest_url(text: str) -> str:
    if text.lower().startswith("http://"):
        raise Invalid(f"{shown(text)}: plain http is refused, as the credentials and the snapshots travel in it",
                      "https://" + text[len("http://"):])
    matched = re.fullmatch(REST_URL_PATTERN, text, re.ASCII)
    if not matched:
        raise Invalid(f"{shown(text)} is not an https://host[:port]/path/ URL")
    port = matched.group("port")
    if port is not None and not 1 <= int(port) <= 65535:
        raise Invalid(f"{shown(text)}: port {int(port)} is out of range (1-65535)")
    return text


REST_URL = Custom(_rest_url, "an https://host[:port]/path/ URL (plain http is refused)", type_name="URL")
REST_USER = Pattern(r"[A-Za-z0-9_.@-]{1,64}", "a rest-server user name (letters, digits, _ - . @)")


class PemCertificates(Kind):
    """One or more PEM certificates: the one kind whose value spans lines (schema.py's rule allows it)."""

    type_name = "PEM"
    multiline = True

    def parse(self, text: str) -> str:
        if not re.fullmatch(r"(-----BEGIN CERTIFICATE-----\s+[A-Za-z0-9+/=\s]+-----END CERTIFICATE-----\s*)+", text,
                            re.ASCII):
            raise Invalid("is not a PEM certificate (-----BEGIN CERTIFICATE----- ...)")
        return text.strip() + "\n"

    def allowed(self) -> str:
        return "PEM certificates (lines allowed)"


PEM_CERTIFICATES = PemCertificates()
# A Matrix user ID of this or another server: @localpart:server (the spec's historical user ID grammar).
MXID = Pattern(r"@[a-z0-9._=/+-]{1,255}:(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?",
               "a Matrix user ID (@localpart:server, localpart in lowercase a-z 0-9 . _ = - / +)", show_pattern=False)
EMAIL_ADDRESS = Pattern(EMAIL, "an e-mail address", show_pattern=False, type_name="e-mail address")


def _host(text: str) -> str:
    if facts.valid_ip(text) or re.fullmatch(r"(?:(?!-)[a-z0-9-]{1,63}(?<!-)\.)*(?!-)[a-z0-9-]{1,63}(?<!-)", text,
                                             re.ASCII):
        return text
    raise Invalid(f"{shown(text)} is not a host name or IP address")


HOST = Custom(_host, "a host name or IP address", type_name="host", fold_case=True)
