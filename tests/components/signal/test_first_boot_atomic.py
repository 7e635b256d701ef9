"""First boot is atomic per generator: a crash between two writes never leaves a mismatched pair (an
old UD certificate with a new trust root, a zk secret with another's public params). The set is
written in one SSM parameter first, then published; the real tool runs against moto's SSM."""

import importlib.util
import json

import boto3
import moto
import pytest

from components.signal.host import secrets_manifest
from components.signal.version import SIGNAL_CONFIGS, load_version
from tests.components.signal.test_signal_secrets_tool import _fake_java, _paths

VERSION = load_version("v9.81.0")
PREFIX = "/commstack/prod/signal"
REGION = "eu-central-1"


class Crash(Exception):
    pass


@pytest.fixture
def tool(tmp_path, monkeypatch):
    for variable, value in {**_fake_java(tmp_path), "AWS_ACCESS_KEY_ID": "testing",
                            "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(variable, value)
    spec = importlib.util.spec_from_file_location("signal_secrets", SIGNAL_CONFIGS / "signal_secrets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with moto.mock_aws():
        yield module


def _manifest(tmp_path):
    return secrets_manifest(VERSION, store="ssm", prefix=PREFIX, paths=_paths(tmp_path), region=REGION)


def _value(name):
    return boto3.client("ssm", region_name=REGION).get_parameter(Name=f"{PREFIX}/{name}",
                                                                 WithDecryption=True)["Parameter"]["Value"]


def test_a_crash_after_the_first_published_value_resumes_with_the_same_set(tool, tmp_path):
    manifest = _manifest(tmp_path)
    store = tool.SsmStore(PREFIX, REGION)
    real_put, puts = store.put_if_absent, []

    def crashing_put(name, value, secret):
        real_put(name, value, secret)
        puts.append(name)
        if name.startswith("bundle/unidentifiedDelivery."):
            raise Crash(name)  # the instance dies right after publishing one half of the UD pair

    store.put_if_absent = crashing_put
    with pytest.raises(Crash):
        tool.first_boot(manifest, store)
    assert "generated/ud-certificate" in puts  # the whole set was stored before any of it was published
    calls = (tmp_path / "calls").read_text().count("certificate")
    tool.first_boot(manifest, tool.SsmStore(PREFIX, REGION))  # the next boot
    assert (tmp_path / "calls").read_text().count("certificate") == calls  # nothing generated again
    stored = json.loads(_value("generated/ud-certificate"))
    assert _value("bundle/unidentifiedDelivery.certificate") == stored["bundle"]["unidentifiedDelivery.certificate"]
    assert _value("bundle/unidentifiedDelivery.privateKey") == stored["bundle"]["unidentifiedDelivery.privateKey"]
    assert _value("public/udTrustRoot") == stored["public"]["udTrustRoot"]
    for generator, public in (("zkparams", "zkServerPublic"), ("generic-zkparams", "genericZkServerPublic")):
        assert _value(f"public/{public}") == json.loads(_value(f"generated/{generator}"))["public"][public]
    assert boto3.client("ssm", region_name=REGION).get_parameter(
        Name=f"{PREFIX}/generated/ud-certificate")["Parameter"]["Type"] == "SecureString"


def test_a_crash_before_the_set_is_stored_generates_afresh_and_publishes_nothing_old(tool, tmp_path):
    manifest = _manifest(tmp_path)
    store = tool.SsmStore(PREFIX, REGION)
    real_put = store.put_if_absent

    def crash_on_set(name, value, secret):
        if name == "generated/ud-certificate":
            raise Crash(name)
        real_put(name, value, secret)

    store.put_if_absent = crash_on_set
    with pytest.raises(Crash):
        tool.first_boot(manifest, store)
    ssm = boto3.client("ssm", region_name=REGION)
    with pytest.raises(ssm.exceptions.ParameterNotFound):
        ssm.get_parameter(Name=f"{PREFIX}/public/udTrustRoot")
    tool.first_boot(manifest, tool.SsmStore(PREFIX, REGION))
    stored = json.loads(_value("generated/ud-certificate"))
    assert _value("public/udTrustRoot") == stored["public"]["udTrustRoot"]


def test_a_half_published_pair_from_before_sets_existed_is_refused_with_the_fix(tool, tmp_path):
    store = tool.SsmStore(PREFIX, REGION)
    store.put_if_absent("bundle/unidentifiedDelivery.certificate", "UDCERT-old", secret=True)
    with pytest.raises(SystemExit, match="only partly in the store; delete its parameters"):
        tool.first_boot(_manifest(tmp_path), store)


def test_the_instance_may_write_the_sets_and_read_them(prod_signal):
    from tests.components.signal.test_backend import role_policy

    by_sid = {s["Sid"]: s for s in role_policy(prod_signal)["Statement"]}
    for generator in ("zkparams", "generic-zkparams", "ud-certificate"):
        arn = f"arn:aws:ssm:{REGION}:123456789012:parameter{PREFIX}/generated/{generator}"
        assert arn in by_sid["WriteFirstBootParameters"]["Resource"]
        assert arn in by_sid["ReadParameters"]["Resource"]
