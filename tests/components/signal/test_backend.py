"""The whole program with the Signal half on AWS (prod) and on Docker (dev), on the offline engine."""

import json

import yaml

from commstack import offline
from components.signal.host import PATHS
from components.signal.version import load_version, get_dotted
from tests.components.signal.conftest import role_policy, user_data, written_file

VERSION = load_version("v9.81.0")


def _server_config(evaluation) -> dict:
    return yaml.safe_load(written_file(evaluation, PATHS["config_in"]))


def _secret_refs(node, found=None):
    found = set() if found is None else found
    if isinstance(node, dict):
        for v in node.values():
            _secret_refs(v, found)
    elif isinstance(node, list):
        for v in node:
            _secret_refs(v, found)
    elif isinstance(node, str) and node.startswith("secret://"):
        found.add(node[len("secret://"):])
    return found


def test_rendered_config_names_the_tables_buckets_and_redis_that_were_created(prod_signal):
    config = _server_config(prod_signal)
    tables = {r.plain_inputs["name"] for r in prod_signal.of_type("aws:dynamodb/table:Table")}
    rendered = {get_dotted(config["dynamoDbTables"], t.config) for t in VERSION.tables}
    assert rendered == tables and len(tables) == 22
    buckets = {r.plain_outputs["bucket"] for r in prod_signal.of_type("aws:s3/bucket:Bucket")}
    assert {get_dotted(config, b.config) for b in VERSION.buckets} == buckets
    for entry in VERSION.redis_cluster_entries:
        assert get_dotted(config, entry)["configurationUri"] == "redis://127.0.0.1:7000"
    assert config["pubsub"]["uri"] == "redis://127.0.0.1:7000"
    assert config["dynamoDbClientConfiguration"]["region"] == "eu-central-1"


def test_rendered_config_has_every_required_section_and_only_known_secret_references(prod_signal):
    config = _server_config(prod_signal)
    assert set(VERSION.required_sections) <= set(config)
    assert _secret_refs(config) <= {e.key for e in VERSION.bundle}
    assert config["zkConfig"]["serverSecret"] == "secret://zkConfig.serverSecret"


def test_registration_service_address_and_trust_root_are_the_deployed_ones(prod_signal):
    config = _server_config(prod_signal)["registrationService"]
    # By name: other self-signed certificates (the TURN one) exist too, in any order.
    cert = prod_signal.named("signal-internal-tls-cert")
    assert prod_signal.by_urn(cert.parent).type == "commstack:signal:InternalTls"
    assert (config["host"], config["port"]) == ("localhost", VERSION.registration_service["port"])
    assert config["registrationCaCertificate"] == cert.plain_outputs["certPem"]
    assert "localhost" in cert.plain_inputs["dnsNames"]
    rs_config = yaml.safe_load(written_file(prod_signal, PATHS["registration_yml"]))
    assert rs_config["grpc"]["server"]["port"] == config["port"]
    assert rs_config["grpc"]["server"]["ssl"]["enabled"] is True
    assert json.loads(config["credentialConfigurationJson"])["type"] == "external_account"


def test_elasticache_option_wires_the_cluster_endpoint_over_tls(prod_elasticache):
    group = prod_elasticache.of_type("aws:elasticache/replicationGroup:ReplicationGroup")[0]
    inputs = group.plain_inputs
    assert inputs["clusterMode"] == "enabled" and inputs["transitEncryptionEnabled"] is True
    assert (inputs["numNodeGroups"], inputs["replicasPerNodeGroup"]) == (3, 1)
    uri = f"rediss://{group.plain_outputs['configurationEndpointAddress']}:6379"
    config = _server_config(prod_elasticache)
    assert {get_dotted(config, e)["configurationUri"] for e in VERSION.redis_cluster_entries} == {uri}
    assert config["pubsub"]["uri"] == uri
    assert "redis-7000" not in yaml.safe_load(written_file(prod_elasticache, PATHS["compose"]))["services"]


def test_iam_grants_only_the_stacks_own_arns_and_no_wildcards(prod_signal):
    policy = role_policy(prod_signal)
    tables = {r.plain_outputs["arn"] for r in prod_signal.of_type("aws:dynamodb/table:Table")}
    buckets = {r.plain_outputs["arn"] for r in prod_signal.of_type("aws:s3/bucket:Bucket")}
    prefix = "arn:aws:ssm:eu-central-1:123456789012:parameter/commstack/prod/signal/"
    profile = prod_signal.of_type("aws:appconfig/configurationProfile:ConfigurationProfile")[0]
    allowed = tables | {f"{t}/index/*" for t in tables} | buckets | {f"{b}/*" for b in buckets}
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        assert all("*" not in action for action in statement["Action"])
        for resource in statement["Resource"]:
            assert resource != "*"
            assert (resource in allowed or resource.startswith(prefix)
                    or resource.endswith(f"/configuration/{profile.plain_outputs['configurationProfileId']}")), resource
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert set(by_sid["Tables"]["Resource"]) == tables | {f"{t}/index/*" for t in tables}
    ssm = {r.plain_outputs["arn"] for r in prod_signal.of_type("aws:ssm/parameter:Parameter")}
    assert ssm <= set(by_sid["ReadParameters"]["Resource"])
    assert not ssm & set(by_sid["WriteFirstBootParameters"]["Resource"])  # the program's values are never rewritten
    assert not prod_signal.of_type("aws:iam/accessKey:AccessKey")


def test_program_secrets_live_in_protected_securestring_parameters(prod_signal):
    params = prod_signal.of_type("aws:ssm/parameter:Parameter")
    program = [e.key for e in VERSION.bundle_from("program")]
    names = {p.plain_inputs["name"] for p in params}
    assert {f"/commstack/prod/signal/bundle/{k}" for k in program} | {"/commstack/prod/signal/tls/registration-key"} == names
    for p in params:
        assert p.plain_inputs["type"] == "SecureString" and p.protect is True
        assert offline.secret_paths(p.inputs) == ["value"]
    sizes = {r.plain_inputs["length"] for r in prod_signal.of_type("random:index/randomBytes:RandomBytes")}
    assert 32 in sizes


def _generated_secrets(evaluation) -> list[str]:
    values = []
    for reg in evaluation.of_type("random:index/randomBytes:RandomBytes"):
        values += [reg.plain_outputs["base64"], reg.plain_outputs["hex"]]
    for reg in evaluation.of_type("tls:index/privateKey:PrivateKey"):
        values += [reg.plain_outputs["privateKeyPem"], reg.plain_outputs["privateKeyPemPkcs8"]]
    return values


def _assert_no_plaintext(evaluation):
    secrets = _generated_secrets(evaluation)
    assert secrets
    for reg in evaluation.registrations:
        visible = json.dumps([offline.strip_secrets(reg.inputs), offline.strip_secrets(reg.outputs)])
        for value in secrets:
            # The PKCS#8 body is also what the key's own resource reports, wrapped differently.
            assert value not in visible, f"{reg.type} {reg.name} shows a generated secret"
    outputs = json.dumps(offline.strip_secrets(evaluation.stack_outputs))
    assert not any(value in outputs for value in secrets)


def test_no_generated_secret_in_plaintext_on_aws(prod_signal):
    _assert_no_plaintext(prod_signal)
    user = json.dumps(user_data(prod_signal))
    assert not any(value in user for value in _generated_secrets(prod_signal))
    assert offline.secret_paths(prod_signal.of_type("aws:ec2/instance:Instance")[0].inputs) == []


def test_no_generated_secret_in_plaintext_on_docker(dev_evaluation):
    _assert_no_plaintext(dev_evaluation)
    server = dev_evaluation.named("signal-local-server")
    uploads = {u["file"]: i for i, u in enumerate(server.plain_inputs["uploads"])}
    # The engine marks the whole uploads list secret once one file in it is.
    assert offline.secret_paths(server.inputs) in (["uploads"],
                                                   [f"uploads[{uploads['/etc/signal/program-values.json']}].content"])
    values = json.loads(server.plain_inputs["uploads"][uploads["/etc/signal/program-values.json"]]["content"])
    assert set(values) == {f"bundle/{e.key}" for e in VERSION.bundle_from("program")} | {"tls/registration-key"}


def test_cloud_init_builds_the_pinned_ref_and_runs_the_server_under_systemd(prod_signal):
    document = user_data(prod_signal)
    assert {"openjdk-17-jdk-headless", "git", "docker.io", "nginx", "certbot"} <= set(document["packages"])
    fetch = next(c for c in document["runcmd"] if isinstance(c, list) and "git clone" in c[2])[2]
    assert "https://github.com/signalapp/Signal-Server" in fetch and "checkout --detach v9.81.0" in fetch
    unit = written_file(prod_signal, "/etc/systemd/system/signal-server.service")
    service = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    assert service["Restart"] == "on-failure"
    assert f"-Dsecrets.bundle.filename={PATHS['bundle']}" in service["ExecStart"]
    manifest = json.loads(written_file(prod_signal, PATHS["manifest"]))
    assert manifest["store"] == "ssm" and set(manifest["bundle"]) == {e.key for e in VERSION.bundle}
    nginx = written_file(prod_signal, "/etc/nginx/sites-available/signal.conf")
    assert [line.strip() for line in nginx.splitlines() if "server_name" in line] == ["server_name chat.example.org;"] * 3
    assert "proxy_pass http://127.0.0.1:8080;" in nginx and "grpc_pass grpcs://127.0.0.1:50051;" in nginx


def test_prebuilt_jar_is_fetched_instead_of_built_and_allowed_in_iam():
    from tests.conftest import evaluate

    evaluation = evaluate("prod", signalJarS3Uri="s3://my-builds/TextSecureServer-9.81.0.jar")
    runcmd = user_data(evaluation)["runcmd"]
    assert any(isinstance(c, list) and c[2].startswith("aws s3 cp --region eu-central-1 s3://my-builds/") for c in runcmd)
    assert not any(isinstance(c, list) and "git clone" in c[2] for c in runcmd)
    by_sid = {s["Sid"]: s for s in role_policy(evaluation)["Statement"]}
    assert by_sid["PrebuiltJar"]["Resource"] == ["arn:aws:s3:::my-builds/TextSecureServer-9.81.0.jar"]


def test_outputs_and_dns_records(prod_signal):
    outputs = prod_signal.plain_stack_outputs
    eip = prod_signal.of_type("aws:ec2/eip:Eip")[0]
    assert outputs["signalPublicIp"] == eip.plain_outputs["publicIp"]
    assert outputs["signalHostnames"][0] == "chat.example.org"
    assert not {"matrix.example.org", "element.example.org", "turn.example.org"} & set(outputs["signalHostnames"])
    assert "/commstack/prod/signal/public/udTrustRoot" in outputs["signalUdTrustRoot"]
    assert set(outputs["signalZkPublicParams"]) == {"zkgroup", "generic"}
    assert "SIGNAL_URL = \"https://chat.example.org\"" in outputs["signalClientInstructions"]
    assert eip.protect is True
    assert prod_signal.of_type("aws:ebs/volume:Volume")[0].protect is True


def test_instance_redis_cluster_is_local_only_and_formed_once(prod_signal):
    services = yaml.safe_load(written_file(prod_signal, PATHS["compose"]))["services"]
    nodes = {n: s for n, s in services.items() if n.startswith("redis-7")}
    assert len(nodes) == 6
    for node in nodes.values():
        assert node["network_mode"] == "host" and "ports" not in node
        assert node["command"][node["command"].index("--bind") + 1] == "127.0.0.1"
    create = services["redis-cluster-create"]
    assert set(create["depends_on"]) == set(nodes)
    assert all(v == {"condition": "service_healthy"} for v in create["depends_on"].values())
    assert "--cluster-replicas 1 --cluster-yes" in create["command"][2]


def test_signal_records_stay_dns_only_even_when_http_names_are_proxied():
    from tests.conftest import evaluate

    evaluation = evaluate("prod", cloudflareProxyHttp="true")
    proxied = {r.plain_inputs["name"]: r.plain_inputs["proxied"]
               for r in evaluation.of_type("cloudflare:index/dnsRecord:DnsRecord")}
    signal = {f"{sub}.example.org" for sub in ("chat", "storage", "cdn", "cdn2")}
    assert signal <= set(proxied)
    assert {name: proxied[name] for name in signal} == dict.fromkeys(signal, False)
    assert any(proxied.values())  # the switch is on: Matrix's HTTP names are proxied, Signal's are not
