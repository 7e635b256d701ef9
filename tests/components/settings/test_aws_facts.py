"""configs/aws/*.json are what scripts/update-aws-facts writes from the pinned botocore and moto."""

import importlib.machinery
import importlib.util
import json

from components.paths import ROOT
from components.settings import facts


def generator():
    loader = importlib.machinery.SourceFileLoader("update_aws_facts", str(ROOT / "scripts" / "update-aws-facts"))
    spec = importlib.util.spec_from_loader("update_aws_facts", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_the_data_files_match_their_sources():
    update = generator()
    assert json.loads(update.REGIONS_FILE.read_text()) == update.regions(), "run scripts/update-aws-facts"
    assert update.INSTANCE_TYPES_FILE.read_text() == update.render(update.instance_types()), \
        "run scripts/update-aws-facts"


def test_the_facts_hold_what_the_stacks_use():
    assert "eu-central-1" in facts.aws_regions() and "us-gov-west-1" not in facts.aws_regions()
    t3_large = facts.ec2_instance_types()["t3.large"]
    assert (t3_large.vcpus, t3_large.memory_mib, t3_large.architectures) == (2, 8192, ("x86_64",))
    assert facts.ec2_instance_types()["t4g.large"].architectures == ("arm64",)
