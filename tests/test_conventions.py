"""The project's conventions, checked on the source so they cannot drift."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPONENT_FILES = sorted((ROOT / "components").rglob("*.py"))
TEST_FILES = sorted((ROOT / "tests").rglob("test_*.py"))


def component_classes():
    for path in COMPONENT_FILES:
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and any(ast.unparse(b).endswith("ComponentResource") for b in node.bases):
                yield path, node


COMPONENTS = list(component_classes())


def test_there_are_components():
    assert len(COMPONENTS) >= 15


@pytest.mark.parametrize("path,cls", COMPONENTS, ids=[c.name for _, c in COMPONENTS])
def test_component_type_token_and_register_outputs_last(path, cls):
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    first = init.body[0] if not isinstance(init.body[0], ast.Expr) or not isinstance(init.body[0].value, ast.Constant) else init.body[1]
    call = first.value if isinstance(first, ast.Expr) else None
    assert call is not None and ast.unparse(call.func) == "super().__init__", f"{cls.name}: super().__init__ first"
    token = call.args[0].value
    assert re.fullmatch(r"commstack:(matrix|signal|edge):[A-Z][A-Za-z]+", token), token
    last = init.body[-1]
    assert isinstance(last, ast.Expr) and ast.unparse(last.value.func) == "self.register_outputs", \
        f"{cls.name}: register_outputs must be the last statement of __init__"


@pytest.mark.parametrize("path,cls", COMPONENTS, ids=[c.name for _, c in COMPONENTS])
def test_component_takes_one_typed_args(path, cls):
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    params = [a for a in init.args.args if a.arg != "self"]
    assert [a.arg for a in params] == ["name", "args", "opts"], cls.name
    assert ast.unparse(params[1].annotation).endswith("Args"), cls.name


def test_pulumi_runtime_tests_return_their_output():
    missing = []
    for path in TEST_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any("runtime.test" in ast.unparse(d) for d in node.decorator_list):
                if not any(isinstance(s, ast.Return) and s.value is not None for s in node.body):
                    missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not missing, missing


def test_only_settings_reads_stack_config():
    readers = [p.relative_to(ROOT) for p in COMPONENT_FILES + [ROOT / "__main__.py"]
               if "pulumi.Config(" in p.read_text() and p.name != "settings.py"]
    assert readers == []


def _imported_modules(path: Path, package: str) -> set[str]:
    """Every `package…` module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from commstack.checks import doctor` imports the module commstack.checks.doctor.
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name == package or name.startswith(package + ".")}


def import_graph(package: str) -> dict[str, set[str]]:
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for p in (ROOT / package).rglob("*.py")}
    return {name: _imported_modules(path, package) & set(modules) - {name} for name, path in modules.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, done = [], set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycles.append(path[path.index(module):] + [module])
            return
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, path + [module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    return cycles


@pytest.mark.parametrize("package", ["commstack", "components"])
def test_no_import_cycles(package):
    assert import_cycles(import_graph(package)) == []


def test_import_cycle_check_finds_a_cycle():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_cli_tests_mirror_the_cli_modules():
    """tests/commstack/<group>/test_<module>[_<aspect>].py tests commstack/<group>/<module>.py."""
    unmatched = []
    for test in (ROOT / "tests" / "commstack").rglob("test_*.py"):
        if test.parent.name == "commstack":
            continue  # the dispatcher's own tests (commstack/__main__.py)
        modules = [p.stem for p in (ROOT / "commstack" / test.parent.name).glob("*.py")]
        tested = test.stem.removeprefix("test_")
        if not any(tested == m or tested.startswith(m + "_") for m in modules):
            unmatched.append(str(test.relative_to(ROOT)))
    assert unmatched == []
    assert (ROOT / "tests" / "commstack" / "checks" / "test_doctor.py").is_file()
