"""commstack:signalRestoredTables: restored table sets are adopted beside the originals, and the server,
its config.yml and its role follow the last one; the original tables stay exactly as they were."""

import pulumi
import pytest
import yaml

from commstack.devtools import offline
from components.settings import SettingsError
from components.signal.host import PATHS
from components.signal.storage import Tables, TablesArgs, table_name
from components.signal.version import get_dotted, load_version
from tests.components.signal.conftest import role_policy, written_file
from tests.conftest import TEST_SECRETS, evaluate, stack_config

VERSION = load_version("v9.81.0")
TABLE = "aws:dynamodb/table:Table"


def _without_name(inputs: dict) -> dict:
    return {k: v for k, v in inputs.items() if k != "name"}


@pulumi.runtime.test
def test_each_restored_set_is_imported_protected_and_the_last_one_is_live(recorded):
    tables = Tables("t", TablesArgs(VERSION.tables, "test-signal", restored=("r1", "r2")))

    def check(values):
        names, arns, index_arns = values
        regs = {r.plain_inputs["name"]: r for r in recorded.of_type(TABLE)}
        assert len(regs) == 3 * len(VERSION.tables)
        for spec in VERSION.tables:
            original = regs[table_name("test-signal", spec)]
            assert original.import_id == "" and original.protect is True and original.retain_on_delete is True
            assert original.name == f"t-{spec.name.lower().replace('_', '-')}"  # the resource it always was
            for suffix in ("r1", "r2"):
                restored = regs[f"test-signal-{spec.name}-{suffix}"]
                assert restored.import_id == restored.plain_inputs["name"]
                assert restored.name == f"{original.name}-{suffix}"
                assert restored.protect is True and restored.retain_on_delete is True
                # The same declaration as the original, so the adopted table keeps PITR, deletion protection, TTL.
                assert _without_name(restored.plain_inputs) == _without_name(original.plain_inputs)
        assert names == {spec.config: f"test-signal-{spec.name}-r2" for spec in VERSION.tables}
        assert sorted(arns) == sorted(regs[n].plain_outputs["arn"] for n in names.values())
        assert sorted(index_arns) == sorted(f"{regs[f'test-signal-{s.name}-r2'].plain_outputs['arn']}/index/{i.name}"
                                            for s in VERSION.tables for i in s.gsis + s.lsis)

    return pulumi.Output.all(tables.names, tables.arns, tables.index_arns).apply(check)


@pytest.fixture(scope="module")
def repointed():
    return evaluate("prod", backupTarget="local", signalRestoredTables='["restored-20261201-093000"]')


def test_config_yml_and_the_role_name_only_the_restored_tables(repointed):
    config = yaml.safe_load(written_file(repointed, PATHS["config_in"]))
    assert {spec.config: get_dotted(config["dynamoDbTables"], spec.config) for spec in VERSION.tables} == {
        spec.config: f"prod-signal-{spec.name}-restored-20261201-093000" for spec in VERSION.tables}
    by_name = {r.plain_inputs["name"]: r.plain_outputs["arn"] for r in repointed.of_type(TABLE)}
    restored = {by_name[f"prod-signal-{t.name}-restored-20261201-093000"] for t in VERSION.tables}
    indexes = {f"{by_name[f'prod-signal-{t.name}-restored-20261201-093000']}/index/{i.name}"
               for t in VERSION.tables for i in t.gsis + t.lsis}
    tables_statement = next(s for s in role_policy(repointed)["Statement"] if s["Sid"] == "Tables")
    assert set(tables_statement["Resource"]) == restored | indexes and len(restored) == 22 and len(indexes) == 5
    originals = {by_name[f"prod-signal-{t.name}"] for t in VERSION.tables}
    assert not any(resource.startswith(tuple(originals)) and resource not in restored | indexes
                   for statement in role_policy(repointed)["Statement"] for resource in statement["Resource"])


def test_the_original_tables_are_registered_exactly_as_before(repointed, prod_signal):
    before = {r.urn: r for r in prod_signal.of_type(TABLE)}
    after = {r.urn: r for r in repointed.of_type(TABLE)}
    assert set(before) < set(after) and len(after) == 2 * len(before)
    for urn, registration in before.items():
        kept = after[urn]
        assert (kept.plain_inputs, kept.protect, kept.retain_on_delete, kept.import_id) == (
            registration.plain_inputs, True, True, "")
    # Nothing else appears or goes away with the switch (config.yml and the role follow, tested above).
    assert {r.urn for r in repointed.registrations} - set(after) == {r.urn for r in prod_signal.registrations} - set(before)


@pytest.mark.parametrize("value,target,what,fix", [
    ('["Restored_1"]', "aws", "not table suffixes", "pulumi config set commstack:signalRestoredTables '[\"restored-"),
    ('["r1", "r1"]', "aws", "lists 'r1' twice", "pulumi config set commstack:signalRestoredTables '[\"r1\"]'"),
    ('"r1"', "aws", "must be a JSON list of strings", "pulumi config set commstack:signalRestoredTables"),
    ('["r1"]', "docker", "is for signalTarget aws", "pulumi config set commstack:signalRestoredTables '[]'"),
])
def test_bad_restored_tables_setting_is_refused_before_any_resource(value, target, what, fix):
    record = offline.Evaluation(stack="prod")
    overrides = {"signalRestoredTables": value, "signalTarget": target}
    if target == "docker":
        overrides.update(signalRedis="containers")
    with pytest.raises(SettingsError) as raised:
        offline.evaluate("prod", config=stack_config("prod", **overrides), secret_keys=list(TEST_SECRETS),
                         record=record)
    problem = next(p for p in raised.value.problems if p.startswith("commstack:signalRestoredTables"))
    assert what in problem and fix in problem, problem
    assert record.registrations == []
