"""Settings: every bad value gives one clear error before any resource exists."""

import pytest

from commstack import offline
from components.settings import (CONFIG_KEYS, SettingsError, arm_instance_type, non_public_domain, non_routable_ipv4,
                                 valid_git_ref)
from tests.conftest import stack_config

# (case id, base stack, overrides (None removes a key), key named, what the message says, fix shown)
BAD_SETTINGS = [
    ("calls-need-turn", "dev", {"turn": "false"}, "commstack:calls", "needs commstack:turn true",
     "pulumi config set commstack:calls false"),
    ("calls-boolean", "dev", {"calls": "yes"}, "commstack:calls", "must be true or false",
     "pulumi config set commstack:calls true"),
    ("rtc-subdomain-clash", "dev", {"rtcSubdomain": "turn"}, "commstack:elementSubdomain",
     "matrix, element, turn and rtc subdomains must all differ", "pulumi config set commstack:elementSubdomain"),
    ("rtc-subdomain-label", "dev", {"rtcSubdomain": "a.b"}, "commstack:rtcSubdomain", "not a single DNS label",
     "pulumi config set commstack:rtcSubdomain rtc"),
    ("domain-missing", "dev", {"domain": None}, "commstack:domain", "is required",
     "pulumi config set commstack:domain example.org"),
    ("domain-invalid", "dev", {"domain": "not a domain"}, "commstack:domain", "not a valid DNS name",
     "pulumi config set commstack:domain"),
    ("domain-single-label", "dev", {"domain": "localhost"}, "commstack:domain", "not a valid DNS name",
     "pulumi config set commstack:domain"),
    ("docker-host-scheme", "dev", {"dockerHost": "home.example.org"}, "commstack:dockerHost",
     "not a Docker host URL", "pulumi config set commstack:dockerHost ssh://"),
    ("public-ip", "dev", {"publicIp": "300.1.2.3"}, "commstack:publicIp", "not an IPv4 address",
     "pulumi config set commstack:publicIp"),
    ("tls-choice", "dev", {"tls": "acme"}, "commstack:tls", "must be one of self-signed, letsencrypt",
     "pulumi config set commstack:tls self-signed"),
    ("letsencrypt-needs-email", "dev", {"tls": "letsencrypt"}, "commstack:acmeEmail",
     "required when tls is letsencrypt", "pulumi config set commstack:acmeEmail"),
    ("letsencrypt-needs-token", "prod", {"cloudflareApiToken": None}, "commstack:cloudflareApiToken",
     "required because tls is letsencrypt", "pulumi config set --secret commstack:cloudflareApiToken"),
    ("bad-email", "prod", {"acmeEmail": "admin-at-example"}, "commstack:acmeEmail", "not an e-mail address",
     "pulumi config set commstack:acmeEmail"),
    ("registration-open", "dev", {"registration": "open"}, "commstack:registration",
     "must be one of closed, token", "pulumi config set commstack:registration closed"),
    ("boolean", "dev", {"turn": "yes"}, "commstack:turn", "must be true or false",
     "pulumi config set commstack:turn true"),
    ("federation-port", "dev", {"federationPort": "8443"}, "commstack:federationPort", "must be 443 or 8448",
     "pulumi config set commstack:federationPort 443"),
    ("bridges-not-json", "dev", {"bridges": "whatsapp"}, "commstack:bridges", "must be a JSON list",
     "pulumi config set commstack:bridges"),
    ("bridge-unknown", "dev", {"bridges": '["signal"]'}, "commstack:bridges", "unknown bridge(s) signal",
     "pulumi config set commstack:bridges"),
    ("telegram-needs-api-id", "dev", {"bridges": '["telegram"]'}, "commstack:telegramApiId",
     "required when the telegram bridge is on", "pulumi config set commstack:telegramApiId"),
    ("telegram-needs-hash", "prod", {"telegramApiHash": None}, "commstack:telegramApiHash",
     "required when the telegram bridge is on", "pulumi config set --secret commstack:telegramApiHash"),
    ("telegram-api-id-number", "prod", {"telegramApiId": "abc"}, "commstack:telegramApiId", "must be a number",
     "pulumi config set commstack:telegramApiId"),
    ("subdomain-collision", "dev", {"elementSubdomain": "matrix"}, "commstack:elementSubdomain", "must all differ",
     "pulumi config set commstack:elementSubdomain element"),
    ("subdomain-label", "dev", {"turnSubdomain": "turn.relay"}, "commstack:turnSubdomain",
     "not a single DNS label", "pulumi config set commstack:turnSubdomain"),
    ("region-missing", "prod", {"aws__region": None}, "aws:region", "required when signal is on",
     "pulumi config set aws:region eu-central-1"),
    ("region-invalid", "prod", {"aws__region": "europe"}, "aws:region", "not an AWS region name",
     "pulumi config set aws:region"),
    ("instance-type", "prod", {"signalInstanceType": "large"}, "commstack:signalInstanceType",
     "not an EC2 instance type", "pulumi config set commstack:signalInstanceType t3.large"),
    ("git-ref-invalid", "prod", {"signalServerRef": "v9..81"}, "commstack:signalServerRef", "not a valid git ref",
     "pulumi config set commstack:signalServerRef"),
    ("git-ref-unsupported", "prod", {"signalServerRef": "v1.0.0"}, "commstack:signalServerRef",
     "has no data file configs/signal/v1.0.0.yaml", "pulumi config set commstack:signalServerRef v9.81.0"),
    ("repo-url", "prod", {"signalServerRepo": "git@github.com:signalapp/Signal-Server"},
     "commstack:signalServerRepo", "not an https git repository URL", "pulumi config set commstack:signalServerRepo"),
    ("cidr-invalid", "prod", {"adminCidrs": '["10.0.0.1/33"]'}, "commstack:adminCidrs", "not CIDRs",
     "pulumi config set commstack:adminCidrs"),
    ("cidr-world", "prod", {"adminCidrs": '["0.0.0.0/0"]'}, "commstack:adminCidrs",
     "must not open SSH to the whole internet", "pulumi config set commstack:adminCidrs"),
    ("jar-uri", "prod", {"signalJarS3Uri": "https://example.org/x.jar"}, "commstack:signalJarS3Uri",
     "not an s3://bucket/key URI", "pulumi config set commstack:signalJarS3Uri"),
    ("elasticache-needs-aws", "dev", {"signalRedis": "elasticache"}, "commstack:signalRedis",
     "elasticache needs signalTarget aws", "pulumi config set commstack:signalRedis containers"),
    ("subdomain-is-signals", "dev", {"elementSubdomain": "chat"}, "commstack:elementSubdomain",
     "is a Signal hostname", "pulumi config set commstack:elementSubdomain element"),
    ("scoped-token-needs-dns", "dev", {"cloudflareScopedDnsToken": "true", "cloudflareApiToken": "t"},
     "commstack:cloudflareScopedDnsToken", "needs cloudflareDns true", "pulumi config set commstack:cloudflareScopedDnsToken false"),
    ("8448-behind-cloudflare-proxy", "prod", {"federationPort": "8448", "cloudflareProxyHttp": "true"},
     "commstack:federationPort", "not a port Cloudflare proxies", "pulumi config set commstack:federationPort 443"),
    ("letsencrypt-for-localhost", "prod", {"domain": "commstack.localhost"}, "commstack:tls",
     "letsencrypt cannot issue for 'commstack.localhost'", "pulumi config set commstack:tls self-signed"),
    ("letsencrypt-for-home-arpa", "prod", {"domain": "chat.home.arpa"}, "commstack:tls",
     "not a public domain", "pulumi config set commstack:tls self-signed"),
    ("loopback-ip-in-public-dns", "prod", {"publicIp": "127.0.0.1"}, "commstack:publicIp",
     "loopback, private or reserved address", "pulumi config set commstack:publicIp 203.0.113.10"),
    ("private-ip-in-public-dns", "prod", {"publicIp": "192.168.1.20"}, "commstack:publicIp",
     "must not point at", "pulumi config set commstack:publicIp 203.0.113.10"),
    ("graviton-on-aws", "prod", {"signalInstanceType": "t4g.large"}, "commstack:signalInstanceType",
     "ARM (Graviton) type", "pulumi config set commstack:signalInstanceType t3.large"),
    ("graviton-m7g-on-aws", "prod", {"signalInstanceType": "m7g.xlarge"}, "commstack:signalInstanceType",
     "runs an x86_64 image", "pulumi config set commstack:signalInstanceType t3.large"),
]


@pytest.mark.parametrize("case,stack,overrides,key,what,fix", BAD_SETTINGS, ids=[c[0] for c in BAD_SETTINGS])
def test_bad_setting_gives_clear_error_before_any_resource(case, stack, overrides, key, what, fix):
    config = stack_config(stack, **overrides)
    record = offline.Evaluation(stack=stack)
    with pytest.raises(SettingsError) as raised:
        offline.evaluate(stack, config=config, secret_keys=["commstack:cloudflareApiToken", "commstack:telegramApiHash"],
                         record=record)
    lines = [p for p in raised.value.problems if p.startswith(f"{key}:")]
    assert lines, f"no problem names {key}: {raised.value.problems}"
    assert any(what in line and fix in line for line in lines), lines
    assert record.registrations == [], "resources were registered before validation failed"


def test_all_problems_are_reported_at_once():
    config = stack_config("dev", domain="bad domain", tls="acme", turn="maybe", signal="false")
    with pytest.raises(SettingsError) as raised:
        offline.evaluate("dev", config=config)
    keys = sorted(p.split(":", 2)[1] for p in raised.value.problems)
    assert keys == ["domain", "tls", "turn"]
    assert str(raised.value).startswith("The stack config has 3 problems:")


def test_secret_values_never_appear_in_errors():
    config = stack_config("prod", telegramApiId="abc")
    with pytest.raises(SettingsError) as raised:
        offline.evaluate("prod", config=config, secret_keys=["commstack:cloudflareApiToken", "commstack:telegramApiHash"])
    assert config["commstack:cloudflareApiToken"] not in str(raised.value)
    assert config["commstack:telegramApiHash"] not in str(raised.value)


@pytest.mark.parametrize("ref,ok", [("v9.81.0", True), ("main", True), ("feature/x", True), ("v1..2", False),
                                    ("-rf", False), ("a b", False), ("x.lock", False), ("a~1", False), ("", False)])
def test_git_ref_rules(ref, ok):
    assert valid_git_ref(ref) is ok


@pytest.mark.parametrize("instance_type,arm", [
    ("t4g.large", True), ("m7g.xlarge", True), ("c7gn.2xlarge", True), ("r6gd.large", True), ("im4gn.large", True),
    ("a1.medium", True), ("t3.large", False), ("m7i.xlarge", False), ("c7a.large", False), ("g5.xlarge", False),
    ("g4dn.xlarge", False),
])
def test_graviton_instance_types_are_recognised(instance_type, arm):
    assert arm_instance_type(instance_type) is arm


@pytest.mark.parametrize("domain,public", [("example.org", True), ("localhost.example.org", True),
                                           ("commstack.localhost", False), ("matrix.lan", False),
                                           ("box.home.arpa", False), ("corp.internal", False), ("a.test", False)])
def test_non_public_domains(domain, public):
    assert non_public_domain(domain) is not public


@pytest.mark.parametrize("ip,routable", [("203.0.113.10", True), ("198.51.100.7", True), ("8.8.8.8", True),
                                         ("127.0.0.1", False), ("10.1.2.3", False), ("172.20.0.1", False),
                                         ("100.64.0.1", False), ("169.254.1.1", False), ("0.0.0.0", False)])
def test_non_routable_addresses(ip, routable):
    assert non_routable_ipv4(ip) is not routable


def test_the_new_checks_leave_valid_combinations_alone():
    # Each of these differs from a rejected case by the one value that makes it fine.
    for overrides in ({"federationPort": "8448"}, {"cloudflareProxyHttp": "true"},
                      {"signalInstanceType": "t3.xlarge"}, {"publicIp": "198.51.100.20"}):
        offline.evaluate("prod", config=stack_config("prod", **overrides),
                         secret_keys=["commstack:cloudflareApiToken", "commstack:telegramApiHash"],
                         record=offline.Evaluation(stack="prod"))
    # An ARM type is fine where no EC2 instance is made.
    settings_only = stack_config("dev", signalInstanceType="t4g.large")
    offline.evaluate("dev", config=settings_only, record=offline.Evaluation(stack="dev"))


def test_every_key_documents_a_working_fix():
    for key in CONFIG_KEYS.values():
        fix = key.fix()
        assert fix.startswith("pulumi config set ")
        assert key.full_name in fix
        assert ("--secret" in fix) == key.secret


def test_signal_subdomains_match_the_signal_backend():
    from components.settings import SIGNAL_SUBDOMAINS
    from components.signal.backend import SIGNAL_SUBDOMAINS as backend_subdomains

    assert tuple(backend_subdomains) == SIGNAL_SUBDOMAINS
