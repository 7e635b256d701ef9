"""The docker target: DynamoDB Local with the same tables, a formed Redis cluster, images from source."""

import json

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
    assert "cluster_state:ok && exit 0" in script  # no second formation, no "vanilla first run"


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
