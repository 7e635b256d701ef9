"""The whole program with the Signal half on AWS (prod) and on Docker (dev), on the offline engine."""

import json
import subprocess
import sys

import pytest
import yaml

from commstack.devtools import offline
from components.edge.ports import firewall_ranges
from components.signal.host import PATHS, REGISTRATION_TLS_HOST
from components.signal.server_config import NO_IDENTITY_TOKEN
from components.signal.version import get_dotted, key_paths, load_version
from tests.components.signal.conftest import jar_build, missing_key_paths, role_policy, user_data, written_file
from tests.conftest import ROOT, evaluate

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


def test_missing_key_paths_sees_a_missing_nested_key():
    config = {"dynamoDbTables": {"issuedReceipts": {"tableName": "t", "expiration": "P30D"}}, "zkConfig": None}
    paths = ["dynamoDbTables.issuedReceipts.tableName", "dynamoDbTables.issuedReceipts.generator",
             "zkConfig.serverSecret", "dynamoDbTables.issuedReceipts.expiration"]
    assert missing_key_paths(config, paths) == ["dynamoDbTables.issuedReceipts.generator", "zkConfig.serverSecret"]


@pytest.mark.parametrize("stack", ["prod", "dev"])
def test_rendered_config_has_every_key_path_of_the_pinned_sample(stack, prod_signal, dev_evaluation):
    if stack == "prod":
        config = _server_config(prod_signal)
    else:
        uploads = {u["file"]: u["content"] for u in dev_evaluation.named("signal-local-server").plain_inputs["uploads"]}
        config = yaml.safe_load(uploads["/etc/signal/config.base.yml"])
    assert len(VERSION.required_key_paths) == 133
    assert missing_key_paths(config, VERSION.required_key_paths) == []
    assert list(config)[:len(VERSION.required_sections)] == list(VERSION.required_sections)
    assert _secret_refs(config) <= {e.key for e in VERSION.bundle}
    assert config["zkConfig"]["serverSecret"] == "secret://zkConfig.serverSecret"
    # Filled on the instance from the program's SSM parameter (config_patches), never written here.
    assert "dynamoDbTables.issuedReceipts.generator" in VERSION.program_config_values
    assert config["dynamoDbTables"]["issuedReceipts"]["generator"] is None


UPSTREAM = ROOT.parent / ".mirror" / "signalapp+Signal-Server" / "repo"


@pytest.mark.skipif(not UPSTREAM.exists(), reason="no local snapshot of signalapp/Signal-Server")
def test_key_path_list_is_the_upstream_sample_at_the_pinned_tag():
    sample = subprocess.run(["git", "-C", str(UPSTREAM), "show", f"{VERSION['commit']}:service/config/sample.yml"],
                            check=True, capture_output=True, text=True).stdout
    assert list(VERSION.required_key_paths) == key_paths(yaml.safe_load(sample), VERSION.sample_open_maps)


def nginx_servers(conf: str) -> list[list[list[str]]]:
    """Each top-level `server { }` block of an nginx config as its directives (nested ones too), split into words."""
    servers, depth = [], 0
    for line in (raw.split("#", 1)[0].strip() for raw in conf.splitlines()):
        if line == "server {" and depth == 0:
            servers.append([])
        depth += line.count("{") - line.count("}")
        for statement in line.replace("{", ";").replace("}", ";").split(";"):
            if statement.strip() and statement.strip() != "server" and depth > 0:
                servers[-1].append(statement.split())
    return servers


def test_nginx_servers_splits_blocks_and_directives():
    conf = "server {\n    listen 80; # web\n    location / { return 301 x; }\n}\nserver {\n    listen 1.2.3.4:442 ssl;\n}\n"
    assert nginx_servers(conf) == [[["listen", "80"], ["location", "/"], ["return", "301", "x"]],
                                   [["listen", "1.2.3.4:442", "ssl"]]]


def test_registration_service_is_reached_through_nginx_on_loopback_over_tls(prod_signal):
    rs = VERSION.registration_service
    config = _server_config(prod_signal)["registrationService"]
    # By name: other self-signed certificates (the TURN one) exist too, in any order.
    cert = prod_signal.named("signal-internal-tls-cert")
    assert prod_signal.by_urn(cert.parent).type == "commstack:signal:InternalTls"
    assert (config["host"], config["port"]) == (REGISTRATION_TLS_HOST, rs["tls_port"]) == ("localhost", 442)
    assert config["registrationCaCertificate"] == cert.plain_outputs["certPem"]
    assert cert.plain_inputs["dnsNames"] == [config["host"]]
    # The build patch removes the identity-token credentials; the config says so instead of holding a credential.
    assert config["credentialConfigurationJson"] == config["secondaryCredentialConfigurationJson"] == NO_IDENTITY_TOKEN

    # nginx: a loopback-only TLS gRPC server with the internal certificate, passing to registration-service.
    servers = nginx_servers(written_file(prod_signal, "/etc/nginx/sites-available/signal.conf"))
    grpc, = [s for s in servers if any(d[0] == "grpc_pass" for d in s)]
    listens = [d[1:] for d in grpc if d[0] == "listen"]
    assert listens == [["127.0.0.1:442", "ssl", "http2"], ["[::1]:442", "ssl", "http2"]]
    directives = {d[0]: d[1:] for d in grpc}
    assert directives["grpc_pass"] == [f"grpc://127.0.0.1:{rs['port']}"]
    assert (directives["ssl_certificate"], directives["ssl_certificate_key"]) == ([PATHS["tls_cert"]], [PATHS["tls_key"]])
    assert written_file(prod_signal, PATHS["tls_cert"]) == cert.plain_outputs["certPem"]
    # Nothing else listens on 442, and every public listener is 80 or 443.
    others = [d[1] for s in servers if s is not grpc for d in s if d[0] == "listen"]
    assert sorted(others) == ["443", "80", "[::]:443", "[::]:80"]

    # registration-service itself: plaintext in its own container, published on loopback only at the port nginx
    # passes to.
    server = yaml.safe_load(written_file(prod_signal, PATHS["registration_yml"]))["grpc"]["server"]
    assert server == {"port": rs["port"]}
    compose = yaml.safe_load(written_file(prod_signal, PATHS["compose"]))["services"]["registration-service"]
    assert compose["ports"] == [f"127.0.0.1:{rs['port']}:{rs['port']}"] and "network_mode" not in compose
    assert compose["volumes"] == [f"{PATHS['registration_yml']}:/etc/registration/application.yml:ro",
                                  f"{PATHS['registration_secrets']}:/etc/registration/secrets.yml:ro"]

    # The security group opens exactly the public port list (and SSH to the admin CIDRs): never 442 nor 50051.
    group, = prod_signal.of_type("aws:ec2/securityGroup:SecurityGroup")
    rules = [(r["protocol"], r["fromPort"], r["toPort"], tuple(r["cidrBlocks"])) for r in group.plain_inputs["ingress"]]
    expected = [(span.protocol, span.from_port, span.to_port, ("0.0.0.0/0",)) for span in firewall_ranges()]
    assert sorted(rules) == sorted(expected + [("tcp", 22, 22, ("198.51.100.7/32",))])


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
    assert group.protect is True and group.retain_on_delete is True


def test_iam_grants_only_the_stacks_own_arns_and_no_wildcards(prod_signal):
    policy = role_policy(prod_signal)
    by_name = {r.plain_inputs["name"]: r.plain_outputs["arn"] for r in prod_signal.of_type("aws:dynamodb/table:Table")}
    tables = set(by_name.values())
    # Exactly the GSIs and LSIs of the data file, by name, on the tables that have them.
    indexes = {f"{by_name[f'prod-signal-{t.name}']}/index/{i.name}" for t in VERSION.tables for i in t.gsis + t.lsis}
    assert len(indexes) == 5 and {i.rsplit("/", 1)[1] for i in indexes} == {
        "ul_to_u", "u_to_p", "pni_to_p", "pc_to_u", "Message_UUID_Index"}
    buckets = {r.plain_outputs["arn"] for r in prod_signal.of_type("aws:s3/bucket:Bucket")}
    objects = {f"{b}/*" for b in buckets}
    prefix = "arn:aws:ssm:eu-central-1:123456789012:parameter/commstack/prod/signal/"
    profile = prod_signal.of_type("aws:appconfig/configurationProfile:ConfigurationProfile")[0]
    allowed = tables | indexes | buckets
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        assert all("*" not in action for action in statement["Action"])
        for resource in statement["Resource"]:
            if "*" in resource:
                # The one wildcard: S3 object ARNs name keys, and the server writes new keys.
                assert statement["Sid"] == "Objects" and resource in objects, resource
                continue
            assert (resource in allowed or resource.startswith(prefix)
                    or resource.endswith(f"/configuration/{profile.plain_outputs['configurationProfileId']}")), resource
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert set(by_sid["Tables"]["Resource"]) == tables | indexes
    assert set(by_sid["Objects"]["Resource"]) == objects
    ssm = {r.plain_outputs["arn"] for r in prod_signal.of_type("aws:ssm/parameter:Parameter")}
    assert ssm <= set(by_sid["ReadParameters"]["Resource"])
    assert not ssm & set(by_sid["WriteFirstBootParameters"]["Resource"])  # the program's values are never rewritten
    assert not prod_signal.of_type("aws:iam/accessKey:AccessKey")


def test_program_secrets_live_in_protected_securestring_parameters(prod_signal):
    params = prod_signal.of_type("aws:ssm/parameter:Parameter")
    program = [e.key for e in VERSION.bundle_from("program")]
    names = {p.plain_inputs["name"] for p in params}
    assert {f"/commstack/prod/signal/bundle/{k}" for k in program} | {
        "/commstack/prod/signal/tls/registration-key",
        "/commstack/prod/signal/registration/twilio-api-key-secret",
        "/commstack/prod/signal/config/dynamoDbTables.issuedReceipts.generator"} == names
    for p in params:
        assert p.plain_inputs["type"] == "SecureString" and p.protect is True
        assert offline.secret_paths(p.inputs) == ["value"]
    sizes = {r.plain_inputs["length"] for r in prod_signal.of_type("random:index/randomBytes:RandomBytes")}
    assert 32 in sizes
    generator = prod_signal.named("signal-secrets-dynamodbtables-issuedreceipts-generator")
    assert (generator.plain_inputs["length"], generator.protect) == (32, True)


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
    assert set(values) == {f"bundle/{e.key}" for e in VERSION.bundle_from("program")} | {
        "tls/registration-key", "config/dynamoDbTables.issuedReceipts.generator"}


def test_cloud_init_builds_the_pinned_ref_and_runs_the_server_under_systemd(prod_signal):
    document = user_data(prod_signal)
    assert {"openjdk-17-jdk-headless", "git", "docker.io", "nginx", "certbot"} <= set(document["packages"])
    _, fetch = jar_build(prod_signal)
    assert "https://github.com/signalapp/Signal-Server" in fetch and f"checkout --detach {VERSION['commit']}" in fetch
    assert f"test \"$(git rev-parse --verify 'v9.81.0^{{commit}}')\" = {VERSION['commit']}" in fetch
    unit = written_file(prod_signal, "/etc/systemd/system/signal-server.service")
    service = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    assert service["Restart"] == "on-failure"
    assert f"-Dsecrets.bundle.filename={PATHS['bundle']}" in service["ExecStart"]
    manifest = json.loads(written_file(prod_signal, PATHS["manifest"]))
    assert manifest["store"] == "ssm" and set(manifest["bundle"]) == {e.key for e in VERSION.bundle}
    assert service["Environment"] == '"AWS_DEFAULT_REGION=eu-central-1"'
    assert manifest["region"] == "eu-central-1"
    nginx = nginx_servers(written_file(prod_signal, "/etc/nginx/sites-available/signal.conf"))
    assert [d[1:] for s in nginx for d in s if d[0] == "server_name"] == [["chat.example.org"]] * 2 + [["localhost"]]
    assert ["proxy_pass", "http://127.0.0.1:8080"] in nginx[1]


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
    # docker-compose interpolates `$VAR`; every shell `$` of the script must reach sh as written.
    from components.signal import redis as signal_redis

    script = create["command"][2]
    assert "$" in script and "$" not in script.replace("$$", "")
    expected = signal_redis.cluster_create_script([f"127.0.0.1:{p}" for p in signal_redis.node_ports()],
                                                  f"127.0.0.1:{signal_redis.FIRST_PORT}")
    assert script.replace("$$", "$") == expected


def test_signal_records_stay_dns_only_even_when_http_names_are_proxied():
    from tests.conftest import evaluate

    evaluation = evaluate("prod", cloudflareProxyHttp="true")
    proxied = {r.plain_inputs["name"]: r.plain_inputs["proxied"]
               for r in evaluation.of_type("cloudflare:index/dnsRecord:DnsRecord")}
    signal = {f"{sub}.example.org" for sub in ("chat", "storage", "cdn", "cdn2")}
    assert signal <= set(proxied)
    assert {name: proxied[name] for name in signal} == dict.fromkeys(signal, False)
    assert any(proxied.values())  # the switch is on: Matrix's HTTP names are proxied, Signal's are not


def test_public_values_before_the_first_boot_say_how_to_get_them(prod_signal):
    outputs = prod_signal.plain_stack_outputs
    lookup, = [args for token, args in prod_signal.invokes if token == "aws:ssm/getParametersByPath:getParametersByPath"]
    assert lookup["path"] == "/commstack/prod/signal/public" and lookup["withDecryption"] is False
    pending = outputs["signalUdTrustRoot"]
    assert pending.startswith("pending first boot: run `pulumi up` again after the instance has booted")
    assert "--name /commstack/prod/signal/public/udTrustRoot" in pending
    assert [v.startswith("pending first boot") for v in outputs["signalZkPublicParams"].values()] == [True, True]
    assert "UNIDENTIFIED_SENDER_TRUST_ROOTS = (pending first boot" in outputs["signalClientInstructions"]


def test_public_values_after_the_first_boot_are_the_stored_values_in_the_clear(monkeypatch):
    stored = {"udTrustRoot": "BdUdTrustRoot0", "zkServerPublic": "AZkPublic0", "genericZkServerPublic": "AGeneric0"}
    monkeypatch.setattr(offline, "SSM_PARAMETERS", {
        **{f"/commstack/prod/signal/public/{n}": v for n, v in stored.items()},
        "/commstack/prod/signal/bundle/zkConfig.serverSecret": "never-an-output"})
    evaluation = evaluate("prod")
    outputs = evaluation.plain_stack_outputs
    assert outputs["signalUdTrustRoot"] == "BdUdTrustRoot0"
    assert outputs["signalZkPublicParams"] == {"zkgroup": "AZkPublic0", "generic": "AGeneric0"}
    instructions = outputs["signalClientInstructions"].splitlines()
    assert '  UNIDENTIFIED_SENDER_TRUST_ROOTS = "BdUdTrustRoot0"' in instructions
    assert '  ZKGROUP_SERVER_PUBLIC_PARAMS = "AZkPublic0"' in instructions
    assert '  GENERIC_SERVER_PUBLIC_PARAMS = "AGeneric0"' in instructions
    assert not any(offline.is_secret(evaluation.stack_outputs[k])
                   for k in ("signalUdTrustRoot", "signalZkPublicParams", "signalClientInstructions"))
    assert "never-an-output" not in json.dumps(outputs)


def test_public_values_on_docker_name_the_command_that_reads_them(dev_evaluation):
    outputs = dev_evaluation.plain_stack_outputs
    server = dev_evaluation.named("signal-local-server").plain_inputs["name"]
    assert outputs["signalUdTrustRoot"].endswith(f"docker exec {server} cat /var/lib/signal/secrets/public/udTrustRoot")
    assert not [t for t, _ in dev_evaluation.invokes if t.startswith("aws:")]


def test_signal_hostnames_come_from_settings():
    import components.settings as settings
    from components.signal import backend

    assert backend.SIGNAL_SUBDOMAINS is settings.SIGNAL_SUBDOMAINS
    assert tuple(backend.SUBDOMAIN_PURPOSES) == settings.SIGNAL_SUBDOMAINS


def test_a_docker_signal_stack_never_imports_pulumi_aws():
    # A fresh process: the test session itself has long imported pulumi_aws.
    probe = ("import json, sys; from tests.conftest import evaluate; e = evaluate('dev'); "
             "assert e.of_type('docker:index/container:Container'); "
             "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('pulumi_aws', 'components'))))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    modules = json.loads(out.splitlines()[-1])
    assert "components.signal.local" in modules and "components.signal.backend" in modules
    assert not [m for m in modules if m.startswith("pulumi_aws")]
    assert not {"components.signal.iam", "components.edge.firewall"} & set(modules)


def test_remote_config_has_an_inert_audience_the_server_requires(prod_signal):
    # Signal-Server refused the empty list at startup (tests/integration/test_signal_jvm.py):
    # "remoteConfig.audiences must not be empty" (RemoteConfigConfiguration: @NotEmpty List<String> audiences).
    remote = _server_config(prod_signal)["remoteConfig"]
    assert remote["audiences"] and all(a.endswith(".invalid") for a in remote["audiences"])
    assert remote["authorizedUsers"] == []  # so no Google sign-in can use it


def test_the_dynamic_configuration_passes_the_servers_validation(prod_signal, dev_evaluation):
    # `{}` failed DynamicConfiguration validation in the real server ("captcha.scoreFloor must not be null"),
    # which then waited forever for a valid first document (tests/integration/test_signal_jvm.py).
    hosted = yaml.safe_load(prod_signal.of_type("aws:appconfig/hostedConfigurationVersion:HostedConfigurationVersion")[0]
                            .plain_inputs["content"])
    floor = hosted["captcha"]["scoreFloor"]
    assert isinstance(floor, (int, float)) and 0 <= floor <= 1
    local = {u["file"]: u["content"] for u in dev_evaluation.named("signal-local-aws-local").plain_inputs["uploads"]}
    assert yaml.safe_load(local["/etc/aws-local/dynamic-config.yml"]) == hosted
