"""The package's shape, read from its source: no import cycle, no private name imported from
another module."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hebbret"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(absolute module, imported names) of every import in ``path``, wherever it sits (lazy
    imports inside functions included), except those under ``if TYPE_CHECKING:``."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
            and getattr(node.test, "id", "") == "TYPE_CHECKING" for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((a.name, []) for a in node.names)
    return found


def edges() -> dict[str, set[str]]:
    """module -> the package modules it imports (``from pkg import submodule`` counts as an
    import of the submodule)."""
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        for target, names in imports(path):
            if target not in mods:
                continue
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in mods]
            graph[m].update(subs)
            if len(subs) < len(names) or not names:  # a name defined in the module itself
                graph[m].add(target)
            graph[m].discard(m)
    return graph


def test_no_import_cycle():
    graph = edges()
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, trail: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(" -> ".join(trail[trail.index(n):] + [n]))
            elif n not in state:
                visit(n, trail + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_private_name_imported_from_another_module():
    mods = modules()
    found = []
    for m, path in mods.items():
        for target, names in imports(path):
            if target.startswith("hebbret") and target != m:
                found += [f"{m} imports {target}.{n}" for n in names
                          if n.startswith("_") and not n.startswith("__")]
    assert not found, "\n".join(found)


def test_the_checks_see_a_cycle_and_a_private_import(tmp_path, monkeypatch):
    """The two checks above are not vacuous: on a tiny package with both faults they fail."""
    pkg = tmp_path / "hebbret"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import _hidden\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n_hidden = 1\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    graph = edges()
    assert graph["hebbret.a"] == {"hebbret.b"} and graph["hebbret.b"] == {"hebbret.a"}
    with pytest.raises(AssertionError, match="hebbret.a -> hebbret.b -> hebbret.a"):
        test_no_import_cycle()
    with pytest.raises(AssertionError, match="hebbret.a imports hebbret.b._hidden"):
        test_no_private_name_imported_from_another_module()


def test_functions_stay_short_and_tools_are_wiring():
    """No function of the library or the tools over 60 lines; every tools/*.py script ≤ 250
    lines (what they share lives in tools/_common)."""
    root = PACKAGE.parent
    long = []
    for path in [*PACKAGE.rglob("*.py"), *(root / "tools").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 60:
                    long.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({lines})")
    assert not long, "functions over 60 lines:\n" + "\n".join(long)
    scripts = {p.name: len(p.read_text().splitlines()) for p in (root / "tools").glob("*.py")}
    assert scripts and max(scripts.values()) <= 250, scripts
