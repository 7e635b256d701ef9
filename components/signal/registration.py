"""registration-service: how phone numbers are verified, and its config renderer.

The pinned registration-service (configs/signal/<ref>.yaml `registration_service`, read at that commit)
verifies numbers through real senders (Twilio Verify, Twilio Programmable Messaging/Voice, MessageBird)
chosen by `selection.<transport>.*`. Its only session store outside Google Cloud, the in-memory one, and
the no-op prescribed/fictitious-number repositories the weighted selection needs, exist only in its
`dev` Micronaut environment (src/main/java/org/signal/registration/session/MemorySessionRepository.java,
sender/noop/*), which also brings the last-six-digits "sender" (sender/LastDigitsOfPhoneNumber*.java):
there the verification code is derived from the number itself, so anyone can register any number.

So the program runs one of two environments:
- `selfhosted` (every stack that verifies): commstack's own beans (configs/signal/CommstackSelfHosted.java,
  compiled into the pinned source at build time) provide the in-memory store, the no-op repositories and
  the session-creation limiter that enforces the number allowlist; Twilio Verify sends the codes. The
  last-six-digits sender is not in the process at all.
- `dev`, only when the stack sets signalInsecureUnverifiedRegistration (refused for any stack that faces
  the internet, components/settings.py).

Pure functions: plain values in, text out. The Twilio API key secret is rendered into its own file
(`render_registration_secrets`), which reaches the service from SSM (AWS) or as a secret file (Docker).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import yaml

from components.common import to_yaml

SELFHOSTED_ENVIRONMENT = "selfhosted"  # CommstackSelfHosted.ENVIRONMENT
DEV_ENVIRONMENT = "dev"  # org.signal.registration.Environments.DEVELOPMENT
# Environments that load the last-six-digits sender (LastDigitsOfPhoneNumberVerificationCodeSender: dev, test).
UNVERIFIED_ENVIRONMENTS = ("dev", "test")
LAST_DIGITS_SENDER = "last-digits-of-phone-number"
TWILIO_VERIFY_SENDER = "twilio-verify"  # TwilioVerifySender.SENDER_NAME
TRANSPORTS = ("sms", "voice")  # MessageTransport
# The unprivileged user the registration-service image runs as (configs/signal/Dockerfile.registration).
RUN_UID = 10001
# Where the service reads its files inside its container.
CONFIG_DIR = "/etc/registration"
CONFIG_PATH = f"{CONFIG_DIR}/application.yml"
SECRETS_PATH = f"{CONFIG_DIR}/secrets.yml"
ALLOWED_NUMBERS_PROPERTY = "commstack.allowed-numbers"  # read by CommstackSelfHosted.java

# Once twilio.account-sid/api-key-sid/api-key-secret are set, the pinned service creates every Twilio sender
# (sender/twilio/package-info.java) and validates each one's settings at startup (@Context
# TwilioMessagingConfiguration, TwilioVoiceConfiguration: @NotBlank/@NotEmpty/@NotNull). Only Twilio
# Verify is ever selected (`selection`), so the two classic senders get inert, well-formed values.
INERT_TWILIO_CLASSIC = {
    "messaging": {"nanpa-messaging-service-sid": "MG" + "0" * 32, "global-messaging-service-sid": "MG" + "0" * 32},
    "voice": {"phone-numbers": ["+15555550100"], "cdn-uri": "https://unused.invalid/"},
}


@dataclass(frozen=True)
class TwilioVerify:
    """Twilio Verify: a Verify service sends the code and checks it (no code ever passes through us)."""

    account_sid: str
    api_key_sid: str
    verify_service_sid: str
    android_app_hash: str


@dataclass(frozen=True)
class Verification:
    """How registration-service verifies a phone number. Exactly one of `twilio` or `insecure_unverified`."""

    twilio: Optional[TwilioVerify] = None
    allowed_numbers: tuple[str, ...] = ()
    insecure_unverified: bool = False

    def __post_init__(self) -> None:
        if self.insecure_unverified == (self.twilio is not None):
            raise ValueError("a Verification needs either Twilio or insecure_unverified, not both or neither")
        if self.insecure_unverified and self.allowed_numbers:
            raise ValueError("the allowlist is enforced only in the selfhosted environment")

    @property
    def environment(self) -> str:
        return DEV_ENVIRONMENT if self.insecure_unverified else SELFHOSTED_ENVIRONMENT

    @property
    def needs_secrets_file(self) -> bool:
        return self.twilio is not None

    @property
    def config_files(self) -> str:
        """MICRONAUT_CONFIG_FILES: later files add to (and override) earlier ones."""
        return ",".join([CONFIG_PATH] + ([SECRETS_PATH] if self.needs_secrets_file else []))


def verification_from_settings(signal) -> Verification:
    """The Verification a validated SignalSettings describes (components/settings.py refuses the rest)."""
    if signal.insecure_unverified_registration:
        return Verification(insecure_unverified=True)
    return Verification(twilio=TwilioVerify(signal.twilio_account_sid, signal.twilio_api_key_sid,
                                            signal.twilio_verify_service_sid, signal.twilio_android_app_hash),
                        allowed_numbers=tuple(signal.allowed_numbers))


def render_registration_config(port: int, verification: Verification, bind_host: Optional[str] = None,
                               tls: Optional[tuple[str, str]] = None) -> str:
    """registration-service's application.yml overrides: the gRPC server (micronaut-grpc
    GrpcServerConfiguration `grpc.server.*`: port, optional bind address, optional TLS from
    (certificate, key) paths) and, when verifying, the Twilio Verify sender and its selection."""
    server: dict = {"port": port}
    if bind_host:
        server["host"] = bind_host
    if tls:
        # micronaut-grpc's GrpcSslConfiguration (grpc.server.ssl.cert-chain/private-key) opens both through Micronaut's
        # ResourceResolver, where a bare path means the classpath; with neither found the server silently serves
        # plaintext (found by tests/integration/test_signal_jvm.py). `file:` names the files; there is no `enabled`.
        server["ssl"] = {"cert-chain": f"file:{tls[0]}", "private-key": f"file:{tls[1]}"}
    document: dict = {"grpc": {"server": server}}
    twilio = verification.twilio
    if twilio is not None:
        document["twilio"] = {
            "account-sid": twilio.account_sid,
            "api-key-sid": twilio.api_key_sid,
            "verify": {"service-sid": twilio.verify_service_sid, "android-app-hash": twilio.android_app_hash},
            **INERT_TWILIO_CLASSIC,
        }
        # VerificationSmsConfiguration (@NotBlank android-app-hash), needed by every SMS body the service builds.
        document["verification"] = {"sms": {"android-app-hash": twilio.android_app_hash}}
        # WeightedSenderSelectionStrategy needs both transports; Twilio Verify sends SMS and voice codes.
        document["selection"] = {t: {"fallback-senders": [TWILIO_VERIFY_SENDER]} for t in TRANSPORTS}
        document["commstack"] = {"allowed-numbers": ",".join(verification.allowed_numbers)}
    return to_yaml(document)


def render_registration_secrets(api_key_secret: str) -> str:
    """The secrets file (0600, owned by RUN_UID): what the config must not hold."""
    return to_yaml({"twilio": {"api-key-secret": api_key_secret}})


@dataclass(frozen=True)
class RunMode:
    """What the rendered files make registration-service do, read back from them."""

    environments: tuple[str, ...]
    selection: dict = field(default_factory=dict)

    def unverified_registration_risks(self) -> list[str]:
        """Why unverified numbers could register under this mode; empty when none can."""
        risks = [f"runs the {env!r} environment, which loads the last-six-digits sender"
                 for env in self.environments if env in UNVERIFIED_ENVIRONMENTS]
        if not self.selection:
            risks.append("selects no verification sender")
        for transport, spec in self.selection.items():
            senders = list(spec.get("fallback-senders", [])) + list(spec.get("default-weights", {}))
            if LAST_DIGITS_SENDER in senders:
                risks.append(f"selects {LAST_DIGITS_SENDER} for {transport}")
        return risks


def run_mode(environments: str, config_yaml: str) -> RunMode:
    """The mode of a rendered registration-service: its MICRONAUT_ENVIRONMENTS and application.yml."""
    config = yaml.safe_load(config_yaml) or {}
    return RunMode(tuple(e.strip() for e in environments.split(",") if e.strip()), dict(config.get("selection") or {}))
