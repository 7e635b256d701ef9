"""Shared fixtures: the offline engine (Pulumi mocks) and stack configs.

Only the engine boundary is mocked (commstack/devtools/offline.py); the program,
its components and its renderers run for real.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from commstack.devtools import offline  # noqa: E402

# Values a test stack needs for the secret-only keys.
TEST_SECRETS = {
    "commstack:cloudflareApiToken": "test-cloudflare-token-0123456789",
    "commstack:telegramApiHash": "0123456789abcdef0123456789abcdef",
    "commstack:signalTwilioApiKeySecret": "test-twilio-api-key-secret-0123456789",
}


def stack_config(stack: str, **overrides: str) -> dict[str, str]:
    """A committed stack's config plus test secrets, with `key=value` overrides
    (`signal="false"` sets commstack:signal; use `aws__region` for aws:region)."""
    config = offline.stack_config(stack)
    config.update(TEST_SECRETS)
    for key, value in overrides.items():
        full = key.replace("__", ":") if "__" in key else f"commstack:{key}"
        if value is None:
            config.pop(full, None)
        else:
            config[full] = value
    return config


def evaluate(stack: str = "dev", config: Optional[dict] = None, **overrides: str) -> offline.Evaluation:
    config = config if config is not None else stack_config(stack, **overrides)
    return offline.evaluate(stack, config=config, secret_keys=list(TEST_SECRETS))


@pytest.fixture(scope="session")
def dev_evaluation() -> offline.Evaluation:
    return evaluate("dev")


@pytest.fixture(scope="session")
def prod_evaluation() -> offline.Evaluation:
    return evaluate("prod")


@pytest.fixture
def recorded() -> offline.Evaluation:
    """Installs the offline engine for a component test and returns its record.

    Use with `@pulumi.runtime.test`; the test returns its Output.
    """
    return offline.install_component_mocks()


def write_self_signed_pair(directory: Path) -> None:
    """cert.pem and key.pem in `directory`: a throwaway localhost pair, so `nginx -t` can load a
    rendered site whose certificate paths are pointed there."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
