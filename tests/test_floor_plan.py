"""The floor plan of docs/architecture.md holds: no import runs up a floor, no import circle between files,
and ``import ifengine`` loads no torch (checked in a fresh interpreter)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ifengine"


def floors() -> dict[str, int]:
    """Room (top-level package or module of ifengine) -> floor, from the table in docs/architecture.md."""
    table = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    out = {}
    for floor, rooms in re.findall(r"^\| (\d+) \| ((?:`\w+` ?)+) \|", table, re.M):
        for room in re.findall(r"`(\w+)`", rooms):
            out[room] = int(floor)
    return out


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported ifengine module, line, inside a function) for every import of ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    in_function = {
        id(sub)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for sub in ast.walk(node)
        if isinstance(sub, (ast.Import, ast.ImportFrom))
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            targets = [base] if node.module else [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        found += [(t, node.lineno, id(node) in in_function) for t in targets if t.startswith("ifengine")]
    return found


def room(module: str) -> str | None:
    """The room of an ifengine module; None for the package root (``from ifengine import __version__``),
    which holds only the lazy public names and imports nothing at module level."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    is_room = (PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").is_file()
    return parts[1] if is_room else None


def source_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_table_names_every_room():
    rooms = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in source_files()} - {"__init__"}
    assert rooms == set(floors()), f"rooms missing from docs/architecture.md: {rooms - set(floors())}"


def upward_imports() -> list[str]:
    floor = floors()
    upward = []
    for path in source_files():
        here = room(module_name(path))
        if here is None:
            continue  # ifengine/__init__.py: the lazy public names, above every floor
        for target, line, _ in imports(path):
            there = room(target)
            if there is not None and floor[there] > floor[here]:
                upward.append(f"{path.relative_to(ROOT)}:{line} ({here}, floor {floor[here]}) imports {target}")
    return upward


def test_no_import_runs_up_a_floor():
    upward = upward_imports()
    assert not upward, "imports that run up a floor:\n" + "\n".join(upward)


def _module_graph() -> dict[str, set[str]]:
    """Module -> the ifengine modules it imports at module level (in-function imports run later)."""
    known = {module_name(p) for p in source_files()}
    graph = {}
    for path in source_files():
        deps = set()
        for target, _, in_function in imports(path):
            while target not in known and "." in target:
                target = target.rpartition(".")[0]  # "pkg.mod.Name" -> "pkg.mod"
            if not in_function and target in known:
                deps.add(target)
        graph[module_name(path)] = deps - {module_name(path)}
    return graph


def test_no_import_circle_between_files():
    graph = _module_graph()
    cycles, state = [], {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if dep.startswith(node + "."):
                continue  # a package importing its own submodules (its __init__) is not a circle
            if state.get(dep) == "open":
                cycles.append(" -> ".join(trail[trail.index(dep) :] + [dep]) if dep in trail else f"{node}->{dep}")
            elif dep not in state:
                visit(dep, trail + [dep])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_a_file_that_imports_upward_is_caught(tmp_path):
    """The check itself: an upward import in a file of the stage core fails it."""
    bad = PACKAGE / "stage" / "_floor_probe.py"
    bad.write_text("from ..pipeline.cascade import Cascade\n")
    try:
        ((target, _, _),) = imports(bad)
        assert target == "ifengine.pipeline.cascade" and floors()["pipeline"] > floors()["stage"]
    finally:
        bad.unlink()


def test_importing_ifengine_loads_no_torch():
    code = "import sys, ifengine, ifengine.dtypes, ifengine.facts; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_the_public_names_load_on_first_use():
    code = "import ifengine; c = ifengine.Cascade; import sys; print(c.__module__, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["ifengine.pipeline.cascade", "True"]
