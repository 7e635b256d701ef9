"""Signal registration that cannot be abused: the rendered registration-service never lets an unverified
number register, except on a local stack that asks for it by name."""

import json

import pytest
import yaml

from commstack.devtools import offline
from components.settings import SettingsError
from components.signal.host import PATHS, TWILIO_SECRET_PARAMETER
from components.signal.registration import (LAST_DIGITS_SENDER, RUN_UID, SECRETS_PATH, SELFHOSTED_ENVIRONMENT,
                                            TwilioVerify, Verification, render_registration_config, run_mode)
from tests.components.signal.conftest import user_data, written_file
from tests.conftest import TEST_SECRETS, evaluate, stack_config

TWILIO_SETTINGS = {
    "signalTwilioAccountSid": "AC" + "a" * 32,
    "signalTwilioApiKeySid": "SK" + "b" * 32,
    "signalTwilioVerifyServiceSid": "VA" + "c" * 32,
    "signalTwilioAndroidAppHash": "AbCdEfGhIjK",
}
NO_TWILIO = {key: None for key in TWILIO_SETTINGS}

# (stack, overrides, key named in the error, words the error must say, fix command prefix)
BAD = [
    # prod without any sender: registration-service could only run its dev environment.
    ("prod", {**NO_TWILIO}, "commstack:signalTwilioAccountSid", "anyone can register any number",
     "pulumi config set commstack:signalTwilioAccountSid"),
    ("prod", {"signalTwilioApiKeySid": None}, "commstack:signalTwilioApiKeySid", "is required",
     "pulumi config set commstack:signalTwilioApiKeySid"),
    ("prod", {"signalTwilioAccountSid": "AC123"}, "commstack:signalTwilioAccountSid", "not an account SID",
     "pulumi config set commstack:signalTwilioAccountSid"),
    ("prod", {"signalTwilioVerifyServiceSid": "SK" + "c" * 32}, "commstack:signalTwilioVerifyServiceSid",
     "not a Verify service SID", "pulumi config set commstack:signalTwilioVerifyServiceSid"),
    ("prod", {"signalTwilioAndroidAppHash": "short"}, "commstack:signalTwilioAndroidAppHash", "app hash",
     "pulumi config set commstack:signalTwilioAndroidAppHash"),
    ("prod", {"signalAllowedNumbers": '["+15551234567", "5551234"]'}, "commstack:signalAllowedNumbers",
     "'5551234'", "pulumi config set commstack:signalAllowedNumbers"),
    ("prod", {"signalAllowedNumbers": '["+15551234567", "+15551234567"]'}, "commstack:signalAllowedNumbers",
     "twice", "pulumi config set commstack:signalAllowedNumbers"),
    # The insecure setting, on every kind of internet-facing stack.
    ("prod", {**NO_TWILIO, "signalInsecureUnverifiedRegistration": "true"},
     "commstack:signalInsecureUnverifiedRegistration", "cloudflareDns is true",
     "pulumi config set commstack:signalInsecureUnverifiedRegistration false"),
    ("dev", {"domain": "chat-example.org"}, "commstack:signalInsecureUnverifiedRegistration",
     "'chat-example.org' is a public domain", "pulumi config set commstack:signalInsecureUnverifiedRegistration false"),
    ("dev", {"cloudflareDns": "true", "publicIp": "203.0.113.10"}, "commstack:signalInsecureUnverifiedRegistration",
     "cloudflareDns is true", "pulumi config set commstack:signalInsecureUnverifiedRegistration false"),
    ("dev", {"signalTarget": "aws", "aws__region": "eu-central-1", "acmeEmail": "ops@example.org"},
     "commstack:signalInsecureUnverifiedRegistration", "signalTarget is aws",
     "pulumi config set commstack:signalInsecureUnverifiedRegistration false"),
    # Ambiguous or meaningless combinations.
    ("dev", {"signalTwilioAccountSid": "AC" + "a" * 32}, "commstack:signalInsecureUnverifiedRegistration",
     "conflicts with the Twilio settings", "pulumi config set commstack:signalInsecureUnverifiedRegistration false"),
    ("dev", {"signalAllowedNumbers": '["+15551234567"]'}, "commstack:signalAllowedNumbers",
     "anyone could still register a listed number", "pulumi config set commstack:signalAllowedNumbers"),
    ("dev", {"signalInsecureUnverifiedRegistration": None}, "commstack:signalTwilioAccountSid", "is required",
     "pulumi config set commstack:signalTwilioAccountSid"),
]


@pytest.mark.parametrize("stack,overrides,key,words,fix", BAD, ids=[f"{c[0]}-{c[2].split(':')[1]}-{i}"
                                                                   for i, c in enumerate(BAD)])
def test_a_stack_that_lets_unverified_numbers_register_is_refused(stack, overrides, key, words, fix):
    record = offline.Evaluation(stack=stack)
    with pytest.raises(SettingsError) as raised:
        offline.evaluate(stack, config=stack_config(stack, **overrides), secret_keys=list(TEST_SECRETS),
                         record=record)
    problems = [p for p in raised.value.problems if p.startswith(key)]
    assert problems, raised.value.problems
    assert any(words in p and fix in p for p in problems), problems
    assert record.registrations == []


def test_the_twilio_api_key_secret_is_required_with_twilio():
    config = stack_config("prod")
    config.pop("commstack:signalTwilioApiKeySecret")
    with pytest.raises(SettingsError) as raised:
        offline.evaluate("prod", config=config, secret_keys=[k for k in TEST_SECRETS if k in config])
    problem, = [p for p in raised.value.problems if p.startswith("commstack:signalTwilioApiKeySecret")]
    assert "pulumi config set --secret commstack:signalTwilioApiKeySecret" in problem


def _registration_compose(evaluation) -> dict:
    return yaml.safe_load(written_file(evaluation, PATHS["compose"]))["services"]["registration-service"]


def test_prod_runs_twilio_verify_in_the_selfhosted_environment_never_dev(prod_signal):
    compose = _registration_compose(prod_signal)
    config_text = written_file(prod_signal, PATHS["registration_yml"])
    mode = run_mode(compose["environment"]["MICRONAUT_ENVIRONMENTS"], config_text)
    assert mode.environments == (SELFHOSTED_ENVIRONMENT,)
    assert mode.unverified_registration_risks() == []
    config = yaml.safe_load(config_text)
    assert config["selection"] == {"sms": {"fallback-senders": ["twilio-verify"]},
                                   "voice": {"fallback-senders": ["twilio-verify"]}}
    stack = offline.stack_config("prod")
    assert config["twilio"]["account-sid"] == stack["commstack:signalTwilioAccountSid"]
    assert config["twilio"]["api-key-sid"] == stack["commstack:signalTwilioApiKeySid"]
    assert config["twilio"]["verify"] == {"service-sid": stack["commstack:signalTwilioVerifyServiceSid"],
                                          "android-app-hash": stack["commstack:signalTwilioAndroidAppHash"]}
    assert config["commstack"] == {"allowed-numbers": ""}
    assert LAST_DIGITS_SENDER not in config_text and "api-key-secret" not in config_text
    # The secret: its own file, assembled from its SSM parameter, for the service's user only.
    assert compose["environment"]["MICRONAUT_CONFIG_FILES"] == f"/etc/registration/application.yml,{SECRETS_PATH}"
    assert f"{PATHS['registration_secrets']}:{SECRETS_PATH}:ro" in compose["volumes"]
    manifest = json.loads(written_file(prod_signal, PATHS["manifest"]))
    assert manifest["registration_secrets"] == {"path": PATHS["registration_secrets"], "owner": RUN_UID,
                                                "values": {"twilio.api-key-secret": TWILIO_SECRET_PARAMETER}}
    parameter = prod_signal.named("signal-secrets-registration-twilio-api-key-secret")
    assert parameter.plain_inputs["name"] == f"/commstack/prod/signal/{TWILIO_SECRET_PARAMETER}"
    assert parameter.plain_inputs["type"] == "SecureString" and parameter.protect is True
    assert offline.unwrap(parameter.inputs["value"]) == TEST_SECRETS["commstack:signalTwilioApiKeySecret"]
    assert offline.secret_paths(parameter.inputs) == ["value"]
    assert TEST_SECRETS["commstack:signalTwilioApiKeySecret"] not in json.dumps(user_data(prod_signal))
    assert parameter.plain_outputs["arn"] in _read_parameter_arns(prod_signal)


def _read_parameter_arns(evaluation) -> set[str]:
    policy = json.loads(evaluation.of_type("aws:iam/rolePolicy:RolePolicy")[0].plain_inputs["policy"])
    return set({s["Sid"]: s for s in policy["Statement"]}["ReadParameters"]["Resource"])


def test_the_allowlist_reaches_the_selfhosted_beans():
    ev = evaluate("prod", signalAllowedNumbers='["+15551234567", "+447700900123"]')
    config = yaml.safe_load(written_file(ev, PATHS["registration_yml"]))
    assert config["commstack"] == {"allowed-numbers": "+15551234567,+447700900123"}


def test_the_local_dev_stack_is_the_one_that_asks_for_unverified_registration(dev_evaluation):
    registration = dev_evaluation.named("signal-local-registration")
    envs = dict(e.split("=", 1) for e in registration.plain_inputs["envs"])
    uploads = {u["file"]: u for u in registration.plain_inputs["uploads"]}
    mode = run_mode(envs["MICRONAUT_ENVIRONMENTS"], uploads["/etc/registration/application.yml"]["content"])
    # Named and loud in the stack file; the settings refuse it for anything internet-facing (BAD above).
    assert offline.stack_config("dev")["commstack:signalInsecureUnverifiedRegistration"] == "true"
    assert mode.environments == ("dev",) and mode.unverified_registration_risks()
    assert SECRETS_PATH not in uploads
    assert uploads["/etc/registration/key.pem"]["permissions"] == "0400"
    assert uploads["/etc/registration/key.pem"]["owner"] == str(RUN_UID)


def test_a_docker_stack_with_twilio_gets_the_secret_as_a_private_file():
    ev = evaluate("dev", signalInsecureUnverifiedRegistration=None, **TWILIO_SETTINGS)
    registration = ev.named("signal-local-registration")
    envs = dict(e.split("=", 1) for e in registration.plain_inputs["envs"])
    assert envs["MICRONAUT_ENVIRONMENTS"] == SELFHOSTED_ENVIRONMENT
    assert envs["MICRONAUT_CONFIG_FILES"].split(",")[-1] == SECRETS_PATH
    uploads = {u["file"]: u for u in registration.plain_inputs["uploads"]}
    assert yaml.safe_load(uploads[SECRETS_PATH]["content"]) == {
        "twilio": {"api-key-secret": TEST_SECRETS["commstack:signalTwilioApiKeySecret"]}}
    assert (uploads[SECRETS_PATH]["permissions"], uploads[SECRETS_PATH]["owner"]) == ("0400", str(RUN_UID))
    assert offline.secret_paths(registration.inputs)  # the engine keeps the upload secret
    assert "api-key-secret" not in uploads["/etc/registration/application.yml"]["content"]
    mode = run_mode(envs["MICRONAUT_ENVIRONMENTS"], uploads["/etc/registration/application.yml"]["content"])
    assert mode.unverified_registration_risks() == []


RISKY = [
    ("dev", {}, "runs the 'dev' environment"),
    ("test", {"selection": {"sms": {"fallback-senders": ["twilio-verify"]}}}, "runs the 'test' environment"),
    ("selfhosted", {}, "selects no verification sender"),
    ("selfhosted", {"selection": {"sms": {"fallback-senders": ["twilio-verify", LAST_DIGITS_SENDER]}}},
     f"selects {LAST_DIGITS_SENDER} for sms"),
    ("selfhosted", {"selection": {"voice": {"fallback-senders": ["twilio-verify"],
                                            "default-weights": {LAST_DIGITS_SENDER: 1}}}},
     f"selects {LAST_DIGITS_SENDER} for voice"),
]


@pytest.mark.parametrize("environments,config,risk", RISKY)
def test_the_run_mode_check_names_each_way_to_register_unverified(environments, config, risk):
    assert any(r.startswith(risk) for r in run_mode(environments, yaml.safe_dump(config)).unverified_registration_risks())


def test_a_verification_is_twilio_or_insecure_never_both_or_neither():
    twilio = TwilioVerify("AC" + "a" * 32, "SK" + "b" * 32, "VA" + "c" * 32, "AbCdEfGhIjK")
    for bad in ({}, {"twilio": twilio, "insecure_unverified": True},
                {"insecure_unverified": True, "allowed_numbers": ("+15551234567",)}):
        with pytest.raises(ValueError):
            Verification(**bad)
    insecure = yaml.safe_load(render_registration_config(50051, Verification(insecure_unverified=True)))
    assert insecure == {"grpc": {"server": {"port": 50051}}}


def test_the_selfhosted_beans_are_declared_by_interface():
    # A Micronaut factory bean takes the annotations of its declared type: declared as MemorySessionRepository
    # (or a Noop repository class), it inherits that class's @Requires(env = dev) and never exists outside dev,
    # which the real registration-service refused to start on (tests/integration/test_signal_jvm.py).
    import re

    from components.signal.version import SIGNAL_CONFIGS

    source = (SIGNAL_CONFIGS / "CommstackSelfHosted.java").read_text()
    factory = source[source.index("@Factory"):source.index("class AllowedNumbersRateLimiter")]
    declared = re.findall(r"@Singleton\s+(?:@Named\(\"[^\"]+\"\)\s+)?([\w<>.]+) \w+\(", factory)
    assert declared == ["SessionRepository", "PrescribedVerificationCodeRepository",
                        "FictitiousNumberVerificationCodeRepository", "RateLimiter<Phonenumber.PhoneNumber>"]
    assert '@Requires(env = CommstackSelfHosted.ENVIRONMENT)' in factory
    assert 'ENVIRONMENT = "' + SELFHOSTED_ENVIRONMENT + '"' in factory
