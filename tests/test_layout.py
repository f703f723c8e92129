"""The package's layout rules (docs/design.md, "Layout"): the ``python -m`` entry points are leaves
that nothing in the package imports, and the package has no import cycle."""

from __future__ import annotations

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[1] / "ctrlaug"
ENTRY_POINTS = ("train", "evaluate", "ablate", "calibrate", "diagnose", "viz", "export")


def _module_name(path: pathlib.Path, root: pathlib.Path = PKG) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(
    path: pathlib.Path, root: pathlib.Path = PKG, modules: set[str] | None = None
) -> set[str]:
    """Every module ``path`` imports, at module level or inside functions, relative imports
    resolved; ``from pkg import name`` counts as ``pkg.name`` too (it may be a module). Given the
    package's ``modules``, ``from pkg import sub`` of a submodule counts as ``pkg.sub`` alone."""
    mod = _module_name(path, root)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
            out.update(names)
            if modules is None or not all(n in modules for n in names):
                out.add(target)
    return out


def entry_point_imports(root: pathlib.Path = PKG) -> list[str]:
    """``"importer -> entry point"`` for every package module that imports an entry point."""
    entries = {f"ctrlaug.{e}" for e in ENTRY_POINTS}
    bad = []
    for path in sorted(root.rglob("*.py")):
        for target in sorted(imported_modules(path, root) & entries):
            bad.append(f"{_module_name(path, root)} -> {target}")
    return bad


def test_every_entry_point_exists_and_has_main():
    for e in ENTRY_POINTS:
        tree = ast.parse((PKG / f"{e}.py").read_text())
        names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert "main" in names, f"ctrlaug/{e}.py has no main()"


def test_no_package_module_imports_an_entry_point():
    assert entry_point_imports() == []


def test_the_check_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "ctrlaug"
    (pkg / "studies").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "studies" / "__init__.py").write_text("")
    (pkg / "studies" / "a.py").write_text("def f():\n    from ctrlaug.train import main\n")
    (pkg / "studies" / "b.py").write_text("from .. import evaluate\n")
    (pkg / "studies" / "c.py").write_text("from ctrlaug.engine.trainer import train\n")
    assert entry_point_imports(pkg) == [
        "ctrlaug.studies.a -> ctrlaug.train",
        "ctrlaug.studies.b -> ctrlaug.evaluate",
    ]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_entry_points_are_thin(entry):
    """An entry point holds a parser and a call into the library: no class, and no function but
    the parser longer than a screen."""
    tree = ast.parse((PKG / f"{entry}.py").read_text())
    assert not [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    long = [
        f"{f.name} ({f.end_lineno - f.lineno + 1} lines)"
        for f in funcs
        if f.end_lineno - f.lineno >= 60 and "parser" not in f.name
    ]
    assert not long, f"ctrlaug/{entry}.py: {long}"


def import_cycles(root: pathlib.Path = PKG) -> list[list[str]]:
    """Strongly connected groups of more than one package module in the import graph (module
    and function level imports alike): every group is a cycle."""
    mods = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph = {
        m: sorted(t for t in imported_modules(p, root, set(mods)) if t in mods and t != m)
        for m, p in mods.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
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
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_package_has_no_import_cycle():
    assert import_cycles() == []


def test_the_cycle_check_finds_a_function_level_cycle(tmp_path):
    pkg = tmp_path / "ctrlaug"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from ctrlaug.b import g\n")
    (pkg / "b.py").write_text("def g():\n    from ctrlaug import a\n")
    (pkg / "c.py").write_text("from ctrlaug import a\n")
    assert import_cycles(pkg) == [["ctrlaug.a", "ctrlaug.b"]]
