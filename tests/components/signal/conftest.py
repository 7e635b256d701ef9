"""Whole-program evaluations of the Signal half, shared by the signal tests."""

import base64
import gzip
import json

import pytest
import yaml

from components.signal.version import get_dotted, load_version
from tests.conftest import evaluate


@pytest.fixture(scope="session")
def prod_signal():
    # The Matrix backups' own bucket and IAM user (backupTarget aws) are tested in tests/components/matrix.
    return evaluate("prod", backupTarget="local")


@pytest.fixture(scope="session")
def prod_elasticache():
    return evaluate("prod", signalRedis="elasticache", backupTarget="local")


def user_data_text(evaluation) -> str:
    """The instance's cloud-config, as cloud-init sees it (base64, then gzip)."""
    encoded = evaluation.of_type("aws:ec2/instance:Instance")[0].plain_inputs["userDataBase64"]
    text = gzip.decompress(base64.b64decode(encoded)).decode()
    assert text.startswith("#cloud-config\n")
    return text


def user_data(evaluation) -> dict:
    return yaml.safe_load(user_data_text(evaluation))


def written_file(evaluation, path: str) -> str:
    return next(f["content"] for f in user_data(evaluation)["write_files"] if f["path"] == path)


def role_policy(evaluation) -> dict:
    return json.loads(evaluation.of_type("aws:iam/rolePolicy:RolePolicy")[0].plain_inputs["policy"])


def missing_key_paths(config: dict, paths) -> list[str]:
    """The key paths `config` lacks, or holds as null although nothing fills them in later (config_patches)."""
    patched = load_version("v9.81.0")["config_patches"]
    missing = []
    for path in paths:
        try:
            value = get_dotted(config, path)
        except (KeyError, TypeError):
            missing.append(path)
            continue
        if value is None and path not in patched:
            missing.append(path)
    return missing


def jar_build(evaluation) -> tuple[str, str]:
    """The cloud-config's jar build: (the whole runcmd line, the script BUILD_USER runs under runuser)."""
    import shlex

    line = next(c for c in user_data(evaluation)["runcmd"] if isinstance(c, list) and "runuser" in c[2])[2]
    words = shlex.split(line)
    return line, words[words.index("-c", words.index("runuser")) + 1]
