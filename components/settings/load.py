"""Reading the stack config: every value through its schema entry, then the rules between settings.

`check(config)` is pure: a mapping of config keys to text in, a `Checked` (values, problems,
warnings) out, with no Pulumi runtime. `load_settings()` feeds it the engine's config, raises one
`SettingsError` listing every problem before any resource exists, logs the warnings, and builds
the frozen settings (secrets as secret Outputs).

Every problem reads `<key>: <what is wrong>. Fix: <a pulumi config line>`, and every fix line is
checked before it is printed: applied to the config, the key it names must validate.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

import components.settings.facts as facts
from components.settings.keys import unknown_keys
from components.settings.kinds import Invalid, compact_json, docker_host_parts, normalise, shown
from components.settings.model import (BackupSettings, EdgeSettings, MatrixSettings, MonitoringSettings,
                                       PostgresSettings, Settings, SettingsError, SignalSettings, SmtpSettings)
from components.settings.schema import PROJECT, SCHEMA, SETTINGS, Setting, set_line
from components.settings.shapes import plain_name

RM = object()  # a fix candidate: `pulumi config rm <key>` (back to the default)
EMPTY_DEFAULTS = ("", "[]", "{}")


class Problem:
    """One problem: the key, what is wrong, and the values for the key that could fix it, best first
    (RM: remove the key); the first that validates is printed. `fix_text`: a fix that is not a value of
    `key` (an unknown key's removal), printed as is."""

    __slots__ = ("key", "what", "candidates", "fix_text")

    def __init__(self, key: str, what: str, candidates: Optional[list] = None, fix_text: Optional[str] = None):
        self.key, self.what, self.candidates, self.fix_text = key, what, candidates or [], fix_text

    def __repr__(self) -> str:
        return f"Problem({self.key!r}, {self.what!r}, {self.candidates!r})"

    def line(self, fix: str) -> str:
        stop = "" if self.what.endswith(("?", ".")) else "."
        return f"{self.key}: {self.what}{stop} Fix: {fix}"


def fix_line(key: str, candidate: Any) -> str:
    if candidate is RM:
        return f"pulumi config rm {key}"
    setting = SETTINGS.get(key)
    return set_line(key, candidate, bool(setting and setting.secret))


class Checked:
    """The outcome of `check`: each setting's value (parsed, or its default), problems and warnings."""

    def __init__(self, config: Mapping[str, Any]):
        self.config = config
        self.values: dict[str, Any] = {}
        self.given: set[str] = set()  # keys set (non-empty) with a valid value
        self.problems: list[Problem] = []
        self.warnings: list[str] = []
        # Results of the rules the settings are built from.
        self.derived: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def problem(self, key: str, what: str, *candidates: Any, fix_text: Optional[str] = None) -> None:
        setting = SETTINGS.get(key)
        ordered = list(candidates)
        if setting is not None:
            if setting.default not in (None, *EMPTY_DEFAULTS):
                ordered.append(setting.default)
            ordered.append(setting.example)
            if setting.default is not None and not setting.required:
                ordered.append(RM)
        current = _text(self.config.get(key))
        # A fix that sets the value the key already has would leave the user where they were.
        ordered = [c for i, c in enumerate(ordered) if c is RM or (c is not None and c != current)
                   and c not in ordered[:i]]
        self.problems.append(Problem(key, what, ordered, fix_text))

    def check(self, ok: bool, key: str, what: str, *candidates: Any) -> None:
        if not ok:
            self.problem(key, what, *candidates)

    def has_problem(self, key: str) -> bool:
        return any(p.key == key for p in self.problems)


def _text(raw: Any) -> Optional[str]:
    return None if raw is None else str(raw)


def _default(setting: Setting) -> Any:
    if setting.default is None:
        return None
    if setting.default == "" or setting.kind.secret:
        return "" if setting.kind.type_name not in ("integer",) else None
    return setting.kind.parse(normalise(setting.default, setting.kind.fold_case))


_DEFAULTS: dict[str, Any] = {}


def default_value(key: str) -> Any:
    if key not in _DEFAULTS:
        _DEFAULTS[key] = _default(SETTINGS[key])
    return _DEFAULTS[key]


def check(config: Mapping[str, Any], stack: str = "", encrypted: Optional[Iterable[str]] = None) -> Checked:
    """Validates a whole stack config. `encrypted`: the keys the engine holds as secrets (None: unknown)."""
    checked = Checked(config)
    # A misspelt key leaves the setting it was meant for at its default, so the other
    # checks would judge a config nobody meant: these are reported first, alone.
    for key, what, fix in unknown_keys(set(config)):
        checked.problems.append(Problem(key, what, fix_text=fix))
    if checked.problems:
        return checked
    for setting in SCHEMA:
        _read(checked, setting)
    _rules(checked, stack)
    _applies(checked)
    if encrypted is not None:
        _plaintext_secrets(checked, set(encrypted))
    return checked


def _read(checked: Checked, setting: Setting) -> None:
    key, kind = setting.key, setting.kind
    checked.values[key] = default_value(key)
    raw = checked.config.get(key)
    if raw is None or not str(raw).strip():
        return
    if kind.secret:
        checked.values[key] = str(raw).strip()
        checked.given.add(key)
        return
    try:
        checked.values[key] = kind.parse(normalise(raw, kind.fold_case, kind.multiline))
        checked.given.add(key)
    except Invalid as invalid:
        checked.problem(key, invalid.what, invalid.fix)


def _required(checked: Checked) -> None:
    for setting in SCHEMA:
        if not setting.required or setting.key in checked.given or checked.has_problem(setting.key):
            continue
        if checked.values.get(setting.key) not in (None, "") or not setting.applies.holds(checked.get):
            continue
        reasons = setting.applies.matching(checked.get)
        blank = setting.key in checked.config and not str(checked.config[setting.key]).strip()
        empty = " (it is set but empty)" if blank else ""
        why = f": {setting.required_why}" if setting.required_why else ""
        where = "" if setting.applies.always else f" when {'; also when '.join(reasons)}"
        checked.problem(setting.key, f"is required{empty}{where}{why}")


def _applies(checked: Checked) -> None:
    """A warning for each setting given where it has no effect (non-secret commstack settings)."""
    for key in sorted(checked.given):
        setting = SETTINGS[key]
        if setting.namespace != PROJECT or setting.secret or checked.has_problem(key):
            continue
        if not setting.applies.holds(checked.get):
            checked.warnings.append(f"{key} is set but has no effect: it applies when {setting.applies.text}. "
                                    f"To say so: pulumi config rm {key}")


# Keys of the providers' own settings that hold credentials.
PROVIDER_SECRETS = ("aws:secretKey", "aws:token", "cloudflare:apiToken", "cloudflare:apiKey",
                    "cloudflare:apiUserServiceKey")


def _plaintext_secrets(checked: Checked, encrypted: set[str]) -> None:
    secrets = [s.key for s in SCHEMA if s.secret] + list(PROVIDER_SECRETS)
    for key in secrets:
        raw = checked.config.get(key)
        if raw is not None and str(raw).strip() and key not in encrypted:
            example = SETTINGS[key].example if key in SETTINGS else "<value>"
            checked.warnings.append(f"{key} is stored in plaintext in the stack's config file, where anyone who reads "
                                    f"the file or the repository sees it. Fix: pulumi config set --secret {key} "
                                    f"{example}")


# -- the rules between settings ------------------------------------------------------------------------


def internet_facing_reasons(domain: str, cloudflare_dns: bool, signal_target: str, public_ip: str = "",
                            docker_host: str = "") -> list[str]:
    """Why a stack's Signal half can be reached from beyond this machine (empty: local only)."""
    reasons = []
    if cloudflare_dns:
        reasons.append("cloudflareDns is true (public DNS records)")
    if domain and not facts.non_public_domain(domain):
        reasons.append(f"{domain!r} is a public domain")
    if signal_target == "aws":
        reasons.append("signalTarget is aws (the instance answers on a public Elastic IP)")
    if public_ip and not facts.non_routable_ipv4(public_ip):
        reasons.append(f"publicIp {public_ip} is a public address")
    scheme, host = docker_host_parts(docker_host) if docker_host else ("", "")
    if scheme == "ssh" and host.strip("[]").lower() not in ("localhost", "127.0.0.1", "::1"):
        reasons.append(f"dockerHost {docker_host} is another machine, whose ports its network reaches")
    return reasons


def _rules(v: Checked, stack: str) -> None:
    _edge_rules(v)
    _matrix_rules(v)
    _worker_rules(v)
    _monitoring_rules(v)
    _required(v)
    _postgres_rules(v)
    _signal_rules(v)


def _edge_rules(v: Checked) -> None:
    domain = v.get("commstack:domain") or ""
    v.derived["domain_ok"] = domain_ok = bool(domain) and "commstack:domain" in v.given
    tls, cloudflare_dns = v.get("commstack:tls"), v.get("commstack:cloudflareDns")
    public_ip = v.get("commstack:publicIp")
    v.check(not v.get("commstack:cloudflareScopedDnsToken") or cloudflare_dns, "commstack:cloudflareScopedDnsToken",
            "needs cloudflareDns true (the token is scoped to the zone the program looks up)", "false")
    v.check(not v.get("commstack:cloudflareProxyHttp") or cloudflare_dns, "commstack:cloudflareProxyHttp",
            "needs cloudflareDns true", "false")
    if domain_ok and facts.non_public_domain(domain):
        v.check(tls != "letsencrypt", "commstack:tls",
                f"letsencrypt cannot issue for {domain!r}, which is not a public domain "
                f"({', '.join(facts.NON_PUBLIC_SUFFIXES)} are reserved or private)", "self-signed")
        v.check(not cloudflare_dns, "commstack:cloudflareDns",
                f"{domain!r} is not a public domain, so no Cloudflare zone can hold its records", "false")
    v.check(not (cloudflare_dns and facts.non_routable_ipv4(public_ip)), "commstack:publicIp",
            f"{public_ip!r} is a loopback, private or reserved address, which public DNS records "
            "(cloudflareDns true) must not point at; give the host's public IPv4", "203.0.113.10")


MATRIX_SUBDOMAIN_KEYS = ("commstack:matrixSubdomain", "commstack:elementSubdomain", "commstack:turnSubdomain",
                         "commstack:rtcSubdomain")


def free_label(key: str, taken: set[str]) -> str:
    """A subdomain for `key` that no other key uses: its default if free, else a numbered one."""
    default = str(SETTINGS[key].default)
    candidates = [default] + [f"{default}{n}" for n in range(2, 10)]
    return next(c for c in candidates if c not in taken and c not in facts.SIGNAL_SUBDOMAINS)


def _matrix_rules(v: Checked) -> None:
    domain, domain_ok = v.get("commstack:domain") or "", v.derived["domain_ok"]
    valid_labels = {}
    for key in MATRIX_SUBDOMAIN_KEYS:
        if v.has_problem(key):
            continue
        label = v.get(key)
        if domain_ok and len(f"{label}.{domain}") > facts.MAX_HOSTNAME_LENGTH:
            blame = key if len(f"{SETTINGS[key].default}.{domain}") <= facts.MAX_HOSTNAME_LENGTH else "commstack:domain"
            v.problem(blame, f"{label}.{domain} is {len(label) + 1 + len(domain)} characters; a hostname may be at "
                             f"most {facts.MAX_HOSTNAME_LENGTH} here (certificates carry it as their common name)",
                      free_label(key, set()) if blame == key else None)
        else:
            valid_labels[key] = label
    v.derived["valid_labels"] = valid_labels
    # Two hosts on one name: blame the key that left its default (the one the user changed),
    # and offer a name nothing else uses.
    by_label: dict[str, list[str]] = {}
    for key, label in valid_labels.items():
        by_label.setdefault(label, []).append(key)
    for label, keys in by_label.items():
        if len(keys) < 2:
            continue
        keeper = next((k for k in keys if SETTINGS[k].default == label), keys[0])
        for key in (k for k in keys if k != keeper):
            v.problem(key, f"{label!r} is also {keeper.split(':')[1]}'s subdomain; matrix, element, turn "
                           "and rtc subdomains must all differ", free_label(key, set(valid_labels.values())))

    tls, federation = v.get("commstack:tls"), v.get("commstack:federation")
    federation_port, proxy_http = v.get("commstack:federationPort"), v.get("commstack:cloudflareProxyHttp")
    v.check(not (federation and federation_port not in facts.CLOUDFLARE_HTTPS_PORTS and proxy_http),
            "commstack:federationPort", f"{federation_port} is not a port Cloudflare proxies, and cloudflareProxyHttp "
                                        "is true; delegate federation through 443", "443")
    # Other homeservers verify the certificate of federation requests (Matrix server-server
    # API, "TLS"), so a generated one only federates behind a proxy that presents its own.
    cloudflare_fronts_federation = proxy_http and federation_port in facts.CLOUDFLARE_HTTPS_PORTS
    if federation and tls == "self-signed" and not cloudflare_fronts_federation and domain_ok:
        if facts.non_public_domain(domain):
            v.warnings.append(f"commstack:federation is true but tls is self-signed: other homeservers refuse that "
                              f"certificate (and cannot reach {domain}, which is not a public name), so this stack "
                              "federates with nobody. To say so: pulumi config set commstack:federation false")
        elif not v.has_problem("commstack:tls"):
            v.problem("commstack:federation",
                      "federation cannot work with tls self-signed: other homeservers refuse a certificate the "
                      "program generated; use tls letsencrypt (pulumi config set commstack:tls letsencrypt) "
                      "or turn federation off", "false")
    # Clients behind strict NATs reach LiveKit only through coturn (LiveKit hands them its credentials).
    v.check(not v.get("commstack:calls") or v.get("commstack:turn"), "commstack:calls",
            "needs commstack:turn true (coturn is the TURN relay LiveKit hands clients behind strict NATs); "
            "set turn true, or calls false", "false")


def worker_containers(preset: str, counts: tuple[tuple[str, int], ...] = ()) -> tuple[str, ...]:
    """The docker names of a worker preset's containers (its workers and their Redis)."""
    from components.matrix import workers

    if preset not in workers.PRESETS or workers.count_problems(preset, dict(counts)):
        return ()
    plan = workers.worker_plan(preset, dict(counts))
    return (*(p.name for p in plan.processes), "synapse-redis") if plan.enabled else ()


def _worker_rules(v: Checked) -> None:
    """commstack:synapseWorkerCounts against the preset's groups, and commstack:containerMemory's names
    against the containers this stack has (the worker preset's among them)."""
    preset, counts = v.get("commstack:synapseWorkers"), v.get("commstack:synapseWorkerCounts")
    v.derived["worker_counts"] = ()
    if counts and not v.has_problem("commstack:synapseWorkers"):
        from components.matrix import workers

        scalable = workers.scalable_groups(preset)
        example = compact_json({scalable[0]: 2}) if scalable else "{}"
        problems = workers.count_problems(preset, counts)
        for problem in problems:
            v.problem("commstack:synapseWorkerCounts", problem, example)
        v.derived["worker_counts"] = () if problems else tuple(sorted(counts.items()))
    memory = v.get("commstack:containerMemory")
    if memory:
        known = (*facts.known_containers(), *worker_containers(preset, v.derived["worker_counts"]))
        unknown = [name for name in memory if name not in known]
        v.check(not unknown, "commstack:containerMemory",
                f"no container is named {', '.join(map(plain_name, unknown))}; containers: {', '.join(known)}",
                compact_json({k: f"{m}m" for k, m in memory.items() if k in known}))


def _monitoring_rules(v: Checked) -> None:
    """Grafana reads Prometheus; alert e-mails and every smtp* setting need smtpHost; a login needs its password."""
    v.check(not v.get("commstack:grafana") or v.get("commstack:monitoring"), "commstack:grafana",
            "needs commstack:monitoring true (Grafana reads its Prometheus)", "false")
    host = v.get("commstack:smtpHost")
    v.check(bool(host) or not v.get("commstack:alertEmails"), "commstack:alertEmails",
            "needs outgoing e-mail: set commstack:smtpHost (and smtpFrom) first, or send alerts to the Matrix room only",
            "[]")
    user, has_password = v.get("commstack:smtpUser"), bool(v.get("commstack:smtpPassword"))
    if not host:
        for key, on in (("commstack:smtpUser", user), ("commstack:smtpFrom", v.get("commstack:smtpFrom")),
                        ("commstack:smtpPassword", has_password)):
            v.check(not on, key, "is set, but smtpHost is empty, so e-mail is off; name the SMTP server "
                                 "(commstack:smtpHost) or remove this", RM)
        return
    v.check(bool(v.get("commstack:smtpFrom")), "commstack:smtpFrom",
            "is required with smtpHost (the From address of every e-mail)")
    v.check(not user or has_password, "commstack:smtpPassword", "is required with smtpUser")
    v.check(bool(user) or not has_password, "commstack:smtpUser",
            "is required with smtpPassword (the login it belongs to)")
    v.check(not (v.get("commstack:smtpTls") == "tls" and v.get("commstack:smtpPort") == 587), "commstack:smtpPort",
            "587 is the STARTTLS port, but smtpTls is tls (TLS from the first byte, port 465); use 465, or smtpTls "
            "starttls", "465")


def _signal_rules(v: Checked) -> None:
    if not v.get("commstack:signal"):
        return
    target, region = v.get("commstack:signalTarget"), v.get("aws:region")
    valid_labels = v.derived["valid_labels"]
    for key, label in valid_labels.items():
        v.check(label not in facts.SIGNAL_SUBDOMAINS, key,
                f"{label!r} is a Signal hostname ({', '.join(facts.SIGNAL_SUBDOMAINS)}) and the Signal half is on",
                free_label(key, set(valid_labels.values()) - {label}))
    v.check(not (v.get("commstack:signalRedis") == "elasticache" and target == "docker"), "commstack:signalRedis",
            "elasticache needs signalTarget aws", "containers")
    instance_type = v.get("commstack:signalInstanceType")
    if target == "aws" and not v.has_problem("commstack:signalInstanceType"):
        described = facts.ec2_instance_types()[instance_type]
        # components/signal/host.py looks up an x86_64 AMI (its `architecture` filter).
        if "x86_64" not in described.architectures:
            arm = "an ARM (Graviton) type" if "arm64" in described.architectures else \
                f"a {'/'.join(described.architectures)} type"
            v.problem("commstack:signalInstanceType",
                      f"{instance_type!r} is {arm}, but the Signal instance runs an x86_64 image", "t3.large")
        elif (described.vcpus < facts.SIGNAL_MIN_VCPUS
              or described.memory_mib < facts.SIGNAL_MIN_MEMORY_MIB):
            v.problem("commstack:signalInstanceType",
                      f"{instance_type!r} has {described.vcpus} vCPUs and {described.memory_mib / 1024:g} GiB; "
                      f"Signal-Server's host needs at least {facts.SIGNAL_MIN_VCPUS} vCPUs and "
                      f"{facts.SIGNAL_MIN_MEMORY_MIB // 1024} GiB (its 2 GiB heap, registration-service, six Redis "
                      "nodes and the jar's build)", "t3.large")
    v.check(not v.get("commstack:signalRestoredTables") or target == "aws", "commstack:signalRestoredTables",
            "is for signalTarget aws: DynamoDB Local on the docker target has no point-in-time recovery to "
            "restore from", "[]")
    _signal_verification(v, target, region)


TWILIO_KEYS = ("commstack:signalTwilioAccountSid", "commstack:signalTwilioApiKeySid",
               "commstack:signalTwilioApiKeySecret", "commstack:signalTwilioVerifyServiceSid",
               "commstack:signalTwilioAndroidAppHash")
INSECURE_REGISTRATION_KEY = "commstack:signalInsecureUnverifiedRegistration"


def _signal_verification(v: Checked, target: str, region: Optional[str]) -> None:
    """Every way of letting unverified numbers register is a problem, except the explicit insecure
    setting on a stack nothing beyond this machine can reach."""
    if not v.get(INSECURE_REGISTRATION_KEY):
        return
    domain = v.get("commstack:domain") if v.derived["domain_ok"] else ""
    facing = internet_facing_reasons(domain, v.get("commstack:cloudflareDns"), target,
                                     v.get("commstack:publicIp"), v.get("commstack:dockerHost"))
    v.check(not facing, INSECURE_REGISTRATION_KEY,
            "lets anyone register any phone number (registration-service's dev environment derives the code "
            f"from the number), and this stack faces the internet: {'; '.join(facing)}. Configure Twilio Verify "
            "(signalTwilio* settings) instead", "false")
    # The non-secret Twilio settings say which mode the stack meant (a stored secret alone is ignored).
    given = [key for key in TWILIO_KEYS if key in v.given and not SETTINGS[key].secret]
    v.check(not given, INSECURE_REGISTRATION_KEY,
            f"conflicts with the Twilio settings ({', '.join(given)}): choose Twilio Verify or the insecure "
            "dev environment, not both", "false")
    v.check(not v.get("commstack:signalAllowedNumbers"), "commstack:signalAllowedNumbers",
            "is enforced only when numbers are verified (Twilio Verify); with signalInsecureUnverifiedRegistration "
            "anyone could still register a listed number", "[]")


# -- Postgres major upgrades -------------------------------------------------------------------------


def postgres_image_major(reference: str) -> Optional[int]:
    """15 for postgres:15.14-bookworm; None for a tag that names no major."""
    import re

    matched = re.match(r"^([0-9]+)(?:[.-]|$)", reference.rpartition(":")[2], re.ASCII)
    return int(matched.group(1)) if matched else None


def postgres_upgrade_steps(old: int, new: int) -> str:
    return (f"take a backup (python -m commstack backup), then `pulumi config set commstack:postgresUpgradeFrom {old}` "
            f"and `pulumi up`: a one-shot job backs up again, dumps every database from Postgres {old} and restores "
            f"them into a new volume for Postgres {new}, keeping the old one; then `pulumi config set "
            f"commstack:postgresMajor {new}` and `pulumi up` to switch (docs: Postgres major upgrades)")


def _postgres_rules(v: Checked) -> None:
    """The refusal of a Postgres major change that no upgrade covers, before any resource exists."""
    import re

    from components import pins

    pinned = pins.images()
    reference = pinned.get("postgres", "")
    image_major = postgres_image_major(reference) or facts.LEGACY_POSTGRES_MAJOR
    data_major = v.get("commstack:postgresMajor") if not v.has_problem("commstack:postgresMajor") else None
    data_major = data_major or facts.LEGACY_POSTGRES_MAJOR
    upgrade_from = v.get("commstack:postgresUpgradeFrom") if not v.has_problem("commstack:postgresUpgradeFrom") else None
    v.derived["postgres"] = PostgresSettings(data_major=data_major, image_major=image_major, upgrade_from=upgrade_from)
    if upgrade_from is None:
        if data_major < image_major:
            v.problem("commstack:postgresUpgradeFrom",
                      f"configs/images.yaml runs {reference} (Postgres {image_major}) but this stack's data is on "
                      f"Postgres {data_major} (commstack:postgresMajor), and a new major cannot open an old major's "
                      f"data directory. Nothing was changed. To upgrade: {postgres_upgrade_steps(data_major, image_major)}. "
                      f"(A new stack with no data yet: pulumi config set commstack:postgresMajor {image_major})",
                      str(data_major))
        elif data_major > image_major:
            v.problem("commstack:postgresMajor",
                      f"this stack's data is on Postgres {data_major}, but configs/images.yaml runs {reference} "
                      f"(Postgres {image_major}), an older major that cannot read it; pin postgres back to a "
                      f"{data_major}.x tag in configs/images.yaml (or, after a rollback to the kept volume of "
                      f"Postgres {image_major}, record that major)", str(image_major))
        return
    if upgrade_from >= image_major:
        v.problem("commstack:postgresUpgradeFrom",
                  f"upgrades go to a newer major: {upgrade_from} is not older than configs/images.yaml's "
                  f"Postgres {image_major} ({reference})", RM)
    elif f"postgres-{upgrade_from}" not in pinned:
        known = sorted(int(k.split("-", 1)[1]) for k in pinned if re.fullmatch(r"postgres-[0-9]+", k, re.ASCII))
        usable = [m for m in known if m < image_major]
        v.problem("commstack:postgresUpgradeFrom",
                  f"configs/images.yaml pins no image for Postgres {upgrade_from} (a postgres-{upgrade_from} entry), "
                  f"which runs the old server during the upgrade; majors it can upgrade from: "
                  f"{', '.join(map(str, usable)) or 'none'}", *map(str, usable), RM)
    elif data_major not in (upgrade_from, image_major):
        v.problem("commstack:postgresMajor",
                  f"during the upgrade from Postgres {upgrade_from} to {image_major} it is {upgrade_from} (the job "
                  f"has not switched yet) or {image_major} (switched), not {data_major}", str(upgrade_from))
    elif not v.get("commstack:backup"):
        v.problem("commstack:backup", f"the upgrade from Postgres {upgrade_from} takes a backup first; turn backups "
                                      "on for it", "true")


# -- fixes that validate -------------------------------------------------------------------------------


def chosen_fixes(checked: Checked, stack: str = "") -> list[str]:
    """Each problem as its message, with the first fix candidate under which the key it names validates."""
    lines = []
    before = {p.key for p in checked.problems}
    for problem in checked.problems:
        if problem.fix_text is not None:
            lines.append(problem.line(problem.fix_text))
            continue
        # Best: a fix that brings up no new problem elsewhere; else one that at least settles this key.
        chosen = next((c for c in problem.candidates
                       if fixes(checked.config, problem.key, c, stack, before - {problem.key})), None)
        if chosen is None:
            chosen = next((c for c in problem.candidates if fixes(checked.config, problem.key, c, stack)), None)
        if chosen is None:
            chosen = problem.candidates[0] if problem.candidates else RM
        lines.append(problem.line(fix_line(problem.key, chosen)))
    return lines


def fixes(config: Mapping[str, Any], key: str, candidate: Any, stack: str = "",
          others: Optional[set[str]] = None) -> bool:
    """Whether setting `key` to `candidate` (RM: removing it) leaves no problem on `key`, and (given the keys
    that have problems of their own, `others`) brings up no problem on another key."""
    changed = dict(config)
    if candidate is RM:
        changed.pop(key, None)
    else:
        changed[key] = candidate
    after = {p.key for p in check(changed, stack).problems}
    return key not in after and (others is None or after <= others)


# -- building the settings ------------------------------------------------------------------------------


def build(v: Checked, stack: str, secret) -> Settings:
    """The settings from a config without problems; `secret(key)` makes a secret's Output (None when unset)."""
    domain = v.get("commstack:domain")
    labels = {key: v.get(key) for key in MATRIX_SUBDOMAIN_KEYS}
    bridges = v.get("commstack:bridges")
    backup = v.get("commstack:backup")
    backup_target = v.get("commstack:backupTarget")
    signal_on = v.get("commstack:signal")
    insecure = v.get(INSECURE_REGISTRATION_KEY) if signal_on else False
    retention = v.get("commstack:backupRetention")
    federation = v.get("commstack:federation")
    return Settings(
        stack=stack,
        docker_host=v.get("commstack:dockerHost"),
        edge=EdgeSettings(
            public_ip=v.get("commstack:publicIp"),
            tls=v.get("commstack:tls"),
            acme_email=v.get("commstack:acmeEmail"),
            cloudflare_dns=v.get("commstack:cloudflareDns"),
            cloudflare_proxy_http=v.get("commstack:cloudflareProxyHttp"),
            cloudflare_scoped_dns_token=v.get("commstack:cloudflareScopedDnsToken"),
            cloudflare_api_token=secret("commstack:cloudflareApiToken"),
        ),
        matrix=MatrixSettings(
            domain=domain,
            matrix_host=f"{labels['commstack:matrixSubdomain']}.{domain}",
            element_host=f"{labels['commstack:elementSubdomain']}.{domain}",
            turn_host=f"{labels['commstack:turnSubdomain']}.{domain}",
            calls=v.get("commstack:calls"),
            rtc_host=f"{labels['commstack:rtcSubdomain']}.{domain}",
            registration=v.get("commstack:registration"),
            federation=federation,
            federation_port=v.get("commstack:federationPort") if federation else 443,
            turn=v.get("commstack:turn"),
            element=v.get("commstack:element"),
            bridges=tuple(bridges),
            telegram_api_id=v.get("commstack:telegramApiId") if "telegram" in bridges else None,
            telegram_api_hash=secret("commstack:telegramApiHash") if "telegram" in bridges else None,
            synapse_workers=v.get("commstack:synapseWorkers"),
            synapse_worker_counts=v.derived["worker_counts"],
            media_retention_local=forever_as_empty(v.get("commstack:mediaRetentionLocal")),
            media_retention_remote=forever_as_empty(v.get("commstack:mediaRetentionRemote")),
        ),
        signal=SignalSettings(
            enabled=signal_on,
            target=v.get("commstack:signalTarget"),
            region=v.get("aws:region"),
            instance_type=v.get("commstack:signalInstanceType"),
            server_repo=v.get("commstack:signalServerRepo"),
            server_ref=v.get("commstack:signalServerRef"),
            jar_s3_uri=v.get("commstack:signalJarS3Uri"),
            redis=v.get("commstack:signalRedis"),
            admin_cidrs=tuple(v.get("commstack:adminCidrs")),
            restored_tables=tuple(v.get("commstack:signalRestoredTables")) if signal_on else (),
            twilio_account_sid=v.get("commstack:signalTwilioAccountSid"),
            twilio_api_key_sid=v.get("commstack:signalTwilioApiKeySid"),
            twilio_verify_service_sid=v.get("commstack:signalTwilioVerifyServiceSid"),
            twilio_android_app_hash=v.get("commstack:signalTwilioAndroidAppHash"),
            twilio_api_key_secret=None if insecure or not signal_on else secret("commstack:signalTwilioApiKeySecret"),
            allowed_numbers=tuple(v.get("commstack:signalAllowedNumbers")),
            insecure_unverified_registration=insecure,
        ),
        warnings=tuple(v.warnings),
        backup=BackupSettings(
            enabled=backup, schedule=v.get("commstack:backupSchedule"), keep_daily=retention["daily"],
            keep_weekly=retention["weekly"], keep_monthly=retention["monthly"], target=backup_target,
            region=v.get("aws:region") if backup_target == "aws" else None,
            s3_endpoint=v.get("commstack:backupS3Endpoint").rstrip("/"), s3_bucket=v.get("commstack:backupS3Bucket"),
            s3_access_key_id=secret("commstack:backupS3AccessKeyId") if backup_target == "s3" else None,
            s3_secret_access_key=secret("commstack:backupS3SecretAccessKey") if backup_target == "s3" else None,
            rest_url=v.get("commstack:backupRestUrl") if backup_target == "rest" else "",
            rest_username=v.get("commstack:backupRestUsername") if backup_target == "rest" else "",
            rest_password=secret("commstack:backupRestPassword") if backup_target == "rest" else None,
            rest_ca_certificate=v.get("commstack:backupRestCaCertificate") if backup_target == "rest" else ""),
        container_memory=dict(v.get("commstack:containerMemory")),
        volume_names=v.get("commstack:volumeNames"),
        monitoring=MonitoringSettings(
            enabled=v.get("commstack:monitoring"),
            alert_recipients=tuple(dict.fromkeys(v.get("commstack:alertRecipients") or [f"@admin:{domain}"])),
            alert_emails=tuple(dict.fromkeys(v.get("commstack:alertEmails"))),
            grafana=v.get("commstack:grafana")),
        smtp=SmtpSettings(
            host=v.get("commstack:smtpHost"), port=v.get("commstack:smtpPort"), from_address=v.get("commstack:smtpFrom"),
            tls=v.get("commstack:smtpTls"), user=v.get("commstack:smtpUser"),
            password=secret("commstack:smtpPassword") if v.get("commstack:smtpUser") else None,
        ) if v.get("commstack:smtpHost") else None,
        postgres=v.derived["postgres"],
    )


def forever_as_empty(lifetime: str) -> str:
    """A media lifetime as MatrixSettings holds it: "" keeps the media forever."""
    return "" if lifetime == "forever" else lifetime


# -- the engine's config -------------------------------------------------------------------------------


def given_config_keys() -> set[str]:
    """Every config key the engine handed the program (`pulumi config` of the stack)."""
    from pulumi.runtime import config as runtime_config

    return set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())


def engine_config() -> tuple[dict[str, Any], set[str]]:
    """(every config value the engine handed the program, the keys it holds as secrets)."""
    from pulumi.runtime import config as runtime_config

    config = {key: runtime_config.get_config(key) for key in given_config_keys()}
    encrypted = {key for key in config if runtime_config.is_config_secret(key)}
    return config, encrypted | set(runtime_config.get_config_secret_keys_env())


def load_settings(stack: Optional[str] = None) -> Settings:
    """Reads and validates the whole stack config; raises SettingsError."""
    import pulumi

    stack = stack or pulumi.get_stack()
    config, encrypted = engine_config()
    checked = check(config, stack, encrypted)
    if checked.problems:
        raise SettingsError(chosen_fixes(checked, stack))
    for warning in checked.warnings:
        pulumi.log.warn(warning)

    def secret(key: str) -> Optional[pulumi.Output]:
        value = checked.get(key)
        return pulumi.Output.secret(value) if value else None

    return build(checked, stack, secret)


__all__ = ["Checked", "Problem", "RM", "build", "check", "chosen_fixes", "engine_config", "fixes",
           "given_config_keys", "internet_facing_reasons", "load_settings", "postgres_image_major",
           "postgres_upgrade_steps", "shown"]
