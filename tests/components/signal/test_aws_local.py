"""configs/signal/aws_local.py, run for real on 127.0.0.1 and called by a real AWS SDK (botocore).

The program is started as the container starts it; DynamoDB Local is stood in for by moto's
server, and botocore finds its credentials through the metadata service, as the JVM SDKs do.
"""

from __future__ import annotations

import datetime
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import boto3
import botocore.session
import pytest
import yaml
from moto.server import ThreadedMotoServer

from components.signal.storage import create_table_request
from components.signal.version import SIGNAL_CONFIGS, load_version
from tests.certificates import self_signed

VERSION = load_version("v9.81.0")
ROLE = "signal-local"
NAMES = {"application": "dev-signal", "environment": "local", "profile": "dynamic"}
DOCUMENT = {"captcha": {"scoreFloor": 0.5}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _self_signed(tmp_path) -> tuple[str, str]:
    cert, key = self_signed(tmp_path, "aws-local", ips=("127.0.0.1",))
    return str(cert), str(key)


def _wait_for(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("aws-local")
    cert, key = _self_signed(tmp)
    document = tmp / "dynamic.yml"
    document.write_text(yaml.safe_dump(DOCUMENT))
    dynamodb_port = _free_port()
    dynamodb = ThreadedMotoServer(ip_address="127.0.0.1", port=dynamodb_port)
    dynamodb.start()
    metadata_port, https_port = _free_port(), _free_port()
    process = subprocess.Popen(
        [sys.executable, str(SIGNAL_CONFIGS / "aws_local.py"), "--bind", "127.0.0.1",
         "--metadata-port", str(metadata_port), "--https-port", str(https_port), "--cert", cert, "--key", key,
         "--role", ROLE, "--dynamodb", f"http://127.0.0.1:{dynamodb_port}",
         "--application", NAMES["application"], "--environment", NAMES["environment"],
         "--profile", NAMES["profile"], "--document", str(document)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(metadata_port, process)
        _wait_for(https_port, process)
        yield {"metadata": f"http://127.0.0.1:{metadata_port}", "https": f"https://127.0.0.1:{https_port}",
               "ca": cert}
    finally:
        process.terminate()
        process.wait(timeout=10)
        dynamodb.stop()


def _call(url: str, method: str = "GET", headers: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_metadata_service_hands_out_role_credentials_the_imdsv2_way(stub):
    base = stub["metadata"]
    assert _call(f"{base}/latest/api/token", "PUT")[0] == 400  # no TTL header: refused, as on EC2
    status, token = _call(f"{base}/latest/api/token", "PUT", {"x-aws-ec2-metadata-token-ttl-seconds": "21600"})
    assert status == 200 and len(token) >= 32
    auth = {"x-aws-ec2-metadata-token": token}
    assert _call(f"{base}/latest/meta-data/iam/security-credentials/", headers=auth) == (200, ROLE)
    status, body = _call(f"{base}/latest/meta-data/iam/security-credentials/{ROLE}", headers=auth)
    document = json.loads(body)
    assert status == 200 and document["Code"] == "Success"
    assert {"AccessKeyId", "SecretAccessKey", "Token"} <= set(document)
    expires = datetime.datetime.fromisoformat(document["Expiration"].replace("Z", "+00:00"))
    assert expires > datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    bad = {"x-aws-ec2-metadata-token": "forged"}
    assert _call(f"{base}/latest/meta-data/iam/security-credentials/{ROLE}", headers=bad)[0] == 401


@pytest.fixture
def sdk(stub, monkeypatch, tmp_path):
    """A botocore session whose only credential source is the stub's metadata service."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", stub["metadata"] + "/")
    session = boto3.Session(botocore_session=botocore.session.Session(), region_name="us-east-1")
    credentials = session.get_credentials()
    assert credentials is not None and credentials.method == "iam-role"
    return session


def test_dynamodb_requests_reach_the_backing_store_through_tls(stub, sdk):
    client = sdk.client("dynamodb", endpoint_url=stub["https"], verify=stub["ca"])
    spec = next(t for t in VERSION.tables if t.config == "accounts.tableName")
    client.create_table(**create_table_request(spec, "dev-signal-Accounts"))
    assert "dev-signal-Accounts" in client.list_tables()["TableNames"]
    client.put_item(TableName="dev-signal-Accounts", Item={"U": {"B": b"\x01"}, "UL": {"B": b"\x02"}})
    assert client.get_item(TableName="dev-signal-Accounts", Key={"U": {"B": b"\x01"}})["Item"]["UL"] == {"B": b"\x02"}
    with pytest.raises(client.exceptions.ResourceNotFoundException):  # backend errors pass through
        client.describe_table(TableName="no-such-table")


def test_appconfigdata_serves_the_document_once_per_session(stub, sdk):
    client = sdk.client("appconfigdata", endpoint_url=stub["https"], verify=stub["ca"])
    token = client.start_configuration_session(
        ApplicationIdentifier=NAMES["application"], EnvironmentIdentifier=NAMES["environment"],
        ConfigurationProfileIdentifier=NAMES["profile"])["InitialConfigurationToken"]
    first = client.get_latest_configuration(ConfigurationToken=token)
    assert yaml.safe_load(first["Configuration"].read()) == DOCUMENT
    second = client.get_latest_configuration(ConfigurationToken=first["NextPollConfigurationToken"])
    assert second["Configuration"].read() == b""  # unchanged: empty, as AppConfig answers
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.start_configuration_session(ApplicationIdentifier="other", EnvironmentIdentifier=NAMES["environment"],
                                           ConfigurationProfileIdentifier=NAMES["profile"])


def test_requests_without_a_local_service_are_refused_over_untrusted_tls(stub):
    assert _call(f"{stub['metadata']}/latest/user-data")[0] == 404
    with pytest.raises(urllib.error.URLError):  # only a client that trusts the stub's certificate gets through
        urllib.request.urlopen(f"{stub['https']}/configuration", timeout=5)
