"""The import graph of ``node/`` follows DESIGN section 3.

Every ``import`` and ``from ... import`` in every module is read with :mod:`ast`, at module
level and inside functions alike (a function-level import is still a dependency); imports under
``if TYPE_CHECKING:`` are left out (annotations only). ``from package import name`` counts as
an import of ``package.name`` when that is a module, else of ``package``.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

NODE = Path(__file__).resolve().parents[1] / "node"
STDLIB = frozenset(sys.stdlib_module_names)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(NODE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(NODE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` blocks."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.If) and _is_type_checking(child):
            yield from (n for branch in child.orelse for n in [branch, *_walk(branch)])
            continue
        yield child
        yield from _walk(child)


def _imports(module: str) -> set[str]:
    """Names of the modules ``module`` imports (absolute; relative imports resolved)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else base)
    return found


GRAPH: dict[str, set[str]] = {m: _imports(m) for m in MODULES}


def _node_imports(module: str) -> set[str]:
    return {i for i in GRAPH[module] if i == "node" or i.startswith("node.")}


def _third_party(module: str) -> set[str]:
    roots = {i.split(".")[0] for i in GRAPH[module]}
    return {r for r in roots if r not in STDLIB and r not in ("node", "__future__")}


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_quant_imports_only_numpy_scipy_and_imagings_plain_types() -> None:
    plain_types = {"node.imaging.volume", "node.imaging.radiopharmaceuticals"}
    for module in (m for m in MODULES if _in(m, "node.quant")):
        assert _third_party(module) <= {"numpy", "scipy"}, (module, _third_party(module))
        outside = {i for i in _node_imports(module) if not _in(i, "node.quant")}
        assert outside <= plain_types, (module, outside)
    for module in plain_types:  # and those are plain: no pydicom, nothing of the node's
        assert _third_party(module) <= {"numpy"}, (module, _third_party(module))
        assert _node_imports(module) == set(), module


def test_dicom_knows_no_medicine() -> None:
    medicine = ("node.pipelines", "node.results", "node.quant", "node.imaging", "node.ai", "node.synth",
                "node.workflow", "node.queue")
    for module in (m for m in MODULES if _in(m, "node.dicom")):
        wrong = {i for i in _node_imports(module) if any(_in(i, p) for p in medicine)}
        assert wrong == set(), (module, wrong)


def test_no_runtime_module_imports_synth() -> None:
    """Phantoms are for the demo, tests, training and validation, never for processing."""
    allowed = ("node.synth", "node.ai.training")
    for module in MODULES:
        if any(_in(module, p) for p in allowed):
            continue
        wrong = {i for i in _node_imports(module) if _in(i, "node.synth")}
        assert wrong == set(), (module, wrong)


@pytest.mark.parametrize("library,home", [
    ("celery", ("node.queue",)),
    ("kombu", ("node.queue",)),
    ("pynetdicom", ("node.dicom", "node.synth.spect.demo")),
    ("highdicom", ("node.results",)),
    ("torch", ("node.ai",)),
    ("monai", ("node.ai",)),
    ("sqlalchemy", ("node.ledger", "node.queue")),
    ("alembic", ("node.ledger",)),
])
def test_third_party_libraries_stay_in_their_package(library: str, home: tuple[str, ...]) -> None:
    users = {m for m in MODULES if library in _third_party(m)}
    assert all(any(_in(m, h) for h in home) for m in users), sorted(users)


def test_no_import_cycles_in_node() -> None:
    graph = {m: {i for i in _node_imports(m) if i in MODULES and i != m} for m in MODULES}
    # Tarjan's strongly connected components; any component of two or more modules is a cycle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_package_faces_have_a_docstring_and_all_and_no_logic() -> None:
    for module, path in MODULES.items():
        if path.name != "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        assert ast.get_docstring(tree), f"{module}: no docstring"
        body = tree.body[1:]
        logic = [n for n in body if not isinstance(n, (ast.Import, ast.ImportFrom, ast.Assign, ast.AnnAssign))]
        assert logic == [], f"{module}: logic in a package face ({[type(n).__name__ for n in logic]})"
        names = {t.id for n in body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        assert "__all__" in names, f"{module}: no __all__"


def test_no_import_error_guards_around_the_projects_own_modules() -> None:
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Try):
                continue
            catches_import_error = any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                or isinstance(h.type, ast.Tuple) and any(
                    isinstance(e, ast.Name) and e.id in ("ImportError", "ModuleNotFoundError") for e in h.type.elts)
                for h in node.handlers)
            own = [n for b in node.body for n in ast.walk(b)
                   if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("node")]
            assert not (catches_import_error and own), f"{module}:{node.lineno}: try/except ImportError around node imports"


def test_the_package_ships_its_type_information() -> None:
    assert (NODE / "py.typed").is_file()


def test_prometheus_client_is_used_by_telemetry_and_web_only() -> None:
    """The instruments are defined once (node.telemetry); node.web exposes them and its scrape-time gauges."""
    users = {m for m in MODULES if "prometheus_client" in _third_party(m)}
    assert all(m == "node.telemetry" or _in(m, "node.web") for m in users), sorted(users)
    assert _node_imports("node.telemetry") == set()
