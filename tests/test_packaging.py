"""The wheel works outside the checkout, with exactly the dependencies it declares.

Quick checks (default suite): the wheel's ``Requires-Dist`` covers every third-party module the code of
``ifengine generate`` and ``ifengine serve`` can import (found by walking the imports, ast, from those
commands), core for what the plain demo run needs, the extras for the rest; and a demo load in a
subprocess imports nothing a core install lacks (what libraries load lazily, like protobuf inside
transformers' tokenizer conversion, no ast walk can see). The wheel ships its LICENSE and runs from
another folder (over the current site-packages).

Slow (``pytest -m slow``): a fresh virtual environment, torch pinned first, then the wheel WITH its
dependencies from the package index, and the README's commands run from another folder.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ENTRY = ("ifengine.cli", "ifengine.commands.generate", "ifengine.commands.serve")


def _run(*args, cwd=None, env=None, timeout=300, check=True) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if not check:
        return done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if importlib.util.find_spec("hatchling") is None or importlib.util.find_spec("build") is None:
        pytest.skip("needs `build` and `hatchling` (the test extra) to build the wheel offline")
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", out, ROOT)
    (found,) = out.glob("ifengine-*.whl")
    return found


def _metadata(wheel: Path) -> tuple[str, list[str]]:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(name).decode()
    return text, [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def _requirements(lines: list[str]) -> dict[str, set[str]]:
    """Requires-Dist lines -> {normalised distribution: {"core"} or the extras that name it}."""
    out: dict[str, set[str]] = {}
    for line in lines:
        name = _norm(re.match(r"[A-Za-z0-9._-]+", line).group(0))
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", line)
        out.setdefault(name, set()).add(extra.group(1) if extra else "core")
    return out


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --- the imports the code can reach --------------------------------------------------------------------


def _module_file(name: str) -> Path | None:
    """The source file of an ifengine module in this checkout (nothing is imported to find it)."""
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None  # a name imported from a module (`from .x import f`), not a module


def _imports(name: str, path: Path) -> list[str]:
    """Absolute names of the modules an ifengine module imports, at module level or inside functions;
    not those under ``if TYPE_CHECKING`` (never run) or in a ``try`` that catches ImportError (the
    code has a fallback: psutil -> /proc/meminfo)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[str] = []

    def guarded(node: ast.AST) -> bool:
        if isinstance(node, ast.If):
            return "TYPE_CHECKING" in ast.unparse(node.test)
        return isinstance(node, ast.Try) and any(
            h.type is not None and re.search(r"\b(ImportError|ModuleNotFoundError)\b", ast.unparse(h.type))
            for h in node.handlers
        )

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.append(base)
            found.extend(f"{base}.{a.name}" for a in node.names)  # `from . import module`
        if isinstance(node, ast.Try) and guarded(node):
            for child in node.handlers + node.orelse + node.finalbody:
                visit(child)
            return
        if not guarded(node):
            for child in ast.iter_child_nodes(node):
                visit(child)

    visit(ast.parse(path.read_text()))
    return found


def reachable_imports(entries=ENTRY) -> set[str]:
    """Third-party top-level modules that the entries' code can import (every ifengine module it can
    reach, following imports inside functions too: the commands import most of their work lazily)."""
    seen, todo, third = set(), list(entries), set()
    while todo:
        name = todo.pop()
        path = _module_file(name) if name.startswith("ifengine") else None
        if name in seen or path is None:
            continue
        seen.add(name)
        for module in _imports(name, path):
            top = module.split(".")[0]
            if top == "ifengine":
                todo += [module, module.rpartition(".")[0]]  # the package's __init__ runs too
            elif top and top not in sys.stdlib_module_names and top != "__future__":
                third.add(top)
    return third


def _distributions(module: str) -> set[str]:
    """Installed distributions providing ``module``; not installed here (tomli, only for Python < 3.11):
    the distribution of the same name."""
    return {_norm(d) for d in metadata.packages_distributions().get(module, [])} or {_norm(module)}


def _closure(lines: list[str], extras: set[str] | None) -> set[str]:
    """The distributions Requires-Dist ``lines`` install (core, plus ``extras``; None: every extra), with
    what those require in turn per the installed metadata (their own extras as requested: ray[serve])."""
    todo, out = [], set()
    for line in lines:
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", line)
        if extra is None or extras is None or extra.group(1) in extras:
            todo.append(line)
    while todo:
        req = todo.pop()
        match = re.match(r"([A-Za-z0-9._-]+)\s*(\[([^\]]*)\])?", req)
        name, wanted = _norm(match.group(1)), {e.strip() for e in (match.group(3) or "").split(",") if e.strip()}
        key = (name, frozenset(wanted))
        if key in out:
            continue
        out.add(key)
        try:
            reqs = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for r in reqs:
            extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", r)
            if extra is None or extra.group(1) in wanted:
                todo.append(r.split(";")[0])
    return {name for name, _ in out}


def test_requires_dist_covers_every_import_that_generate_and_serve_can_reach(wheel):
    lines = _metadata(wheel)[1]
    imports = reachable_imports()
    assert {"torch", "transformers", "safetensors", "PIL", "ray", "onnx"} <= imports, "the walk found too little"
    installed = _closure(lines, None)
    missing = {m: sorted(_distributions(m)) for m in imports if not _distributions(m) & installed}
    assert not missing, f"imported by generate/serve code but installed by no Requires-Dist of the wheel: {missing}"
    # serving needs the serve extra, nothing more (beyond core)
    serve = _closure(lines, {"serve"})
    for module in ("ray", "fastapi", "starlette", "pydantic"):
        assert module not in imports or _distributions(module) & serve, f"{module} is not in [serve]"


def _top_entries(dist: metadata.Distribution) -> set[str]:
    """What a distribution puts into site-packages, one level deep (two inside a namespace like google/)."""
    files = [f.parts for f in dist.files or [] if f.parts and not f.parts[0].startswith("..")]
    inits = {parts[0] for parts in files if len(parts) == 2 and parts[1] == "__init__.py"}
    out = set()
    for parts in files:
        if len(parts) == 1:
            if not parts[0].endswith(".pth"):
                out.add(parts[0])
        elif parts[0] in inits or parts[0].endswith((".dist-info", ".libs", ".data")) or len(parts) == 2:
            out.add(parts[0])
        else:
            out.add(f"{parts[0]}/{parts[1]}")  # a namespace package shared by several distributions
    return out


def core_site(target: Path, wheel: Path) -> Path:
    """A site-packages holding (as links into the current one) only what a core install of ``wheel`` brings:
    its core Requires-Dist and their own requirements. A fresh install without the download."""
    allowed = _closure(_metadata(wheel)[1], set())
    for dist in metadata.distributions():
        if _norm(dist.metadata["Name"]) not in allowed:
            continue
        for entry in _top_entries(dist):
            src, dst = Path(dist.locate_file(entry)), target / entry
            if src.exists() and not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.symlink_to(src)
    return target


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """A fresh venv with the wheel installed over a core-only site: (venv, its site-packages, env)."""
    tmp = tmp_path_factory.mktemp("core")
    venv = tmp / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    (site / "core.pth").write_text(f"{core_site(tmp / 'core-site', wheel)}\n")
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.setdefault("IFENGINE_CACHE", str(tmp / "cache"))
    return venv, site, env


def test_a_core_install_runs_the_demo_and_names_the_extras_it_lacks(installed, tmp_path):
    """Fails without protobuf in core: transformers turns the demo's (and IF's) spiece.model into its fast
    tokenizer through it, and nothing ifengine imports names it."""
    venv, site, env = installed
    ifengine = str(venv / "bin" / "ifengine")
    where = _run(venv / "bin" / "python", "-c", "import ifengine, onnx", cwd=tmp_path, env=env, check=False)
    assert "No module named 'onnx'" in where, "the core-only site is not core-only"
    out = _run(ifengine, "generate", "x", "--seed", "0", "--steps", "1", "--last-stage", "1", "--quiet",
               "--out", "a.png", cwd=tmp_path, env=env)  # fmt: skip
    assert (tmp_path / "a.png").is_file() and out.strip().endswith("a.png")
    for extra, command in (
        ("export", ["export", "--stage1", "x", "--out", "art"]),
        ("export", ["generate", "x", "--artifacts", "art", "--out", "b.png"]),
        ("serve", ["serve"]),
    ):
        done = subprocess.run([ifengine, *command], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 2 and f'pip install "ifengine[{extra}]"' in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_the_wheel_ships_the_license_and_its_metadata_names_it(wheel):
    text, _ = _metadata(wheel)
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (licence,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        body = z.read(licence).decode()
    assert body == (ROOT / "LICENSE").read_text()
    assert "Apache License" in body and "Version 2.0, January 2004" in body and "END OF TERMS" in body
    assert "License: Apache-2.0" in text and "License-File: LICENSE" in text


def test_gpu_extra_is_self_sufficient_and_no_extra_pairs_both_onnxruntimes(wheel):
    """pip cannot make two extras exclude each other: `gpu` (and `gpu-dev`) carry all they need and
    replace `export`/`dev`; no single extra pulls in both ONNX Runtime packages."""
    required = _requirements(_metadata(wheel)[1])
    extras = {e for where in required.values() for e in where} - {"core"}
    for extra in extras:
        names = {d for d, where in required.items() if extra in where}
        assert not {"onnxruntime", "onnxruntime-gpu"} <= names, f"[{extra}] installs both ONNX Runtime packages"
    gpu = {d for d, where in required.items() if "gpu" in where}
    export = {d for d, where in required.items() if "export" in where}
    assert export - {"onnxruntime"} <= gpu and "onnxruntime-gpu" in gpu
    test = {d for d, where in required.items() if "test" in where}
    assert test | gpu <= {d for d, where in required.items() if "gpu-dev" in where}


def test_the_installed_wheel_builds_a_shipped_recipe_from_another_folder(installed, tmp_path):
    venv, site, env = installed
    where = _run(venv / "bin" / "python", "-c", "import ifengine; print(ifengine.__file__)", cwd=tmp_path, env=env)
    assert Path(where.strip()).is_relative_to(site), f"imported {where} instead of the installed wheel"
    out = _run(venv / "bin" / "ifengine", "build", "24gb", "--dry-run", cwd=tmp_path, env=env)
    plan = json.loads(out)
    assert plan["recipe"] and Path(plan["recipe_path"]).is_relative_to(site / "ifengine" / "recipes")
    assert plan["engines"] and plan["generate_command"].startswith("ifengine generate")


# --- slow: a fresh environment, dependencies from the package index --------------------------------------


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


@pytest.mark.slow
def test_a_fresh_install_runs_the_readme_commands(wheel, tmp_path):
    """README "Set up" as a new user types it (torch pinned first, then the wheel and its dependencies),
    then the exported demo gives the same picture as the checkpoints with no other flags."""
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    pip = (venv / "bin" / "python", "-m", "pip", "install", "-q")
    torch_pin = (ROOT / ".ci" / "constraints.txt").read_text().split("torch==")[1].split()[0]
    _run(*pip, f"torch=={torch_pin}", timeout=1200)
    _run(*pip, str(wheel), timeout=1800)  # WITH its dependencies, from the index
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["IFENGINE_CACHE"] = str(tmp_path / "cache")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    ifengine = str(venv / "bin" / "ifengine")
    _run(ifengine, "generate", "a red cat", "--seed", "0", "--out", "a.png", "--quiet", cwd=cwd, env=env, timeout=900)
    demo = tmp_path / "cache" / "demo-v4"
    stages = [f"--stage{n}={demo / f'stage{n}'}" for n in (1, 2, 3)]
    done = subprocess.run(
        [ifengine, "export", *stages, "--out", "art"], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert done.returncode == 2 and 'pip install "ifengine[export]"' in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    _run(*pip, f"ifengine[export] @ {wheel.as_uri()}", timeout=1800)
    _run(ifengine, "export", *stages, "--out", "art", "--quiet", cwd=cwd, env=env, timeout=1800)
    _run(ifengine, "generate", "a red cat", "--seed", "0", "--artifacts", "art", "--out", "b.png", "--quiet",
         cwd=cwd, env=env, timeout=900)  # fmt: skip
    a, b = _pixels(cwd / "a.png"), _pixels(cwd / "b.png")
    assert a.shape == b.shape and np.abs(a - b).max() <= 1
