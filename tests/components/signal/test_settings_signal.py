"""Bad Signal settings fail before any resource is registered, naming the key and the fix."""

import pytest

from commstack.devtools import offline
from components.settings import SettingsError
from tests.conftest import TEST_SECRETS, stack_config

CASES = [
    # (override key, bad value, key named in the error, fix command prefix)
    ("aws__region", "europe-central", "aws:region", "pulumi config set aws:region"),
    ("signalInstanceType", "huge", "commstack:signalInstanceType", "pulumi config set commstack:signalInstanceType"),
    ("domain", "not a domain", "commstack:domain", "pulumi config set commstack:domain"),
    ("adminCidrs", '["198.51.100.7/33"]', "commstack:adminCidrs", "pulumi config set commstack:adminCidrs"),
    ("adminCidrs", '["0.0.0.0/0"]', "commstack:adminCidrs", "pulumi config set commstack:adminCidrs"),
    ("signalServerRef", "v9..81", "commstack:signalServerRef", "pulumi config set commstack:signalServerRef"),
    ("signalServerRef", "v1.0.0", "commstack:signalServerRef", "pulumi config set commstack:signalServerRef v9.81.0"),
    ("signalJarS3Uri", "https://example.org/x.jar", "commstack:signalJarS3Uri", "pulumi config set commstack:signalJarS3Uri"),
]


@pytest.mark.parametrize("override,value,key,fix", CASES)
def test_bad_signal_setting(override, value, key, fix):
    record = offline.Evaluation(stack="prod")
    with pytest.raises(SettingsError) as raised:
        offline.evaluate("prod", config=stack_config("prod", **{override: value}), secret_keys=list(TEST_SECRETS),
                         record=record)
    problem = next(p for p in raised.value.problems if p.startswith(key))
    assert fix in problem
    assert record.registrations == []
