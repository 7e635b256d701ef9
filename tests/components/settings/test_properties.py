"""Property: any value for any key either renders or is refused with a SettingsError,
never another exception, and never after a resource was registered.

Keys come from CONFIG_KEYS, so a setting added later is fed the same values
without touching this file. Example counts stay small (the whole program runs
for each accepted value); hypothesis samples the hostile values below among random text.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from commstack.devtools import offline
from components.settings import CONFIG_KEYS, SettingsError
from tests.conftest import TEST_SECRETS, stack_config

# Odd and hostile values a person (or a paste) could hand `pulumi config set`.
HOSTILE = [
    "", " ", "\t", "\n", "\x00", "\x1b[31m", "²", "١٢٣", "-5", "0", "00", "1e3", "0x10", "9" * 30, "3.5",
    "true", "false", "TRUE", "yes", "null", "[]", "{}", '[""]', "[1]", '["whatsapp", null]', '{"a": 1}', "[" * 3000,
    '["whatsapp", "whatsapp"]', '["telegram"]', '["signal"]', "a" * 300, "203.0.113.10", "::1", "[::1]",
    "commstack.localhost", "example.org", "EXAMPLE.ORG", "xn--bcher-kva.example", "bücher.example", "a..b", ".",
    "a\nb", "-rf", "'; DROP TABLE users; --", "${HOME}", "$(id)", "`id`", "%s%n", "../../etc/passwd",
    "0.0.0.0/0", "10.0.0.1/24", '["10.0.0.1/24"]', '["::/0"]', "s3://bucket/key", "https://github.com/x/y",
    "ssh://", "unix:///var/run/docker.sock", "letsencrypt", "self-signed", "token", "open", "8448", "443",
    "65536", "docker", "aws", "elasticache", "t4g.large", "v9.81.0", "main", "eu-central-1", "chat", "matrix",
]

values = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(max_size=24),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.:/[]\"', ", max_size=40),
)
STACKS = ["dev", "prod"]
PROPERTY_SETTINGS = settings(max_examples=4, deadline=None, database=None,
                             suppress_health_check=[HealthCheck.too_slow])


def outcome(stack: str, overrides: dict[str, str]) -> str:
    """Evaluates `stack` with `overrides`; 'rendered' or 'refused' (any other exception propagates)."""
    config = stack_config(stack)
    config.update(overrides)
    secret_keys = sorted({*TEST_SECRETS, *(k for k in overrides if k in CONFIG_KEYS and CONFIG_KEYS[k].secret)})
    record = offline.Evaluation(stack=stack)
    try:
        offline.evaluate(stack, config=config, secret_keys=secret_keys, record=record)
    except SettingsError as error:
        assert record.registrations == [], f"{len(record.registrations)} resources registered before: {error}"
        assert error.problems and all(": " in p and "Fix: " in p for p in error.problems), error.problems
        return "refused"
    assert record.registrations, "an accepted config registered nothing"
    return "rendered"


@pytest.mark.parametrize("key", sorted(CONFIG_KEYS))
@PROPERTY_SETTINGS
@given(stack=st.sampled_from(STACKS), value=values)
@example(stack="prod", value="")
@example(stack="dev", value="\x00")
def test_any_value_of_any_key_renders_or_is_refused_cleanly(key, stack, value):
    outcome(stack, {key: value})


@PROPERTY_SETTINGS
@given(stack=st.sampled_from(STACKS),
       overrides=st.dictionaries(st.sampled_from(sorted(CONFIG_KEYS)), values, min_size=2, max_size=5))
def test_any_combination_renders_or_is_refused_cleanly(stack, overrides):
    outcome(stack, overrides)


@PROPERTY_SETTINGS
@given(name=st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=20))
def test_any_unknown_key_is_refused_by_name(name):
    key = f"commstack:{name}"
    if key in CONFIG_KEYS:
        return
    config = stack_config("dev")
    config[key] = "x"
    with pytest.raises(SettingsError) as raised:
        offline.evaluate("dev", config=config)
    assert [p for p in raised.value.problems if p.startswith(f"{key}: is not a setting of this program")]
