"""The wheel works outside the checkout: built, installed into a fresh virtual environment (which sees the
already-installed dependencies through a .pth file, but not the editable ifengine), and `ifengine build
24gb --dry-run` run from another folder finds the shipped recipe inside the installed package."""

import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, cwd=None, env=None) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_installed_wheel_builds_a_shipped_recipe_from_another_folder(tmp_path):
    if importlib.util.find_spec("hatchling") is None or importlib.util.find_spec("build") is None:
        pytest.skip("needs `build` and `hatchling` (the test extra) to build the wheel offline")
    _run(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", tmp_path / "dist", ROOT)
    (wheel,) = (tmp_path / "dist").glob("ifengine-*.whl")
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    # the dependencies, cheaply: the current site-packages as a plain path entry (its own .pth files,
    # among them the editable ifengine's, are not processed from there)
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run(python, "-c", "import ifengine; print(ifengine.__file__)", cwd=elsewhere, env=env)
    assert Path(where.strip()).is_relative_to(site), f"imported {where} instead of the installed wheel"
    out = _run(venv / "bin" / "ifengine", "build", "24gb", "--dry-run", cwd=elsewhere, env=env)
    plan = json.loads(out)
    assert plan["recipe"] and Path(plan["recipe_path"]).is_relative_to(site / "ifengine" / "recipes")
    assert plan["engines"] and plan["generate_command"].startswith("ifengine generate")
