"""``Cascade.from_engines`` / ``generate --engines``: every engine-cache error comes before any work.

Engines are built through the real build path with stand-in TensorRT bytes (test_engines_fixtures), so
the manifests, index, checksums and staleness records are the real ones; passing the build ``target``
lets the checks run without TensorRT. Good engines then reach the one step that needs TensorRT itself
(deserialisation), which here says how to install it.
"""

import importlib.util

import pytest
from test_engines_cache import RECIPE, _damage, built  # noqa: F401 (fixture)
from test_engines_fixtures import TARGET, export_tiny_vae

import ifengine
from ifengine.engines.cache import Target
from ifengine.engines.errors import EngineCorrupt, EngineForeign, EngineMissing, EngineStale, TensorRTUnavailable

needs_no_tensorrt = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is here")


def _engines(built):  # noqa: F811
    plan, result = built
    return plan, result.engine.parent.parent


@needs_no_tensorrt
def test_good_engines_pass_every_check_and_then_need_tensorrt(built):  # noqa: F811
    plan, out = _engines(built)
    with pytest.raises(TensorRTUnavailable, match="pip install"):
        ifengine.Cascade.from_engines(out, artifacts=plan.artifacts, target=TARGET)


@pytest.mark.parametrize(
    "how, error, message", [("flipped byte", EngineCorrupt, "sha256"), ("truncated", EngineCorrupt, "truncated")]
)
def test_corrupt_engines_fail_before_any_work(built, how, error, message):  # noqa: F811
    plan, out = _engines(built)
    _damage(built[1], how)
    with pytest.raises(error, match=f"{message}.*run `ifengine build"):
        ifengine.Cascade.from_engines(out, artifacts=plan.artifacts, target=TARGET)


def test_missing_foreign_and_stale_engines_fail_before_any_work(built, tmp_path):  # noqa: F811
    plan, out = _engines(built)
    with pytest.raises(EngineMissing, match="no compiled engines in"):
        ifengine.Cascade.from_engines(tmp_path / "nothing", target=TARGET)
    other = Target("NVIDIA GeForce RTX 4090", "8.9", "10.13.0.35")
    with pytest.raises(EngineForeign, match="not for this machine"):
        ifengine.Cascade.from_engines(out, target=other)
    artifacts = tmp_path / "reexported"
    export_tiny_vae(artifacts, channels_out=2)  # the graph changed since the engine was built
    with pytest.raises(EngineStale, match="re-exported"):
        ifengine.Cascade.from_engines(out, artifacts=artifacts, target=TARGET)


def test_generate_with_missing_engines_is_one_clear_line(tmp_path, capsys):
    from ifengine.cli import main

    code = main(["generate", "a cat", "--engines", str(tmp_path / "none"), "--out", str(tmp_path / "a.png")])
    assert code == 2 and "no compiled engines in" in capsys.readouterr().err


def test_build_names_the_generate_command(tmp_path, capsys):
    import json
    import shlex

    from ifengine.cli import main

    assert RECIPE["components"]  # the cache tests' recipe builds the VAE only
    assert main(["build", "24gb", "--dry-run", "--out", str(tmp_path / "e"), "--artifacts", str(tmp_path / "a")]) == 0
    command = shlex.split(json.loads(capsys.readouterr().out)["generate_command"])
    assert command[:2] == ["ifengine", "generate"] and command[command.index("--engines") + 1] == str(tmp_path / "e")
    assert command[command.index("--artifacts") + 1] == str(tmp_path / "a")
