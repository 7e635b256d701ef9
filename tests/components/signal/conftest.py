"""Whole-program evaluations of the Signal half, shared by the signal tests."""

import json

import pytest
import yaml

from tests.conftest import evaluate


@pytest.fixture(scope="session")
def prod_signal():
    return evaluate("prod")


@pytest.fixture(scope="session")
def prod_elasticache():
    return evaluate("prod", signalRedis="elasticache")


def user_data(evaluation) -> dict:
    text = evaluation.of_type("aws:ec2/instance:Instance")[0].plain_inputs["userData"]
    assert text.startswith("#cloud-config\n")
    return yaml.safe_load(text)


def written_file(evaluation, path: str) -> str:
    return next(f["content"] for f in user_data(evaluation)["write_files"] if f["path"] == path)


def role_policy(evaluation) -> dict:
    return json.loads(evaluation.of_type("aws:iam/rolePolicy:RolePolicy")[0].plain_inputs["policy"])
