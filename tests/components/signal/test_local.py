"""The docker target: DynamoDB Local with the same tables, a formed Redis cluster, images from source."""

import json

import pytest
import yaml

from commstack.devtools import offline
from tests.conftest import TEST_SECRETS, stack_config
from components.signal.version import load_version

VERSION = load_version("v9.81.0")


def _uploads(reg) -> dict:
    return {u["file"]: u["content"] for u in reg.plain_inputs.get("uploads", [])}


def test_dynamodb_local_gets_every_table_of_the_data_file(dev_evaluation):
    job = dev_evaluation.named("signal-local-tables")
    files = _uploads(job)
    requests = [json.loads(c) for f, c in files.items() if f.endswith(".json")]
    assert sorted(r["TableName"].split("signal-", 1)[1] for r in requests) == sorted(t.name for t in VERSION.tables)
    script = files["/tables/create.sh"]
    assert script.count("create-table") == len(VERSION.tables)
    assert job.plain_inputs["restart"] == "no" and job.plain_inputs["mustRun"] is False
    config = json.dumps(_uploads(dev_evaluation.named("signal-local-server")))
    for request in requests:
        assert request["TableName"] in config  # the server config names the same tables


def test_redis_cluster_is_six_nodes_formed_by_one_shot_create(dev_evaluation):
    nodes = [r for r in dev_evaluation.of_type("docker:index/container:Container")
             if r.name.startswith("signal-local-redis-") and r.name[-1].isdigit()]
    assert len(nodes) == 6
    for node in nodes:
        command = node.plain_inputs["command"]
        assert command[command.index("--cluster-enabled") + 1] == "yes"
        assert not node.plain_inputs.get("ports")
    create = dev_evaluation.named("signal-local-redis-cluster-create").plain_inputs
    script = create["command"][2]
    assert "--cluster-replicas 1 --cluster-yes" in script and script.count("getent hosts") == 6
    # no second formation, no "vanilla first run"
    assert "if ! redis-cli -h redis-0 -p 6379 cluster info | grep -q cluster_state:ok; then redis-cli --cluster create" in script


def test_nothing_stateful_is_published_and_images_are_built_from_the_pinned_ref(dev_evaluation):
    for name in ("signal-local-dynamodb", "signal-local-server", "signal-local-registration"):
        assert not dev_evaluation.named(name).plain_inputs.get("ports")
    image = dev_evaluation.named("signal-local-server-image").plain_inputs
    assert image["imageName"] == "commstack/signal-server:v9.81.0"
    assert image["build"]["args"]["REF"] == "v9.81.0"
    assert image["build"]["args"]["REPO"] == "https://github.com/signalapp/Signal-Server"
    assert ":latest" not in image["build"]["args"]["BUILD_IMAGE"]
    volumes = dev_evaluation.of_type("docker:index/volume:Volume")
    assert all(v.protect is True for v in volumes if v.name.startswith("signal-"))


def _envs(reg) -> dict:
    return dict(e.split("=", 1) for e in reg.plain_inputs.get("envs", []))


def _private_network_only(evaluation, reg) -> list[str]:
    assert not reg.plain_inputs.get("ports")
    networks = reg.plain_inputs["networksAdvanced"]
    assert [n["name"] for n in networks] == [evaluation.named("signal-local-net").plain_inputs["name"]]
    return networks[0]["aliases"]


def test_server_reaches_every_aws_client_through_aws_local(dev_evaluation):
    from components.signal.local import AWS_LOCAL_ALIAS, LOCAL_REGION, METADATA_PORT, TRUSTSTORE

    server = dev_evaluation.named("signal-local-server")
    env = _envs(server)
    # Instance-profile chain (SDK v1 and v2) -> the metadata stub; AppConfigData's region from the environment.
    assert env == {"AWS_REGION": LOCAL_REGION,
                   "AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://{AWS_LOCAL_ALIAS}:{METADATA_PORT}"}
    config = yaml.safe_load(_uploads(server)["/etc/signal/config.base.yml"])
    assert config["dynamoDbClientConfiguration"]["region"] == LOCAL_REGION
    assert {config["cdn"]["region"], config["awsAttachments"]["region"]} == {LOCAL_REGION}

    aws_local = dev_evaluation.named("signal-local-aws-local")
    aliases = _private_network_only(dev_evaluation, aws_local)
    served = {f"{s}.{LOCAL_REGION}.amazonaws.com" for s in VERSION["aws_clients"]["served_locally"]}
    assert served == {f"dynamodb.{LOCAL_REGION}.amazonaws.com", f"appconfigdata.{LOCAL_REGION}.amazonaws.com"}
    assert set(aliases) == served | {AWS_LOCAL_ALIAS}

    # The certificate aws-local presents names exactly those hosts, and the server's JVM trusts exactly it.
    cert = dev_evaluation.named("signal-local-aws-tls-cert")
    assert set(cert.plain_inputs["dnsNames"]) == served
    stub_files = _uploads(aws_local)
    assert stub_files["/etc/aws-local/cert.pem"] == cert.plain_outputs["certPem"]
    assert _uploads(server)["/etc/signal/aws-local-ca.pem"] == cert.plain_outputs["certPem"]
    start = server.plain_inputs["entrypoints"][2]
    assert "keytool -importcert" in start and "-file /etc/signal/aws-local-ca.pem" in start
    java = start[start.index("exec java"):].split()
    assert f"-Djavax.net.ssl.trustStore={TRUSTSTORE}" in java and java[-2:] == ["server", "/etc/signal/config.yml"]


def test_aws_local_serves_dynamodb_local_and_the_config_names_of_appconfig(dev_evaluation):
    from components.signal.appconfig import DEFAULT_DYNAMIC_CONFIG
    from components.signal.local import DYNAMODB_ALIAS, DYNAMODB_PORT, LOCAL_ROLE
    from components.signal.version import SIGNAL_CONFIGS

    aws_local = dev_evaluation.named("signal-local-aws-local")
    command = aws_local.plain_inputs["command"]
    flags = dict(zip(command[2::2], command[3::2]))
    server_config = yaml.safe_load(_uploads(dev_evaluation.named("signal-local-server"))["/etc/signal/config.base.yml"])
    app = server_config["appConfig"]
    assert (flags["--application"], flags["--environment"], flags["--profile"]) == (
        app["application"], app["environment"], app["configuration"])
    assert flags["--dynamodb"] == f"http://{DYNAMODB_ALIAS}:{DYNAMODB_PORT}" and flags["--role"] == LOCAL_ROLE
    files = _uploads(aws_local)
    assert files[command[1]] == (SIGNAL_CONFIGS / "aws_local.py").read_text()
    assert yaml.safe_load(files[flags["--document"]]) == DEFAULT_DYNAMIC_CONFIG
    assert aws_local.plain_inputs["restart"] == "unless-stopped" and aws_local.plain_inputs["healthcheck"]["tests"]
    image = dev_evaluation.named("signal-local-aws-local-image").plain_inputs["name"]
    assert image.startswith("python:") and not image.endswith(":latest")
    # Its private key reaches the container only as a secret.
    key_index = [u["file"] for u in aws_local.plain_inputs["uploads"]].index(flags["--key"])
    assert set(offline.secret_paths(aws_local.inputs)) & {"uploads", f"uploads[{key_index}].content"}
    server = dev_evaluation.named("signal-local-server")
    assert {aws_local.urn, dev_evaluation.named("signal-local-tables").urn} <= set(server.dependencies)


def test_dynamodb_local_tables_get_ttl_like_the_aws_ones(dev_evaluation):
    from components.signal.local import tables_script

    script = _uploads(dev_evaluation.named("signal-local-tables"))["/tables/create.sh"]
    lines = {line.split("--table-name ", 1)[1].split()[0]: line for line in script.splitlines()
             if line.startswith("aws dynamodb describe-table")}
    assert len(lines) == len(VERSION.tables)
    for spec in VERSION.tables:
        line = lines[f"dev-signal-{spec.name}"]
        creates = line.split(" || ", 1)[1]
        if spec.ttl:
            # Enabled right after creation only (enabling it twice is an error).
            assert creates.startswith("{ aws dynamodb create-table") and creates.endswith("; }")
            assert (f"update-time-to-live --endpoint-url http://dynamodb:8000 --table-name dev-signal-{spec.name} "
                    f"--time-to-live-specification Enabled=true,AttributeName={spec.ttl}") in creates
        else:
            assert "update-time-to-live" not in line
    assert tables_script({"T": None}).splitlines()[-1].endswith("file:///tables/T.json")


def test_built_images_run_by_id_with_health_checks_and_restart(dev_evaluation):
    for container, built in (("signal-local-server", "signal-local-server-image"),
                             ("signal-local-registration", "signal-local-registration-image")):
        inputs = dev_evaluation.named(container).plain_inputs
        image_id = dev_evaluation.named(built).plain_outputs["repoDigest"]
        # The image id changes with every rebuild, so a rebuilt image replaces the container.
        assert inputs["image"] == image_id and image_id.startswith("sha256:")
        assert inputs["restart"] == "unless-stopped"
        assert inputs["healthcheck"]["tests"][0] == "CMD"
    server_check = dev_evaluation.named("signal-local-server").plain_inputs["healthcheck"]["tests"]
    assert "http://127.0.0.1:8081/healthcheck" in server_check[-1]
    registration_check = dev_evaluation.named("signal-local-registration").plain_inputs["healthcheck"]["tests"]
    assert registration_check[-1] == "exec 3<>/dev/tcp/127.0.0.1/50051"


def test_docker_target_reaches_registration_service_directly_over_tls(dev_evaluation):
    from components.signal.local import REGISTRATION_ALIAS

    registration = dev_evaluation.named("signal-local-registration")
    files = _uploads(registration)
    server = yaml.safe_load(files["/etc/registration/application.yml"])["grpc"]["server"]
    # `file:`: micronaut-grpc reads both through the ResourceResolver (a bare path is a classpath resource, and
    # with neither found it served plaintext to the real Signal-Server, tests/integration/test_signal_jvm.py).
    assert server == {"port": 50051, "ssl": {"cert-chain": "file:/etc/registration/cert.pem",
                                             "private-key": "file:/etc/registration/key.pem"}}
    cert = dev_evaluation.named("signal-internal-tls-cert")
    assert files["/etc/registration/cert.pem"] == cert.plain_outputs["certPem"]
    assert cert.plain_inputs["dnsNames"] == [REGISTRATION_ALIAS]
    key_index = [u["file"] for u in registration.plain_inputs["uploads"]].index("/etc/registration/key.pem")
    assert set(offline.secret_paths(registration.inputs)) & {"uploads", f"uploads[{key_index}].content"}
    config = yaml.safe_load(_uploads(dev_evaluation.named("signal-local-server"))["/etc/signal/config.base.yml"])
    rs = config["registrationService"]
    assert (rs["host"], rs["port"], rs["registrationCaCertificate"]) == (
        REGISTRATION_ALIAS, 50051, cert.plain_outputs["certPem"])
    assert REGISTRATION_ALIAS in registration.plain_inputs["networksAdvanced"][0]["aliases"]


def _dockerfile_instructions(text: str) -> dict[str, list[str]]:
    instructions: dict[str, list[str]] = {}
    for line in text.replace("\\\n", " ").splitlines():  # continuation lines join their instruction
        if line.strip() and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.setdefault(keyword, []).append(rest)
    return instructions


def test_registration_service_is_built_once_from_its_full_commit_and_runs_the_jar_unprivileged(dev_evaluation,
                                                                                             prod_signal):
    from components.settings import CONFIGS_DIR
    from components.signal.host import OPT
    from components.signal.registration import RUN_UID
    from tests.components.signal.conftest import written_file

    image = dev_evaluation.named("signal-local-registration-image").plain_inputs
    build = image["build"]
    dockerfile = (CONFIGS_DIR.parent / build["dockerfile"]).read_text()
    # The EC2 host builds registration-service from the same Dockerfile, with the same beans file.
    assert written_file(prod_signal, f"{OPT}/registration/Dockerfile") == dockerfile
    assert written_file(prod_signal, f"{OPT}/registration/CommstackSelfHosted.java") == (
        CONFIGS_DIR / "signal" / "CommstackSelfHosted.java").read_text()
    commit = VERSION.registration_service["commit"]
    assert len(commit) == 40 and int(commit, 16) >= 0
    assert build["args"]["COMMIT"] == commit and "REF" not in build["args"]
    compose = yaml.safe_load(written_file(prod_signal, f"{OPT}/compose.yml"))["services"]["registration-service"]
    assert compose["build"]["args"]["COMMIT"] == commit
    instructions = _dockerfile_instructions(dockerfile)
    clone, = [run for run in instructions["RUN"] if "git clone" in run]
    assert 'git checkout --detach "${COMMIT}"' in clone and 'test "$(git rev-parse HEAD)" = "${COMMIT}"' in clone
    maven_runs = [run.split() for run in instructions["RUN"] if run.split()[0] in ("mvn", "./mvnw")]
    assert len(maven_runs) == 1 and maven_runs[0][:2] == ["mvn", "-C"]  # strict checksums, once, at build time
    # No Maven at run time: the built jar, as the unprivileged user, in the environment the container names.
    entrypoint = json.loads(instructions["ENTRYPOINT"][-1])
    assert entrypoint[:2] == ["java", "-jar"] and "mvn" not in " ".join(instructions.get("CMD", []) + entrypoint)
    assert instructions["USER"] == [f"{RUN_UID}:{RUN_UID}"]
    assert "MICRONAUT_ENV_DEDUCTION=false" in instructions["ENV"][-1]


def test_images_build_from_project_relative_paths(dev_evaluation):
    from components.settings import CONFIGS_DIR

    root = str(CONFIGS_DIR.parent)
    for name in ("signal-local-registration-image", "signal-local-server-image"):
        build = dev_evaluation.named(name).plain_inputs["build"]
        assert build["context"] == "configs/signal" and build["dockerfile"].startswith("configs/signal/")
        assert (CONFIGS_DIR.parent / build["dockerfile"]).is_file()
    # Nothing in state depends on where this checkout lives.
    leaking = [reg.name for reg in dev_evaluation.registrations if root in json.dumps(offline.unwrap(reg.inputs))]
    assert leaking == []


def test_server_waits_for_the_checked_setup_jobs(dev_evaluation):
    from components.signal.local import SETUP_LABEL

    server = dev_evaluation.named("signal-local-server").plain_inputs
    assert {"label": SETUP_LABEL, "value": "ok"} in server["labels"]
    for job in ("signal-local-tables", "signal-local-redis-cluster-create"):
        assert dev_evaluation.named(job).plain_inputs["attach"] is True


def test_a_failed_setup_job_stops_the_deployment_before_the_server(monkeypatch):
    emulate = offline.emulate_outputs

    def redis_cluster_fails(type_, name, inputs, seed=None):
        rid, outputs = emulate(type_, name, inputs, seed)
        if name == "signal-local-redis-cluster-create":
            outputs = {**outputs, "exitCode": 1}
        return rid, outputs

    monkeypatch.setattr(offline, "emulate_outputs", redis_cluster_fails)
    record = offline.Evaluation(stack="dev")
    with pytest.raises(Exception, match=r"signal-local-redis-cluster-create exited with 1.*pulumi up --replace"):
        offline.evaluate("dev", config=stack_config("dev"), secret_keys=list(TEST_SECRETS), record=record)
    assert "signal-local-redis-cluster-create" in [r.name for r in record.registrations]
    assert "signal-local-server" not in [r.name for r in record.registrations]


def test_dynamodb_local_sends_no_telemetry(dev_evaluation):
    # DynamoDB Local 2.x reports usage to AWS unless told not to (its -help: -disableTelemetry).
    command = dev_evaluation.named("signal-local-dynamodb").plain_inputs["command"]
    assert command[:2] == ["-jar", "DynamoDBLocal.jar"] and "-disableTelemetry" in command


def test_redis_runs_as_the_images_user_with_no_capability(dev_evaluation):
    from components.signal.redis import REDIS_USER

    for reg in dev_evaluation.of_type("docker:index/container:Container"):
        name = reg.plain_inputs["name"]
        if name.startswith("signal-local-redis-"):
            assert reg.plain_inputs["user"] == REDIS_USER == "999:999", name
            assert reg.plain_inputs["capabilities"]["adds"] == [] or not reg.plain_inputs["capabilities"].get("adds"), name
