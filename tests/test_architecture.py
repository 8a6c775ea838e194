"""The package's shape, read from its source (AST): the layers and no import circles, no branching on task
kinds outside their registry, small modules. A change that breaks the structure fails here, not in review."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "manytask"

# lowest first: a module may import from its own layer (without circles) or below, never above
LAYERS = [
    ["manytask.errors", "manytask.io", "manytask.runtime", "manytask.machine", "manytask.hooks", "manytask.records",
     "manytask.fanout"],
    ["manytask.kinds"],
    ["manytask.tasks"],
    ["manytask.entries", "manytask.config"],
    ["manytask.data"],
    ["manytask.encoders", "manytask.models"],
    ["manytask.bundles", "manytask.inference"],
    ["manytask.training", "manytask.evaluation"],
    ["manytask.runs"],
    ["manytask.distill", "manytask.flex", "manytask.metal", "manytask.report"],
    ["manytask.serving", "manytask.export"],
    ["manytask.api"],
    ["manytask.cli", "manytask"],
]


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Every manytask module ``path`` imports, at the top or inside functions (TYPE_CHECKING blocks aside)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.startswith("manytask"))
            elif isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("manytask"):
                for a in child.names:
                    sub = f"{child.module}.{a.name}"
                    found.add(sub if sub in known else child.module)
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def layer(module: str) -> int:
    best = max((p for group in LAYERS for p in group if module == p or module.startswith(p + ".")), key=len)
    return next(i for i, group in enumerate(LAYERS) if best in group)


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: {i for i in imports(p, known) if i != m} for m, p in known.items()}


def test_every_module_has_a_layer():
    for m in modules():
        layer(m)  # raises if no layer prefix matches


def test_no_import_points_up_the_layers():
    wrong = [f"{m} (layer {layer(m)}) imports {i} (layer {layer(i)})"
             for m, deps in graph().items() for i in deps if layer(i) > layer(m)]
    assert not wrong, "\n".join(wrong)


def test_no_import_circles():
    g = graph()
    index, low, stack, on, circles = {}, {}, [], set(), []

    def strong(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in g:
                continue
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for v in g:
        if v not in index:
            strong(v)
    assert not circles, circles


def test_the_layering_test_sees_a_circle_and_an_upward_import(tmp_path):
    """The checks above can fail: a fake module pair that imports each other, and a low module that imports
    the command line."""
    pkg = tmp_path / "manytask"
    (pkg / "data").mkdir(parents=True)
    (pkg / "data" / "a.py").write_text("from manytask.data import b\nimport manytask.cli\n")
    (pkg / "data" / "b.py").write_text("def f():\n    from manytask.data.a import x\n")
    known = {"manytask.data.a": pkg / "data" / "a.py", "manytask.data.b": pkg / "data" / "b.py"}
    a, b = imports(known["manytask.data.a"], known), imports(known["manytask.data.b"], known)
    assert a == {"manytask.data.b", "manytask.cli"} and b == {"manytask.data.a"}
    assert layer("manytask.cli") > layer("manytask.data.a")


def _kind_names() -> set[str]:
    from manytask.kinds import kind_names

    return set(kind_names())


def kind_branches(path: Path, names: set[str]) -> list[str]:
    """Comparisons of a ``.kind`` attribute with a task kind's name, and tables keyed by kind names."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            consts = {c.value for s in sides for c in ast.walk(s) if isinstance(c, ast.Constant)}
            if any(isinstance(s, ast.Attribute) and s.attr == "kind" for s in sides) and consts & names:
                found.append(f"{path.name}:{node.lineno}")
        elif isinstance(node, ast.Dict):
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
            if len(keys & names) >= 2:
                found.append(f"{path.name}:{node.lineno}")
    return found


def test_only_the_kinds_registry_branches_on_a_kind():
    names = _kind_names()
    assert {"classification", "regression", "tagging"} <= names
    offenders = [hit for m, p in modules().items() if not m.startswith("manytask.kinds")
                 for hit in kind_branches(p, names)]
    assert not offenders, offenders


def test_the_kind_check_finds_a_branch(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f(spec):\n    if spec.kind == 'tagging':\n        return {'classification': 1, 'regression': 2}\n")
    assert kind_branches(bad, _kind_names()) == ["bad.py:2", "bad.py:3"]


@pytest.mark.parametrize("limit", [420])
def test_modules_stay_small(limit):
    long = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > limit}
    assert not long, long
