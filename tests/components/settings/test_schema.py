"""The schema's rules on odd input, checked on the pure validator (no engine): every kind of bad input
is refused naming its key with a fix that validates, or accepted because the schema says so; every
printed fix line, applied to the config, validates."""

from __future__ import annotations

import shlex

import pytest

from components.settings import SCHEMA, SETTINGS, check
from components.settings.load import chosen_fixes, internet_facing_reasons
from tests.conftest import stack_config


def problems(stack: str, **overrides) -> list[str]:
    config = stack_config(stack, **overrides)
    return chosen_fixes(check(config, stack), stack)


def lines_for(key: str, stack: str, **overrides) -> list[str]:
    found = problems(stack, **overrides)
    named = [p for p in found if p.startswith(f"{key}:")]
    assert named, f"no problem names {key}: {found}"
    return named


# (case, stack, overrides, key named, what the message says, the fix line printed)
REFUSED = [
    # a digit that is not ASCII never reaches a container
    ("schedule-fullwidth-digit", "dev", {"backupSchedule": "0３:30"}, "commstack:backupSchedule",
     "is not ASCII ('３', U+FF13)", "pulumi config set commstack:backupSchedule 03:30"),
    ("bucket-arabic-digit", "dev", {"backupTarget": "s3", "backupS3Bucket": "backups-٣"}, "commstack:backupS3Bucket",
     "is not ASCII", "pulumi config set commstack:backupS3Bucket backups-3"),
    # values are matched whole, never as a prefix
    ("availability-zone-as-region", "prod", {"aws__region": "eu-central-1a"}, "aws:region",
     "'eu-central-1a' is an availability zone; the region is eu-central-1", "pulumi config set aws:region eu-central-1"),
    ("schedule-with-a-tail", "dev", {"backupSchedule": "03:30x"}, "commstack:backupSchedule",
     "is not a time of day HH:MM", "pulumi config set commstack:backupSchedule 03:30"),
    ("endpoint-with-a-path", "dev", {"backupTarget": "s3", "backupS3Endpoint": "https://s3.example.org/x y"},
     "commstack:backupS3Endpoint", "is not a https/http://host[:port] URL", "pulumi config set commstack:backupS3Endpoint"),
    # ports above 65535 inside URLs
    ("endpoint-port", "dev", {"backupTarget": "s3", "backupS3Endpoint": "https://s3.example.org:70000"},
     "commstack:backupS3Endpoint", "port 70000 is out of range (1-65535)",
     "pulumi config set commstack:backupS3Endpoint https://s3.eu-central-003.backblazeb2.com"),
    ("docker-host-port", "prod", {"dockerHost": "ssh://deploy@home.example.org:99999"}, "commstack:dockerHost",
     "port 99999 is out of range", "pulumi config set commstack:dockerHost ssh://deploy@home.example.org"),
    # AWS regions and instance types checked against real lists
    ("region-misspelt", "prod", {"aws__region": "eu-centrl-1"}, "aws:region", "is not an AWS region",
     "pulumi config set aws:region eu-central-1"),
    ("region-other-partition", "prod", {"aws__region": "us-gov-west-1"}, "aws:region", "commercial partition",
     "pulumi config set aws:region"),
    ("instance-type-unknown", "prod", {"signalInstanceType": "t3.huge"}, "commstack:signalInstanceType",
     "is not an EC2 instance type", "pulumi config set commstack:signalInstanceType t3.large"),
    ("instance-type-too-small", "prod", {"signalInstanceType": "t3.medium"}, "commstack:signalInstanceType",
     "'t3.medium' has 2 vCPUs and 4 GiB; Signal-Server's host needs at least 2 vCPUs and 8 GiB",
     "pulumi config set commstack:signalInstanceType t3.large"),
    ("instance-type-one-cpu", "prod", {"signalInstanceType": "r7a.medium"}, "commstack:signalInstanceType",
     "'r7a.medium' has 1 vCPUs and 8 GiB", "pulumi config set commstack:signalInstanceType t3.large"),
    # CIDR lists
    ("cidr-bare-address", "prod", {"adminCidrs": '["198.51.100.7"]'}, "commstack:adminCidrs", "a bare address",
     """pulumi config set commstack:adminCidrs '["198.51.100.7/32"]'"""),
    ("cidr-duplicate", "prod", {"adminCidrs": '["198.51.100.7/32", "198.51.100.7/32"]'}, "commstack:adminCidrs",
     "lists '198.51.100.7/32' twice", """pulumi config set commstack:adminCidrs '["198.51.100.7/32"]'"""),
    ("cidr-duplicate-ipv6-spelling", "prod", {"adminCidrs": '["2001:db8::/48", "2001:0db8:0::/48"]'},
     "commstack:adminCidrs", "lists '2001:db8::/48' twice", """'["2001:db8::/48"]'"""),
    ("cidr-two-halves", "prod", {"adminCidrs": '["0.0.0.0/1", "128.0.0.0/1"]'}, "commstack:adminCidrs",
     "must not open SSH to the whole internet: together the entries cover every IPv4 address",
     """pulumi config set commstack:adminCidrs '["198.51.100.7/32"]'"""),
    ("cidr-ipv6-halves", "prod", {"adminCidrs": '["::/1", "8000::/1"]'}, "commstack:adminCidrs",
     "cover every IPv6 address", "pulumi config set commstack:adminCidrs"),
    # cloudflareDns on a name no public zone holds
    ("cloudflare-dns-on-localhost", "dev", {"cloudflareDns": "true", "signalInsecureUnverifiedRegistration": "false",
                                            "signal": "false"},
     "commstack:cloudflareDns", "'commstack.localhost' is not a public domain",
     "pulumi config set commstack:cloudflareDns false"),
    # deeply nested JSON
    ("retention-nested", "dev", {"backupRetention": '{"daily":' * 40 + "1" + "}" * 40}, "commstack:backupRetention",
     "nested deeper than 8 levels", """pulumi config set commstack:backupRetention '{"daily":7,"weekly":4,"monthly":6}'"""),
    ("memory-nested", "dev", {"containerMemory": "[" * 3000}, "commstack:containerMemory",
     "nested deeper than 8 levels", "pulumi config set commstack:containerMemory"),
    ("allowed-numbers-huge-escape", "prod", {"signalAllowedNumbers": '["+1555\\u0661234567"]'},
     "commstack:signalAllowedNumbers", "is not ASCII", """'["+15551234567"]'"""),
    # huge numbers, NUL bytes
    ("api-id-thousands-of-digits", "prod", {"telegramApiId": "9" * 4000}, "commstack:telegramApiId", "out of range",
     "pulumi config set commstack:telegramApiId 123456"),
    ("postgres-major-huge", "dev", {"postgresMajor": "1" + "0" * 50}, "commstack:postgresMajor",
     "must be a Postgres major version number of 2 digits", "pulumi config set commstack:postgresMajor 15"),
    ("nul-in-label", "dev", {"matrixSubdomain": "mat\x00rix"}, "commstack:matrixSubdomain", "control character",
     "pulumi config set commstack:matrixSubdomain matrix"),
    # the fix for a refused choice is the one that validates here, not the first in the list
    ("tls-choice-on-a-public-domain", "prod", {"tls": "acme"}, "commstack:tls", "must be one of self-signed, letsencrypt",
     "pulumi config set commstack:tls letsencrypt"),
    ("registration-misspelt", "dev", {"registration": "tokn"}, "commstack:registration", "must be one of closed, token",
     "pulumi config set commstack:registration token"),
    # Postgres upgrade hints never name the value they refuse
    ("upgrade-from-the-current-major", "dev", {"postgresUpgradeFrom": "15"}, "commstack:postgresUpgradeFrom",
     "15 is not older than configs/images.yaml's Postgres 15", "pulumi config rm commstack:postgresUpgradeFrom"),
    ("upgrade-from-an-unpinned-major", "dev", {"postgresUpgradeFrom": "13"}, "commstack:postgresUpgradeFrom",
     "pins no image for Postgres 13", "pulumi config rm commstack:postgresUpgradeFrom"),
    # tcp:// Docker hosts: refused in favour of ssh://
    ("docker-tcp", "prod", {"dockerHost": "tcp://home.example.org:2375"}, "commstack:dockerHost", "tcp:// is refused",
     "pulumi config set commstack:dockerHost ssh://home.example.org"),
    ("docker-tcp-on-dev", "dev", {"dockerHost": "tcp://home.example.org:2375"}, "commstack:dockerHost",
     "tcp:// is refused", "pulumi config rm commstack:dockerHost"),  # ssh:// to another machine: dev's insecure
    # registration would be refused; the fix printed is one that brings up no new problem.
    ("docker-tcp-loopback", "dev", {"dockerHost": "tcp://127.0.0.1:2375"}, "commstack:dockerHost", "tcp:// is refused",
     "pulumi config set commstack:dockerHost unix:///var/run/docker.sock"),
    # insecure Signal registration: what faces the internet, not only the domain
    ("insecure-registration-public-ip", "dev", {"domain": "comms.internal", "publicIp": "198.51.100.20"},
     "commstack:signalInsecureUnverifiedRegistration", "publicIp 198.51.100.20 is a public address",
     "pulumi config set commstack:signalInsecureUnverifiedRegistration false"),
    ("insecure-registration-remote-docker", "dev", {"domain": "comms.internal",
                                                    "dockerHost": "ssh://deploy@10.0.0.5"},
     "commstack:signalInsecureUnverifiedRegistration", "dockerHost ssh://deploy@10.0.0.5 is another machine",
     "pulumi config set commstack:signalInsecureUnverifiedRegistration false"),
]


@pytest.mark.parametrize("case,stack,overrides,key,what,fix", REFUSED, ids=[c[0] for c in REFUSED])
def test_bad_input_is_refused_naming_the_key_with_a_fix(case, stack, overrides, key, what, fix):
    named = lines_for(key, stack, **overrides)
    assert any(what in line and (fix is None or fix in line.rpartition("Fix: ")[2]) for line in named), named


def test_an_invalid_domain_on_dev_is_not_called_public():
    found = problems("dev", domain="bad domain")
    assert [p.split(":", 2)[1] for p in found] == ["domain"], found


# (case, stack, overrides, key, the value the settings hold): accepted because the schema says so.
ACCEPTED = [
    ("choice-any-case", "dev", {"registration": "Token"}, "commstack:registration", "token"),
    ("tls-any-case", "prod", {"tls": "LetsEncrypt"}, "commstack:tls", "letsencrypt"),
    ("boolean-any-case", "dev", {"turn": "TRUE"}, "commstack:turn", True),
    ("domain-any-case", "dev", {"domain": "Commstack.LOCALHOST"}, "commstack:domain", "commstack.localhost"),
    ("region-any-case", "prod", {"aws__region": "EU-Central-1"}, "aws:region", "eu-central-1"),
    ("surrounding-whitespace", "dev", {"backupSchedule": " 02:15\n"}, "commstack:backupSchedule", "02:15"),
    ("bridges-spaced-and-cased", "dev", {"bridges": '[" WhatsApp "]'}, "commstack:bridges", ("whatsapp",)),
    ("empty-is-the-default", "dev", {"matrixSubdomain": "  "}, "commstack:matrixSubdomain", "matrix"),
    ("secret-trimmed", "prod", {"telegramApiHash": "  0123456789abcdef\n"}, "commstack:telegramApiHash",
     "0123456789abcdef"),
    ("cidr-normalised", "prod", {"adminCidrs": '["2001:0db8::/48"]'}, "commstack:adminCidrs", ("2001:db8::/48",)),
]


@pytest.mark.parametrize("case,stack,overrides,key,value", ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_accepted_as_the_schema_says(case, stack, overrides, key, value):
    checked = check(stack_config(stack, **overrides), stack)
    assert chosen_fixes(checked, stack) == []
    assert checked.get(key) == value


def test_a_setting_that_has_no_effect_is_a_warning():
    checked = check(stack_config("dev", federation="false", federationPort="8448"), "dev")
    assert not checked.problems
    assert [w for w in checked.warnings if w.startswith("commstack:federationPort is set but has no effect: it "
                                                        "applies when federation is true.")]


def test_a_plaintext_secret_is_a_warning():
    config = stack_config("prod")
    encrypted = {k for k in config if SETTINGS.get(k) and SETTINGS[k].secret} - {"commstack:telegramApiHash"}
    warnings = check(config, "prod", encrypted).warnings
    assert [w for w in warnings if w.startswith("commstack:telegramApiHash is stored in plaintext") and
            "Fix: pulumi config set --secret commstack:telegramApiHash <api_hash>" in w], warnings
    assert not [w for w in check(config, "prod", set(config)).warnings if "plaintext" in w]


def test_what_faces_the_internet():
    assert internet_facing_reasons("commstack.localhost", False, "docker", "127.0.0.1", "") == []
    assert internet_facing_reasons("comms.internal", False, "docker", "192.168.1.2", "ssh://me@localhost") == []
    assert len(internet_facing_reasons("comms.internal", False, "docker", "198.51.100.1", "ssh://me@box")) == 2


# -- every printed fix line validates ---------------------------------------------------------------

# Values that break each kind somewhere; every key gets each one.
ODD = ["", "x", "TRUE", "0", "99999999999999999999", "١٢", "a\x00b", "[[[[[[[[[[", '{"a":1}', '["a","a"]',
       "eu-central-1b", "tcp://h:1", "a" * 70, "t4g.large"]


def apply(config: dict, fix: str) -> dict:
    changed = dict(config)
    for command in fix.split(" && "):
        words = shlex.split(command)
        assert words[:3] in (["pulumi", "config", "set"], ["pulumi", "config", "rm"]), fix
        if words[2] == "rm":
            changed.pop(words[3], None)
            continue
        key, value = [w for w in words[3:] if w != "--secret"]
        changed[key] = "stand-in-secret" if value.startswith("<") else value
    return changed


def check_fixes(stack: str, config: dict) -> int:
    lines = chosen_fixes(check(config, stack), stack)
    for line in lines:
        key, _, rest = line.partition(": ")
        fix = rest.rpartition("Fix: ")[2]
        fixed = check(apply(config, fix), stack)
        named = fix.split(" && ")[-1].split()[3 + ("--secret" in fix)] if "config set" in fix else key
        assert not fixed.has_problem(key) and not fixed.has_problem(named), (line, chosen_fixes(fixed, stack))
    return len(lines)


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_every_fix_line_validates(stack):
    base = stack_config(stack)
    seen = 0
    for setting in SCHEMA:
        for value in ODD:
            seen += check_fixes(stack, {**base, setting.key: value})
    # Unknown and misspelt keys, ours and a provider's.
    for key in ("commstack:domian", "aws:regin", "asw:region", "comstack:turn", "commstack:Signal"):
        seen += check_fixes(stack, {**base, key: "x"})
    assert seen > 300


@pytest.mark.parametrize("key,meant", [
    ("aws:regin", "aws:region"), ("aws:Region", "aws:region"), ("asw:region", "aws:region"),
    ("aws:profle", "aws:profile"), ("cloudflare:apiTokn", "cloudflare:apiToken"),
    ("commstack:Domain", "commstack:domain"), ("comstack:turn", "commstack:turn"),
])
def test_an_unknown_key_is_named_with_the_nearest_known_one(key, meant):
    found = problems("dev", **{key.replace(":", "__"): "x"})
    assert len(found) == 1 and found[0].startswith(f"{key}: is not a setting of this program"), found
    assert f"did you mean {meant}? Fix: pulumi config rm {key} && pulumi config set " in found[0]


def test_the_providers_own_and_other_tools_keys_are_left_alone():
    for key in ("aws:profile", "aws:skipCredentialsValidation", "docker:host", "cloudflare:apiToken", "pulumi:tags",
                "kubernetes:context"):
        assert problems("dev", **{key.replace(":", "__"): "x"}) == [], key
