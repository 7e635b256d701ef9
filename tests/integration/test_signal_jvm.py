"""Signal-Server and registration-service on a real JVM, booted from the program's rendered files.

Session-only: CI cannot fetch their source, so these tests take jars built in a session from the pinned
sources by path, and skip without them. They boot, on loopback only: moto's DynamoDB server (in DynamoDB
Local's place: its vendor licence is not open source) holding the program's own tables (the rendered
CreateTable requests), the harness's six Redis nodes formed into the program's cluster, the program's aws-local (configs/signal/aws_local.py) in AWS's place,
registration-service with its rendered config and environment, and Signal-Server with the rendered config.yml,
secrets manifest and start command (first boot, assemble, trust store, java). The only changes are addresses,
ports and paths, in tests/integration/loopback.py, each with its reason.

    COMMSTACK_SIGNAL_SERVER_JAR=... COMMSTACK_REGISTRATION_JAR=... \\
        .venv/bin/python -m pytest tests/integration/test_signal_jvm.py -v
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import pytest
import requests
import yaml

from components.signal.local import AWS_LOCAL_ALIAS, REGISTRATION_ALIAS, aws_hostnames
from components.signal.registration import LAST_DIGITS_SENDER
from components.signal.version import SIGNAL_CONFIGS, get_dotted, load_version
from tests.integration import loopback
from tests.integration.harness import free_port, harness_config, loopback_yaml, tcp_open, wait_until
from tests.integration.loopback import LOOPBACK, SignalJvmPorts, host_path

VERSION = load_version(harness_config().get("commstack:signalServerRef", "v9.81.0"))
REGISTRATION = VERSION.registration_service
NEEDS = {
    "COMMSTACK_SIGNAL_SERVER_JAR": f"TextSecureServer jar built from Signal-Server {VERSION.ref} (commit "
                                   f"{VERSION['commit']}) after the data file's build_patch",
    "COMMSTACK_REGISTRATION_JAR": f"registration-service shaded jar built from commit {REGISTRATION['commit']} "
                                  "with configs/signal/CommstackSelfHosted.java added",
}
MISSING = [name for name in NEEDS if not os.environ.get(name) or not Path(os.environ[name]).exists()]
SKIP_REASON = ("Signal JVM boot tests need session-built artifacts (never built in CI): "
               + "; ".join(f"{name}=<{NEEDS[name]}>" for name in MISSING))
pytestmark = pytest.mark.skipif(bool(MISSING), reason=SKIP_REASON)

JVM_BOOT_SECONDS = 420.0  # two shared cores: Signal-Server's first boot also generates its zk params
JAVA_HOME = "/usr/lib/jvm/java-17-openjdk-amd64"  # what the runtime image (eclipse-temurin 17) sets
NUMBER = "+15550100234"  # the 555-01xx range is fictional
PASSWORD = "harness-password-0123456789"


def _open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


def _container(rendered, suffix: str) -> str:
    names = [name for name in rendered.commands if name.endswith(suffix)]
    assert len(names) == 1, (suffix, sorted(rendered.commands))
    return names[0]


def _inputs(rendered, name: str) -> dict:
    return next(r.plain_inputs for r in rendered.evaluation.of_type("docker:index/container:Container")
                if r.plain_inputs["name"] == name)


def _envs(inputs: dict) -> dict[str, str]:
    return dict(entry.split("=", 1) for entry in inputs.get("envs") or [])


def _image_env(dockerfile: str) -> dict[str, str]:
    """ENV lines of one of the program's Dockerfiles (the image's environment the container inherits)."""
    envs = {}
    for line in (SIGNAL_CONFIGS / dockerfile).read_text().splitlines():
        if line.startswith("ENV "):
            envs.update(dict(word.split("=", 1) for word in line[4:].split()))
    return envs


class SignalJvm:
    """The booted Signal backend: moto's DynamoDB, aws-local, registration-service and Signal-Server."""

    def __init__(self, harness):
        self.harness = harness
        self.rendered = harness.rendered
        self.root = harness.root
        # The server listens where the harness's Traefik sends chat.<domain>, so clients take the program's route.
        self.ports = SignalJvmPorts(dynamodb=free_port(), metadata=free_port(), registration=free_port(),
                                    server=harness.ports.signal_server, admin=free_port())
        self.public_url = f"https://chat.{harness_config()['commstack:domain']}"
        self.server_container = _container(self.rendered, "-server")
        self.registration_container = _container(self.rendered, "-registration")
        self.region = _envs(_inputs(self.rendered, self.server_container))["AWS_REGION"]
        self.hosts_file = self.root / "signal-jvm-hosts"
        self.hosts_file.write_text(loopback.jvm_hosts_file(aws_hostnames(VERSION, self.region), AWS_LOCAL_ALIAS,
                                                           REGISTRATION_ALIAS))
        self.server = None
        self.boots = 0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.server}"

    @property
    def admin_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.admin}"

    def write_container(self, container: str, overrides: dict[str, str] | None = None, mode: int = 0o600) -> None:
        for path, content in self.rendered.files.get(container, {}).items():
            self.harness.write(container, path, (overrides or {}).get(path, content), mode=mode)

    # -- the services -----------------------------------------------------------------
    def boot_redis_cluster(self) -> None:
        from components.signal import redis as signal_redis

        addresses = [f"{LOOPBACK}:{port}" for port in self.harness.ports.redis]
        done = subprocess.run(["sh", "-c", signal_redis.cluster_create_script(addresses, addresses[0])],
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    def boot_dynamodb(self) -> None:
        """The dynamodb container's place: moto's server (loopback.moto_dynamodb_command), then the tables job."""
        service = self.harness.spawn("dynamodb-moto", loopback.moto_dynamodb_command(sys.executable,
                                                                                     port=self.ports.dynamodb))
        wait_until("moto (DynamoDB)", lambda: tcp_open(self.ports.dynamodb), service.process, service.log)
        self.create_tables()

    def dynamodb(self):
        # moto keeps tables per region (DynamoDB Local's -sharedDb does not): the server's own region.
        return boto3.client("dynamodb", endpoint_url=f"http://{LOOPBACK}:{self.ports.dynamodb}",
                            region_name=self.region, aws_access_key_id="local", aws_secret_access_key="local")

    def create_tables(self) -> None:
        """What the rendered one-shot tables job does: each CreateTable request, then TTL where its script sets it."""
        files = self.rendered.files[_container(self.rendered, "-tables")]
        script = files["/tables/create.sh"]
        ttls = dict(re.findall(r"--table-name (\S+) --time-to-live-specification Enabled=true,AttributeName=(\w+)",
                               script))
        client = self.dynamodb()
        for path, content in files.items():
            if path.endswith(".json"):
                request = json.loads(content)
                client.create_table(**request)
                if request["TableName"] in ttls:
                    client.update_time_to_live(TableName=request["TableName"], TimeToLiveSpecification={
                        "Enabled": True, "AttributeName": ttls[request["TableName"]]})
        self.table_names = sorted(json.loads(c)["TableName"] for p, c in files.items() if p.endswith(".json"))

    def boot_aws_local(self) -> None:
        container = _container(self.rendered, "-aws-local")
        self.write_container(container)
        command = loopback.aws_local_command(_inputs(self.rendered, container)["command"], root=self.root,
                                             container=container, python=sys.executable, ports=self.ports)
        service = self.harness.spawn("aws-local", command)
        wait_until("aws-local", lambda: _open(loopback.AWS_LOCAL_ADDRESS, self.ports.metadata)
                   and _open(loopback.AWS_LOCAL_ADDRESS, 443), service.process, service.log)

    def boot_registration(self) -> None:
        container = self.registration_container
        config_path = "/etc/registration/application.yml"
        config = loopback.registration_config(yaml.safe_load(self.rendered.text(container, config_path)),
                                              root=self.root, container=container, port=self.ports.registration)
        self.write_container(container, {config_path: loopback_yaml(config)})
        envs = {**_image_env("Dockerfile.registration"), **_envs(_inputs(self.rendered, container))}
        envs["MICRONAUT_CONFIG_FILES"] = ",".join(str(host_path(self.root, container, p))
                                                  for p in envs["MICRONAUT_CONFIG_FILES"].split(","))
        self.registration_environments = envs["MICRONAUT_ENVIRONMENTS"]
        service = self.harness.spawn("registration-service", [
            f"{JAVA_HOME}/bin/java", f"-Djdk.net.hosts.file={self.hosts_file}", "-jar",
            os.environ["COMMSTACK_REGISTRATION_JAR"]], env={**os.environ, **envs})
        wait_until("registration-service", lambda: tcp_open(self.ports.registration), service.process, service.log,
                   timeout=JVM_BOOT_SECONDS)

    def boot_server(self) -> None:
        """The server container's start, as rendered: first boot, assemble, the trust store, then java."""
        container = self.server_container
        inputs = _inputs(self.rendered, container)
        self.boots += 1
        if self.boots == 1:
            files = self.rendered.files[container]
            manifest = loopback.signal_secrets_manifest(
                json.loads(files["/etc/signal/manifest.json"]), root=self.root, container=container,
                jar=os.environ["COMMSTACK_SIGNAL_SERVER_JAR"], generic_zk_source=str(SIGNAL_CONFIGS / "GenericZkParams.java"))
            base = loopback.signal_server_config(
                yaml.safe_load(files["/etc/signal/config.base.yml"]), ports=self.ports,
                redis_port=self.harness.ports.redis[0], cluster_entries=VERSION.redis_cluster_entries,
                standalone_entries=VERSION.redis_standalone_entries, get_dotted=get_dotted)
            self.write_container(container, {"/etc/signal/manifest.json": json.dumps(manifest, indent=2),
                                             "/etc/signal/config.base.yml": loopback_yaml(base)})
            self.manifest = manifest
        entrypoint = inputs["entrypoints"]
        assert entrypoint[:2] == ["sh", "-c"]
        script = loopback.signal_server_start(
            entrypoint[2], root=self.root, container=container, jar=os.environ["COMMSTACK_SIGNAL_SERVER_JAR"],
            tool=str(SIGNAL_CONFIGS / "signal_secrets.py"), truststore=str(self.root / "signal-truststore"),
            hosts_file=str(self.hosts_file))
        envs = loopback.signal_server_environment(_envs(inputs), metadata_port=self.ports.metadata)
        environment = {**os.environ, **envs, "JAVA_HOME": JAVA_HOME, "PATH": f"{JAVA_HOME}/bin:{os.environ['PATH']}"}
        self.server = self.harness.spawn(f"signal-server-{self.boots}", ["sh", "-c", script], env=environment)
        try:
            wait_until("Signal-Server", self.healthy, self.server.process, self.server.log, timeout=JVM_BOOT_SECONDS)
        except Exception as failed:  # the harness's temp dir goes with it: keep what the server said
            raise AssertionError(f"{failed}\n--- its log ---\n{self.server.log.read_text(errors='replace')[-6000:]}")

    def healthy(self) -> bool:
        return requests.get(f"{self.admin_url}/healthcheck", timeout=2).status_code == 200

    def stop_server(self) -> None:
        self.server.process.terminate()
        self.server.process.wait(timeout=60)

    # -- what the first boot stored ---------------------------------------------------
    @property
    def store(self) -> Path:
        return Path(self.manifest["store"].split(":", 1)[1])

    def public_values(self) -> dict[str, str]:
        return {p.name: p.read_text() for p in sorted((self.store / "public").iterdir())}

    def first_boot_secrets(self) -> dict[str, str]:
        return {p.name: p.read_text() for p in sorted((self.store / "bundle").iterdir())}


@pytest.fixture(scope="module")
def signal_jvm(harness):
    jvm = SignalJvm(harness)
    jvm.boot_redis_cluster()
    jvm.boot_dynamodb()
    jvm.boot_aws_local()
    jvm.boot_registration()
    jvm.boot_server()
    yield jvm
    # Now, while Redis and DynamoDB still run: the harness stops them only at the session's end.
    if jvm.server is not None and jvm.server.process.poll() is None:
        jvm.stop_server()


def _client_keys() -> dict:
    """An identity key and a signed pre-key, made by the libsignal inside the jar under test (SignalTestKeys.java)."""
    done = subprocess.run([f"{JAVA_HOME}/bin/java", "-cp", os.environ["COMMSTACK_SIGNAL_SERVER_JAR"],
                           str(Path(__file__).with_name("SignalTestKeys.java"))],
                          capture_output=True, text=True, timeout=180, check=True)
    return json.loads(done.stdout)


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_the_server_starts_and_its_health_check_answers(signal_jvm):
    answer = requests.get(f"{signal_jvm.admin_url}/healthcheck", timeout=10)
    assert answer.status_code == 200
    checks = answer.json()
    assert checks and all(check["healthy"] for check in checks.values()), checks
    # It started on the program's tables, in moto's DynamoDB.
    assert sorted(signal_jvm.dynamodb().list_tables(Limit=100)["TableNames"]) == signal_jvm.table_names
    assert len(signal_jvm.table_names) == len(VERSION.tables)


def test_whoami_without_credentials_answers_401(signal_jvm):
    answer = requests.get(f"{signal_jvm.url}/v1/accounts/whoami", timeout=10)
    assert answer.status_code == 401
    # And through the program's proxy, at the URL doctor and the signalHealthUrl output use.
    public = signal_jvm.harness.public().get(f"{signal_jvm.public_url}/v1/accounts/whoami", timeout=10)
    assert public.status_code == 401


def _push_challenge(jvm: SignalJvm, session_id: str) -> str:
    """The push challenge the server stored for the session (its own VerificationSessions table): what a
    client receives by FCM, which has no endpoint here."""
    table = next(t for t in jvm.table_names if t.endswith("-VerificationSessions"))
    item = jvm.dynamodb().get_item(TableName=table, Key={"K": {"S": session_id}}, ConsistentRead=True)["Item"]
    return json.loads(item["V"]["S"])["pushChallenge"]


def _register(signal_jvm: SignalJvm, number: str, password: str) -> dict:
    """An account, registered end to end in the verification mode the stack configures."""
    url, client = signal_jvm.public_url, signal_jvm.harness.public()  # through the program's Traefik, over TLS
    session = client.post(f"{url}/v1/verification/session", timeout=60, json={
        "number": number, "pushToken": "harness-fcm-token-" + secrets.token_hex(8), "pushTokenType": "fcm"})
    assert session.status_code == 200, session.text
    session_id = session.json()["id"]
    assert session.json()["allowedToRequestCode"] is False
    assert "pushChallenge" in session.json()["requestedInformation"]
    answered = client.patch(f"{url}/v1/verification/session/{session_id}", timeout=60,
                              json={"pushChallenge": _push_challenge(signal_jvm, session_id)})
    assert answered.status_code == 200 and answered.json()["allowedToRequestCode"] is True, answered.text
    sent = client.post(f"{url}/v1/verification/session/{session_id}/code", timeout=60,
                         json={"transport": "sms", "client": "android"})
    assert sent.status_code == 200, sent.text
    # The dev stack's mode (signalInsecureUnverifiedRegistration, registration-service's dev environment):
    # the code is the number's last six digits.
    assert signal_jvm.registration_environments == "dev"
    verified = client.put(f"{url}/v1/verification/session/{session_id}/code", timeout=60,
                            json={"code": number[-6:]})
    assert verified.status_code == 200 and verified.json()["verified"] is True, verified.text
    account = client.post(f"{url}/v1/registration", timeout=60, headers=_basic(number, password), json={
        "sessionId": session_id, "skipDeviceTransfer": True,
        "accountAttributes": {"fetchesMessages": True, "registrationId": 4321, "pniRegistrationId": 8765,
                              "capabilities": {"storage": False}}})
    assert account.status_code == 200, account.text
    # What makes the device enabled (Device.isEnabled): a signed pre-key, signed by its identity key.
    keys = _client_keys()
    uploaded = client.put(f"{url}/v2/keys", timeout=60, headers=_basic(account.json()["uuid"], password), json={
        "identityKey": keys["identityKey"], "signedPreKey": keys["signedPreKey"], "preKeys": []})
    assert uploaded.status_code == 204, uploaded.text
    return account.json()


@pytest.fixture(scope="module")
def registered(signal_jvm) -> dict:
    """A new account, registered end to end."""
    return _register(signal_jvm, NUMBER, PASSWORD)


def _item(jvm: SignalJvm, suffix: str, key: dict) -> dict:
    table = next(t for t in jvm.table_names if t.endswith(suffix))
    return jvm.dynamodb().get_item(TableName=table, Key=key, ConsistentRead=True).get("Item", {})


def test_a_new_account_registers_end_to_end(signal_jvm, registered):
    assert registered["number"] == NUMBER and registered["uuid"] and registered["pni"]
    whoami = signal_jvm.harness.public().get(f"{signal_jvm.public_url}/v1/accounts/whoami", timeout=30,
                                             headers=_basic(registered["uuid"], PASSWORD))
    assert whoami.status_code == 200, whoami.text
    assert whoami.json()["uuid"] == registered["uuid"] and whoami.json()["number"] == NUMBER
    wrong = requests.get(f"{signal_jvm.url}/v1/accounts/whoami", timeout=30,
                         headers=_basic(registered["uuid"], PASSWORD + "x"))
    assert wrong.status_code == 401
    # The account is in the program's tables (Accounts.create's TransactWriteItems: the account and its two
    # constraint rows), under the identifiers the server answered with.
    aci, pni = uuid.UUID(registered["uuid"]).bytes, uuid.UUID(registered["pni"]).bytes
    account = _item(signal_jvm, "-Accounts", {"U": {"B": aci}})
    assert account["P"] == {"S": NUMBER} and account["PNI"] == {"B": pni}
    assert _item(signal_jvm, "-Accounts_PhoneNumbers", {"P": {"S": NUMBER}})["U"] == {"B": aci}
    assert _item(signal_jvm, "-Accounts_PhoneNumberIdentifiers", {"PNI": {"B": pni}})["U"] == {"B": aci}


def test_registering_a_number_again_keeps_its_account(signal_jvm):
    """What a reinstall does. The server learns the existing account from the failed condition checks of its
    transaction (TransactionCanceledException's CancellationReasons, with ALL_OLD items)."""
    number = "+15550100456"
    first = _register(signal_jvm, number, PASSWORD)
    again = _register(signal_jvm, number, PASSWORD + "-new")
    assert again["uuid"] == first["uuid"] and again["pni"] == first["pni"]
    whoami = requests.get(f"{signal_jvm.url}/v1/accounts/whoami", timeout=30,
                          headers=_basic(first["uuid"], PASSWORD + "-new"))
    assert whoami.status_code == 200 and whoami.json()["number"] == number, whoami.text
    old = requests.get(f"{signal_jvm.url}/v1/accounts/whoami", timeout=30, headers=_basic(first["uuid"], PASSWORD))
    assert old.status_code == 401


def test_a_wrong_code_does_not_verify(signal_jvm):
    url, requests = signal_jvm.public_url, signal_jvm.harness.public()
    number = "+15550100987"
    session_id = requests.post(f"{url}/v1/verification/session", timeout=60, json={
        "number": number, "pushToken": "harness-fcm-token-2", "pushTokenType": "fcm"}).json()["id"]
    requests.patch(f"{url}/v1/verification/session/{session_id}", timeout=60,
                   json={"pushChallenge": _push_challenge(signal_jvm, session_id)})
    assert requests.post(f"{url}/v1/verification/session/{session_id}/code", timeout=60,
                         json={"transport": "sms", "client": "android"}).status_code == 200
    wrong = requests.put(f"{url}/v1/verification/session/{session_id}/code", timeout=60, json={"code": "000000"})
    assert wrong.status_code == 200 and wrong.json()["verified"] is False, wrong.text


def test_a_second_boot_reuses_what_the_first_boot_generated(signal_jvm, registered):
    public_before = signal_jvm.public_values()
    secrets_before = signal_jvm.first_boot_secrets()
    assert set(public_before) == set(VERSION.public_values)
    config = yaml.safe_load(host_path(signal_jvm.root, signal_jvm.server_container, "/etc/signal/config.yml")
                            .read_text())
    assert config["zkConfig"]["serverPublic"] == public_before["zkServerPublic"]
    signal_jvm.stop_server()
    signal_jvm.boot_server()
    assert signal_jvm.public_values() == public_before
    assert signal_jvm.first_boot_secrets() == secrets_before
    log = signal_jvm.server.log.read_text(errors="replace")
    assert "first-boot: generated" not in log  # nothing was generated again
    # And the account survived in DynamoDB and Redis-backed state.
    whoami = requests.get(f"{signal_jvm.url}/v1/accounts/whoami", timeout=30,
                          headers=_basic(registered["uuid"], PASSWORD))
    assert whoami.status_code == 200, whoami.text


# -- registration-service as every internet-facing stack runs it: Twilio Verify, the selfhosted environment --------

LISTED = "+15550100234"
TWILIO_STACK = {"signalInsecureUnverifiedRegistration": None,
                "signalTwilioAccountSid": "AC" + "a" * 32, "signalTwilioApiKeySid": "SK" + "b" * 32,
                "signalTwilioVerifyServiceSid": "VA" + "c" * 32, "signalTwilioAndroidAppHash": "AbCdEfGhIjK",
                "signalAllowedNumbers": json.dumps([LISTED])}


@pytest.fixture(scope="module")
def selfhosted_registration(harness):
    """registration-service from a stack that verifies with Twilio (rendered like the harness stack, plus the
    Twilio settings and an allowlist). Twilio's hosts do not resolve here (the JVM hosts file), so no code is
    ever delivered: what matters is what the service accepts."""
    from tests.integration.harness import render

    config = {**harness_config()}
    for key, value in TWILIO_STACK.items():
        if value is None:
            config.pop(f"commstack:{key}", None)
        else:
            config[f"commstack:{key}"] = value
    rendered = render(config)
    container = _container(rendered, "-registration")
    port = free_port()
    root = harness.root / "selfhosted"
    files = dict(rendered.files[container])
    config_path = "/etc/registration/application.yml"
    files[config_path] = loopback_yaml(loopback.registration_config(yaml.safe_load(files[config_path]), root=root,
                                                                    container=container, port=port))
    for path, content in files.items():
        target = host_path(root, container, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    envs = {**_image_env("Dockerfile.registration"), **_envs(_inputs(rendered, container))}
    envs["MICRONAUT_CONFIG_FILES"] = ",".join(str(host_path(root, container, p))
                                              for p in envs["MICRONAUT_CONFIG_FILES"].split(","))
    hosts = root / "hosts"
    hosts.write_text(f"{LOOPBACK} {REGISTRATION_ALIAS}\n")
    service = harness.spawn("registration-service-selfhosted", [
        f"{JAVA_HOME}/bin/java", f"-Djdk.net.hosts.file={hosts}", "-jar", os.environ["COMMSTACK_REGISTRATION_JAR"]],
        env={**os.environ, **envs})
    wait_until("registration-service (selfhosted)", lambda: tcp_open(port), service.process, service.log,
               timeout=JVM_BOOT_SECONDS)

    return {"environments": envs["MICRONAUT_ENVIRONMENTS"], "cli": _registration_cli(hosts, port, host_path(
                root, container, "/etc/registration/cert.pem")), "log": service.log,
            "config": yaml.safe_load(rendered.text(container, config_path)), "sessions": {}}


def _registration_cli(hosts: Path, port: int, certificate: Path):
    def cli(*args: str) -> subprocess.CompletedProcess:
        """registration-service's own gRPC client (org.signal.registration.cli, in its jar), over the TLS the
        program configures, trusting the program's internal certificate."""
        return subprocess.run([
            f"{JAVA_HOME}/bin/java", f"-Djdk.net.hosts.file={hosts}", "-cp", os.environ["COMMSTACK_REGISTRATION_JAR"],
            "org.signal.registration.cli.RegistrationClient", f"--host={REGISTRATION_ALIAS}", f"--port={port}",
            f"--trusted-server-certificate={certificate}", *args],
            capture_output=True, text=True, timeout=180)

    return cli


def _session(created: subprocess.CompletedProcess) -> str:
    found = re.search(r"Created registration session ([0-9a-f]+)", created.stdout)
    assert found, created.stdout + created.stderr
    return found.group(1)


def test_the_twilio_stack_runs_registration_service_in_the_selfhosted_environment(selfhosted_registration):
    assert selfhosted_registration["environments"] == "selfhosted"
    log = selfhosted_registration["log"].read_text(errors="replace")
    assert "Established active environments: [selfhosted]" in log
    assert "commstack selfhosted: 1 allowed numbers" in log
    # Upstream's per-number limit (application.yml rate-limits.leaky-bucket.session-creation), restored.
    assert "per number at most 5 sessions, one more every PT4H48M, PT1M apart" in log
    assert selfhosted_registration["config"]["selection"]["sms"]["fallback-senders"] == ["twilio-verify"]


def test_only_a_listed_number_can_start_a_registration(selfhosted_registration):
    cli = selfhosted_registration["cli"]
    selfhosted_registration["sessions"]["listed"] = _session(cli("create-session", LISTED.lstrip("+")))
    other = cli("create-session", "15550100999")
    assert "Could not create session" in other.stderr and "RATE_LIMITED" in other.stderr, other.stdout + other.stderr


def test_a_listed_number_gets_no_second_session_within_the_minute(selfhosted_registration):
    # The first one is test_only_a_listed_number_can_start_a_registration's (a minute apart at least).
    assert selfhosted_registration["sessions"].get("listed")
    again = selfhosted_registration["cli"]("create-session", LISTED.lstrip("+"))
    assert "Could not create session" in again.stderr and "RATE_LIMITED" in again.stderr, again.stdout + again.stderr


def _last_digits_verify(cli, session_id: str, number: str) -> subprocess.CompletedProcess:
    """Asks for the last-six-digits sender by name (any gRPC client may name a sender: SendVerificationCodeRequest
    sender_name, WeightedSelector.chooseVerificationCodeSender), then checks the number's last six digits."""
    cli("send-verification-code", "--sender-name", LAST_DIGITS_SENDER, session_id)
    return cli("check-verification-code", session_id, number[-6:])


def test_the_last_six_digits_never_verify_a_number_outside_the_dev_environment(selfhosted_registration, signal_jvm):
    # Control, so this test can fail: the same requests verify a number on the dev stack's registration-service
    # (the last-six-digits sender exists there).
    dev_cli = _registration_cli(signal_jvm.hosts_file, signal_jvm.ports.registration, host_path(
        signal_jvm.root, signal_jvm.registration_container, "/etc/registration/cert.pem"))
    number = "+15550100321"
    control = _last_digits_verify(dev_cli, _session(dev_cli("create-session", number.lstrip("+"))), number)
    assert "Session verified" in control.stdout, control.stdout + control.stderr
    # In the selfhosted environment no such sender exists: the name falls through to Twilio Verify, which cannot be
    # reached here, and the last six digits verify nothing.
    cli = selfhosted_registration["cli"]
    session_id = selfhosted_registration["sessions"].get("listed") or _session(cli("create-session", LISTED.lstrip("+")))
    checked = _last_digits_verify(cli, session_id, LISTED)
    assert "Session verified" not in checked.stdout, checked.stdout + checked.stderr
