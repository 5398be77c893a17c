"""The import graph of ``kd``: no circles, the library apart from the study harness.

Edges are read from the source (``ast``), never by importing it. A module's *module-level*
imports are those run when it is imported: its body, class bodies and ``if``/``try`` blocks
included, function bodies and ``if __name__ == "__main__"`` excluded. Importing ``a.b.c`` also
imports the packages ``a.b`` and ``a`` (their ``__init__``), so an edge to ``a.b.c`` is an edge
to ``a.b`` too, except from a module inside ``a.b`` (Python has imported its package first).

- The module-level graph has no cycle (a cycle there breaks an import, or makes it depend on
  which module is imported first).
- Nor has the graph of every import, those inside functions included: a lazy import (of a heavy
  or optional dependency) must not hide a circle either (the flat layout hid its registration
  circles that way: ``kd.data.load`` imported ``kd.cifar``, which imported ``kd.data``; and
  ``kd.cli`` -> ``kd.executor`` -> ``kd.results`` -> ``kd.cli``).
- Nothing outside ``kd.experiment`` (the study harness) imports it, and nothing in ``kd``
  imports ``studies``, at any level.
"""

from __future__ import annotations

import ast
import graphlib
import pkgutil
from pathlib import Path

import kd

KD_ROOT = Path(kd.__file__).resolve().parent
HARNESS = "kd.experiment"


def kd_modules() -> dict[str, Path]:
    """Every module of ``kd`` (packages as their ``__init__.py``) by dotted name."""
    modules = {"kd": KD_ROOT / "__init__.py"}
    for info in pkgutil.walk_packages([str(KD_ROOT)], prefix="kd."):
        relative = Path(*info.name.split(".")[1:])
        modules[info.name] = (KD_ROOT / relative / "__init__.py" if info.ispkg
                              else KD_ROOT / relative.with_suffix(".py"))
    return modules


def is_main_guard(node: ast.stmt) -> bool:
    test = getattr(node, "test", None)
    return (isinstance(node, ast.If) and isinstance(test, ast.Compare)
            and isinstance(test.left, ast.Name) and test.left.id == "__name__")


def imports(path: Path, name: str, known: set[str]) -> tuple[set[str], set[str]]:
    """(module-level, function-level) modules imported by module ``name`` at ``path``, by
    their full names (``from kd.x import y``: ``kd.x.y`` when that is a module, else ``kd.x``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top, lazy = set(), set()

    def targets(node) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        base = node.module or ""
        if node.level:  # relative: from ..x import y
            parts = package.split(".")
            base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
        return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names]

    def visit(node, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (lazy if in_function else top).update(targets(child))
            elif not in_function and is_main_guard(child):
                continue  # runs as __main__, not when imported
            else:
                visit(child, in_function or isinstance(
                    child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(path.read_text(), str(path)), False)
    return top, lazy


def edges_to(source: str, target: str, known: set[str]) -> set[str]:
    """The kd modules that importing ``target`` from ``source`` runs: it and its packages
    that ``source`` is not inside of."""
    if target not in known:
        return set()
    parts = target.split(".")
    packages = {".".join(parts[:i]) for i in range(1, len(parts))}
    return {target} | {p for p in packages if not source.startswith(p + ".")}


def graph():
    modules = kd_modules()
    known = set(modules)
    top, lazy, raw = {}, {}, {}
    for name, path in modules.items():
        module_level, function_level = imports(path, name, known)
        raw[name] = module_level | function_level
        top[name] = set().union(*(edges_to(name, t, known) for t in module_level)) - {name}
        lazy[name] = set().union(*(edges_to(name, t, known) for t in function_level)) - {name}
    return top, lazy, raw


def test_kd_has_no_import_cycle():
    top, lazy, _ = graph()
    assert len(top) > 20  # every module was found
    graphlib.TopologicalSorter(top).prepare()  # raises CycleError naming the cycle
    every = {name: top[name] | lazy[name] for name in top}
    graphlib.TopologicalSorter(every).prepare()


def test_the_library_never_imports_the_harness_or_the_studies():
    _, _, raw = graph()
    offending = sorted(f"{source} imports {target}" for source, targets in raw.items()
                       for target in targets
                       if target.split(".")[0] == "studies"
                       or (target.startswith(HARNESS) and not source.startswith(HARNESS)))
    assert not offending, "; ".join(offending)
