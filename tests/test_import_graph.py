"""No import cycle inside ``lightning_compress``, and every module imports on its own.

The graph: one node per module of the package (from its source files), one edge per module-level
``import`` / ``from ... import`` of another ``lightning_compress`` module (statements inside
functions and classes, and under ``if TYPE_CHECKING:``, do not run at import time and are not
counted).  ``from lightning_compress.a import b`` is an edge to ``lightning_compress.a.b`` when that is
a module, else to ``lightning_compress.a``.  Parent packages that Python imports implicitly are not
edges (they are already in ``sys.modules`` when a submodule runs).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning_compress

ROOT = Path(lightning_compress.__file__).resolve().parent
PKG = "lightning_compress"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(stmts: list[ast.stmt]) -> None:
        for s in stmts:
            if isinstance(s, (ast.Import, ast.ImportFrom)):
                found.append(s)
            elif isinstance(s, ast.If):
                if not _is_type_checking(s):
                    visit(s.body)
                visit(s.orelse)
            elif isinstance(s, ast.Try):
                visit(s.body)
                for h in s.handlers:
                    visit(h.body)
                visit(s.orelse)
                visit(s.finalbody)
            elif isinstance(s, (ast.With,)):
                visit(s.body)

    visit(tree.body)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), str(path))
        for node in _module_level_imports(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in mods else stem for a in node.names]
            for t in targets:
                while t and t not in mods and "." in t:  # `import a.b.c` of a name inside a module
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != name:
                    graph[name].add(t)
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def dfs(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = dfs(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = dfs(n)
            if found:
                return found
    return None


def test_graph_sees_the_package():
    graph = import_graph()
    assert f"{PKG}.export.slim" in graph and f"{PKG}.core.masking" in graph[f"{PKG}.export.slim"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_inside_the_package():
    cycle = _find_cycle(import_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def _imports_lightning(path: Path) -> bool:
    for node in _module_level_imports(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        if any(n in ("lightning", "pytorch_lightning") or n.startswith(("lightning.", "pytorch_lightning.")) for n in names):
            return True
    return False


def test_export_package_does_not_import_lightning():
    """The export package and everything it imports (transitively, inside the package) is plain PyTorch."""
    graph, mods = import_graph(), _modules()
    todo = [m for m in graph if m == f"{PKG}.export" or m.startswith(f"{PKG}.export.")]
    seen: set[str] = set()
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph[m])
    assert f"{PKG}.export.slim" in seen and f"{PKG}.core.masking" in seen
    offenders = sorted(m for m in seen if _imports_lightning(mods[m]))
    assert not offenders, f"the export package imports lightning through {offenders}"


def test_every_module_imports_first_in_a_fresh_interpreter():
    mods = sorted(_modules())
    code = textwrap.dedent(
        f"""
        import importlib, sys
        failed = []
        for name in {mods!r}:
            for m in [m for m in sys.modules if m == {PKG!r} or m.startswith({PKG!r} + ".")]:
                del sys.modules[m]
            try:
                importlib.import_module(name)
            except Exception as err:
                failed.append(f"{{name}}: {{type(err).__name__}}: {{err}}")
        print("\\n".join(failed) or "ok")
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and res.stdout.strip().splitlines()[-1:] == ["ok"], res.stdout + res.stderr
