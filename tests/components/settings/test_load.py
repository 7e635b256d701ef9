"""Settings: every bad value gives one clear error before any resource exists."""

import pytest

from commstack.devtools import offline
from components.settings import (CONFIG_KEYS, SettingsError, arm_instance_type, non_public_domain, non_routable_ipv4,
                                 valid_git_ref)
from tests.conftest import stack_config

# (case id, base stack, overrides (None removes a key), key named, what the message says, fix shown)
BAD_SETTINGS = [
    ("calls-need-turn", "dev", {"turn": "false"}, "commstack:calls", "needs commstack:turn true",
     "pulumi config set commstack:calls false"),
    ("calls-boolean", "dev", {"calls": "yes"}, "commstack:calls", "must be true or false",
     "pulumi config set commstack:calls true"),
    ("rtc-subdomain-clash", "dev", {"rtcSubdomain": "turn"}, "commstack:rtcSubdomain",
     "matrix, element, turn and rtc subdomains must all differ", "pulumi config set commstack:rtcSubdomain rtc"),
    ("rtc-subdomain-label", "dev", {"rtcSubdomain": "a.b"}, "commstack:rtcSubdomain", "not a single DNS label",
     "pulumi config set commstack:rtcSubdomain rtc"),
    ("domain-missing", "dev", {"domain": None}, "commstack:domain", "is required",
     "pulumi config set commstack:domain example.org"),
    ("domain-invalid", "dev", {"domain": "not a domain"}, "commstack:domain", "not a valid DNS name",
     "pulumi config set commstack:domain"),
    ("domain-single-label", "dev", {"domain": "localhost"}, "commstack:domain", "not a valid DNS name",
     "pulumi config set commstack:domain"),
    ("docker-host-scheme", "dev", {"dockerHost": "home.example.org"}, "commstack:dockerHost",
     "not a Docker host URL", "pulumi config rm commstack:dockerHost"),
    ("public-ip", "dev", {"publicIp": "300.1.2.3"}, "commstack:publicIp", "not an IPv4 address",
     "pulumi config set commstack:publicIp"),
    ("tls-choice", "dev", {"tls": "acme"}, "commstack:tls", "must be one of self-signed, letsencrypt",
     "pulumi config set commstack:tls self-signed"),
    ("letsencrypt-needs-email", "dev", {"tls": "letsencrypt"}, "commstack:acmeEmail",
     "is required when tls is letsencrypt", "pulumi config set commstack:acmeEmail"),
    ("letsencrypt-needs-token", "prod", {"cloudflareApiToken": None}, "commstack:cloudflareApiToken",
     "is required when tls is letsencrypt", "pulumi config set --secret commstack:cloudflareApiToken"),
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
    ("bridge-unknown", "dev", {"bridges": '["signal"]'}, "commstack:bridges", "has entries that are not bridge names: 'signal'",
     "pulumi config rm commstack:bridges"),
    ("telegram-needs-api-id", "dev", {"bridges": '["telegram"]'}, "commstack:telegramApiId",
     "is required when bridges include telegram", "pulumi config set commstack:telegramApiId"),
    ("telegram-needs-hash", "prod", {"telegramApiHash": None}, "commstack:telegramApiHash",
     "is required when bridges include telegram", "pulumi config set --secret commstack:telegramApiHash"),
    ("telegram-api-id-number", "prod", {"telegramApiId": "abc"}, "commstack:telegramApiId",
     "must be a Telegram api_id (1-2147483647), not 'abc'", "pulumi config set commstack:telegramApiId 123456"),
    ("subdomain-collision", "dev", {"elementSubdomain": "matrix"}, "commstack:elementSubdomain", "must all differ",
     "pulumi config set commstack:elementSubdomain element"),
    ("subdomain-label", "dev", {"turnSubdomain": "turn.relay"}, "commstack:turnSubdomain",
     "not a single DNS label", "pulumi config set commstack:turnSubdomain"),
    ("region-missing", "prod", {"aws__region": None}, "aws:region", "is required when signal is true and signalTarget is aws",
     "pulumi config set aws:region eu-central-1"),
    ("region-invalid", "prod", {"aws__region": "europe"}, "aws:region", "'europe' is not an AWS region",
     "pulumi config set aws:region eu-central-1"),
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
    # -- a newcomer's mistakes (issue 11) --------------------------------------------------------------
    ("typo-domian", "dev", {"domian": "example.org"}, "commstack:domian", "did you mean commstack:domain?",
     "pulumi config rm commstack:domian && pulumi config set commstack:domain example.org"),
    ("typo-regsitration", "dev", {"regsitration": "token"}, "commstack:regsitration",
     "did you mean commstack:registration?",
     "pulumi config rm commstack:regsitration && pulumi config set commstack:registration token"),
    ("typo-case-signaltarget", "dev", {"signalTarget": None, "signaltarget": "docker"}, "commstack:signaltarget",
     "did you mean commstack:signalTarget?", "pulumi config set commstack:signalTarget docker"),
    ("typo-secret-key", "prod", {"cloudflareApiTokn": "t"}, "commstack:cloudflareApiTokn",
     "did you mean commstack:cloudflareApiToken?", "pulumi config set --secret commstack:cloudflareApiToken"),
    ("typo-namespace", "dev", {"comstack__turn": "false"}, "comstack:turn", "did you mean commstack:turn?",
     "pulumi config rm comstack:turn && pulumi config set commstack:turn false"),
    ("unknown-key", "dev", {"zzqqxx": "1"}, "commstack:zzqqxx", "is not a setting of this program",
     "pulumi config rm commstack:zzqqxx"),
    ("telegram-hash-empty", "prod", {"telegramApiHash": ""}, "commstack:telegramApiHash", "is required (it is set but empty)",
     "pulumi config set --secret commstack:telegramApiHash <api_hash>"),
    ("telegram-hash-blank", "prod", {"telegramApiHash": "   "}, "commstack:telegramApiHash", "is required (it is set but empty)",
     "pulumi config set --secret commstack:telegramApiHash"),
    ("cloudflare-token-empty", "prod", {"cloudflareApiToken": ""}, "commstack:cloudflareApiToken",
     "is required (it is set but empty)", "pulumi config set --secret commstack:cloudflareApiToken <token>"),
    ("telegram-api-id-superscript", "prod", {"telegramApiId": "²"}, "commstack:telegramApiId",
     "contains a character that is not ASCII ('²', U+00B2)", "pulumi config set commstack:telegramApiId 2"),
    ("telegram-api-id-arabic-digits", "prod", {"telegramApiId": "١٢٣"}, "commstack:telegramApiId",
     "contains a character that is not ASCII ('١', U+0661)", "pulumi config set commstack:telegramApiId 123"),
    ("telegram-api-id-zero", "prod", {"telegramApiId": "0"}, "commstack:telegramApiId",
     "'0' is out of range: a Telegram api_id from 1 to 2147483647", "pulumi config set commstack:telegramApiId 123456"),
    ("telegram-api-id-negative", "prod", {"telegramApiId": "-5"}, "commstack:telegramApiId",
     "not '-5'", "pulumi config set commstack:telegramApiId 123456"),
    ("telegram-api-id-huge", "prod", {"telegramApiId": "12345678901234567890123"}, "commstack:telegramApiId",
     "is out of range: a Telegram api_id from 1 to 2147483647", "pulumi config set commstack:telegramApiId 123456"),
    ("domain-ipv4", "dev", {"domain": "203.0.113.10"}, "commstack:domain", "is an IP address",
     "pulumi config set commstack:domain example.org"),
    ("domain-ipv6", "dev", {"domain": "2001:db8::1"}, "commstack:domain", "is an IP address",
     "pulumi config set commstack:domain example.org"),
    ("domain-numeric-tld", "dev", {"domain": "example.123"}, "commstack:domain", "all-digit label",
     "pulumi config set commstack:domain example.org"),
    ("domain-too-long", "dev", {"domain": "a" * 58 + ".local"}, "commstack:domain", "at most 64",
     "pulumi config set commstack:domain example.org"),
    ("domain-trailing-newline", "dev", {"domain": "exa\nmple.org"}, "commstack:domain", "contains a control character ('\\n', U+000A)",
     "pulumi config set commstack:domain example.org"),
    ("subdomain-too-long", "dev", {"matrixSubdomain": "m" * 50}, "commstack:matrixSubdomain", "at most 64",
     "pulumi config set commstack:matrixSubdomain matrix"),
    ("matrix-equals-element", "dev", {"matrixSubdomain": "element"}, "commstack:matrixSubdomain",
     "is also elementSubdomain's subdomain", "pulumi config set commstack:matrixSubdomain matrix"),
    ("matrix-equals-element-both-changed", "dev", {"matrixSubdomain": "im", "elementSubdomain": "im"},
     "commstack:elementSubdomain", "is also matrixSubdomain's subdomain",
     "pulumi config set commstack:elementSubdomain element"),
    ("subdomain-takes-a-default", "dev", {"matrixSubdomain": "turn"}, "commstack:matrixSubdomain",
     "is also turnSubdomain's subdomain", "pulumi config set commstack:matrixSubdomain matrix"),
    ("subdomain-default-taken", "dev", {"matrixSubdomain": "x", "turnSubdomain": "x", "elementSubdomain": "turn"},
     "commstack:turnSubdomain", "is also matrixSubdomain's subdomain", "pulumi config set commstack:turnSubdomain turn2"),
    ("cidr-host-bits", "prod", {"adminCidrs": '["10.0.0.1/24"]'}, "commstack:adminCidrs",
     "has host bits set: the network is 10.0.0.0/24", "pulumi config set commstack:adminCidrs '[\"10.0.0.1/32\"]'"),
    ("cidr-netmask", "prod", {"adminCidrs": '["10.0.0.1/33"]'}, "commstack:adminCidrs",
     "'10.0.0.1/33' does not appear to be an IPv4 or IPv6 network", "pulumi config set commstack:adminCidrs '[\"198.51.100.7/32\"]'"),
    ("cidr-not-an-address", "prod", {"adminCidrs": '["office"]'}, "commstack:adminCidrs",
     "'office': it is a bare address, not a network", "pulumi config set commstack:adminCidrs"),
    ("self-signed-federation-public", "prod", {"tls": "self-signed"}, "commstack:federation",
     "federation cannot work with tls self-signed", "pulumi config set commstack:federation false"),
    ("bridges-huge", "dev", {"bridges": "[" * 100000}, "commstack:bridges", "is 100000 characters long",
     "pulumi config rm commstack:bridges"),
    ("bridges-deeply-nested", "dev", {"bridges": "[" * 4000}, "commstack:bridges",
     "must be a JSON list of strings: it is JSON nested deeper than 8 levels",
     "pulumi config rm commstack:bridges"),
    ("email-control-character", "prod", {"acmeEmail": "admin@example.org\x00"}, "commstack:acmeEmail",
     "contains a control character ('\\x00', U+0000)", "pulumi config set commstack:acmeEmail admin@example.org"),
    ("region-foreign-digits", "prod", {"aws__region": "eu-central-١"}, "aws:region", "contains a character that is not ASCII ('١', U+0661)",
     "pulumi config set aws:region eu-central-1"),
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


# (case id, base stack, overrides, the one key named): the config has one mistake, so exactly one message.
ONE_MISTAKE = [
    ("redis-choice", "dev", {"signalRedis": "memcached"}, "commstack:signalRedis"),
    ("target-choice", "prod", {"signalTarget": "gcp"}, "commstack:signalTarget"),
    ("typo-hides-nothing-else", "dev", {"signalTarget": None, "signaltarget": "docker"}, "commstack:signaltarget"),
    ("empty-token-is-not-also-missing", "prod", {"cloudflareApiToken": ""}, "commstack:cloudflareApiToken"),
    ("bad-label-is-not-also-a-collision", "dev", {"matrixSubdomain": "-", "elementSubdomain": "-"},
     None),
    ("matrix-equals-element", "dev", {"matrixSubdomain": "element"}, "commstack:matrixSubdomain"),
]


@pytest.mark.parametrize("case,stack,overrides,key", ONE_MISTAKE, ids=[c[0] for c in ONE_MISTAKE])
def test_one_mistake_gives_one_message(case, stack, overrides, key):
    with pytest.raises(SettingsError) as raised:
        offline.evaluate(stack, config=stack_config(stack, **overrides),
                         secret_keys=["commstack:cloudflareApiToken", "commstack:telegramApiHash"])
    problems = raised.value.problems
    if key is None:  # one message per bad key
        assert len(problems) == len(overrides), problems
        assert all("not a single DNS label" in p for p in problems), problems
    else:
        assert len(problems) == 1 and problems[0].startswith(f"{key}:"), problems


def test_every_fix_changes_something():
    """A fix that sets the value a key already has would leave the user where they were."""
    for case, stack, overrides, key, _, _ in BAD_SETTINGS:
        config = stack_config(stack, **overrides)
        with pytest.raises(SettingsError) as raised:
            offline.evaluate(stack, config=config, secret_keys=["commstack:cloudflareApiToken",
                                                                "commstack:telegramApiHash"])
        for problem in raised.value.problems:
            named, _, rest = problem.partition(": ")
            fix = rest.rsplit("Fix: ", 1)[-1]
            if fix.startswith("pulumi config set ") and named in config and "--secret" not in fix:
                assert fix != f"pulumi config set {named} {config[named]}", (case, problem)


def test_known_keys_come_from_config_keys():
    from components.settings import unknown_key_problems

    assert unknown_key_problems(set(CONFIG_KEYS)) == []
    # Other namespaces belong to providers and tools.
    assert unknown_key_problems({"aws:profile", "docker:host", "pulumi:tags"}) == []
    assert unknown_key_problems({"commstack:domain", "commstack:Domain"})[0].startswith(
        "commstack:Domain: is not a setting of this program; did you mean commstack:domain?")


def test_self_signed_federation_on_a_local_name_is_a_warning(caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        evaluation = offline.evaluate("dev", config=stack_config("dev"))
    assert evaluation.registrations
    assert any("federates with nobody" in r.getMessage() and "commstack:federation false" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    with caplog.at_level(logging.WARNING):
        caplog.clear()
        offline.evaluate("dev", config=stack_config("dev", federation="false"))
    assert not any("federates with nobody" in r.getMessage() for r in caplog.records)


def test_self_signed_federation_behind_cloudflare_proxy_is_fine():
    # Cloudflare presents its own certificate to other homeservers.
    offline.evaluate("prod", config=stack_config("prod", tls="self-signed", cloudflareProxyHttp="true"),
                     secret_keys=["commstack:cloudflareApiToken", "commstack:telegramApiHash"],
                     record=offline.Evaluation(stack="prod"))


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
