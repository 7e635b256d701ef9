"""The Signal half's data layer on real servers: every declared table in moto's DynamoDB,
the program's six Redis nodes formed into a cluster, and the server config wired to both."""

from __future__ import annotations

import json
import subprocess
from urllib.parse import urlsplit

import boto3
import pytest
import redis as redis_py
from redis.cluster import ClusterNode, RedisCluster

from components.signal import redis as signal_redis
from components.signal.storage import create_table_request
from components.signal.version import get_dotted, load_version
from tests.integration.harness import harness_config

SERVER_CONFIG = "/etc/signal/config.base.yml"


@pytest.fixture(scope="module")
def version():
    return load_version(harness_config().get("commstack:signalServerRef", "v9.81.0"))


@pytest.fixture(scope="module")
def server_config(harness) -> dict:
    holders = [c for c, files in harness.rendered.files.items() if SERVER_CONFIG in files]
    assert len(holders) == 1, holders
    return harness.rendered.yaml(holders[0], SERVER_CONFIG)


@pytest.fixture(scope="module")
def table_requests(harness) -> dict[str, dict]:
    """The CreateTable requests the program hands DynamoDB Local, by table name."""
    requests = {}
    for files in harness.rendered.files.values():
        for path, content in files.items():
            if path.startswith("/tables/") and path.endswith(".json"):
                request = json.loads(content)
                requests[request["TableName"]] = request
    return requests


@pytest.fixture(scope="module")
def dynamodb(harness, table_requests):
    client = boto3.client("dynamodb", endpoint_url=harness.dynamodb_url, region_name="eu-central-1",
                          aws_access_key_id="harness", aws_secret_access_key="harness")
    for request in table_requests.values():
        client.create_table(**request)
    return client


def test_rendered_requests_are_the_version_table_specs(version, server_config, table_requests):
    expected = {}
    for spec in version.tables:
        name = get_dotted(server_config["dynamoDbTables"], spec.config)
        expected[name] = create_table_request(spec, name)
    assert table_requests == expected


def test_every_declared_table_is_created_in_dynamodb(dynamodb, version, table_requests):
    listed = dynamodb.list_tables(Limit=100)["TableNames"]
    assert sorted(listed) == sorted(table_requests)
    assert len(listed) == len(version.tables)
    for name, request in table_requests.items():
        table = dynamodb.describe_table(TableName=name)["Table"]
        assert table["TableStatus"] == "ACTIVE"
        assert table["KeySchema"] == request["KeySchema"]
        assert sorted(table["AttributeDefinitions"], key=str) == sorted(request["AttributeDefinitions"], key=str)
        for kind in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
            assert sorted(i["IndexName"] for i in table.get(kind, [])) == \
                sorted(i["IndexName"] for i in request.get(kind, [])), f"{name} {kind}"


def test_server_config_names_exactly_the_created_tables(dynamodb, version, server_config):
    configured = {get_dotted(server_config["dynamoDbTables"], spec.config) for spec in version.tables}
    assert configured == set(dynamodb.list_tables(Limit=100)["TableNames"])


@pytest.fixture(scope="module")
def redis_cluster(harness) -> list[int]:
    addresses = [f"127.0.0.1:{port}" for port in harness.ports.redis]
    script = signal_redis.cluster_create_script(addresses, addresses[0])
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # No waiting here: the script itself exits only once every node has settled.
    return list(harness.ports.redis)


def test_the_program_redis_nodes_form_a_cluster(redis_cluster):
    for port in redis_cluster:
        info = redis_py.Redis(port=port).cluster("info")
        assert info["cluster_state"] == "ok"
        assert int(info["cluster_known_nodes"]) == signal_redis.NODES
        assert int(info["cluster_size"]) == signal_redis.NODES // (1 + signal_redis.REPLICAS_PER_MASTER)


def test_cluster_create_is_a_no_op_once_formed(redis_cluster):
    addresses = [f"127.0.0.1:{port}" for port in redis_cluster]
    done = subprocess.run(["sh", "-c", signal_redis.cluster_create_script(addresses, addresses[0])],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and "--cluster create" not in done.stdout


def test_write_and_read_through_every_node(redis_cluster):
    clients = {port: RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", port)]) for port in redis_cluster}
    try:
        for port, client in clients.items():
            assert client.set(f"harness:{port}", f"written via {port}")
        for port, client in clients.items():
            for written_via in redis_cluster:
                assert client.get(f"harness:{written_via}") == f"written via {written_via}".encode()
    finally:
        for client in clients.values():
            client.close()


def test_server_config_redis_uris_name_the_program_cluster_nodes(harness, version, server_config):
    nodes = {}
    for reg in harness.rendered.evaluation.of_type("docker:index/container:Container"):
        inputs = reg.plain_inputs
        if inputs["name"] in harness.rendered.redis_nodes:
            command = inputs["command"]
            port = int(command[command.index("--port") + 1])
            for alias in inputs["networksAdvanced"][0]["aliases"]:
                nodes[alias] = port
    assert len(nodes) == signal_redis.NODES
    entries = [(e, "configurationUri") for e in version.redis_cluster_entries] + \
              [(e, "uri") for e in version.redis_standalone_entries]
    for entry, key in entries:
        uri = urlsplit(get_dotted(server_config, entry)[key])
        assert uri.scheme == "redis", entry
        assert nodes.get(uri.hostname) == uri.port, f"{entry} points at {uri.hostname}:{uri.port}"
