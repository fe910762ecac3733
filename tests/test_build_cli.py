"""`ifengine build`: dry-run plans as JSON, exit status 2 with install steps without TensorRT, clear errors."""

import importlib
import json
import sys

import pytest

from ifengine.cli import main
from ifengine.engines.recipe import shipped_recipes
from test_engines_fixtures import export_tiny_vae


def _has_tensorrt() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def test_help_names_the_recipes_and_dry_run(capsys):
    with pytest.raises(SystemExit) as done:
        main(["build", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--dry-run" in text and "24gb" in text and "--stage1" in text and "--out" in text


@pytest.mark.parametrize("path", shipped_recipes(), ids=lambda p: p.stem)
def test_dry_run_prints_the_plan_of_every_shipped_recipe(path, tmp_path, capsys):
    out, artifacts = tmp_path / "engines", tmp_path / "artifacts"
    assert main(["build", path.stem, "--dry-run", "--out", str(out), "--artifacts", str(artifacts)]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["recipe"] == path.stem and plan["out"] == str(out)
    networks = {"t5", "unet1", "unet2", "x4_unet", "vae_decoder", "clip"}
    if path.stem == "demo":  # the Inductor demo: every component, the whole steps included
        networks |= {"step1", "step2", "step3"}
    assert {e["component"] for e in plan["engines"]} == networks
    for engine in plan["engines"]:
        assert engine["inputs"] and all({"min", "opt", "max", "dtype"} <= set(s) for s in engine["inputs"].values())
        assert {"optimization_level", "workspace_bytes", "weight_streaming", "refittable"} <= set(engine["flags"])
    assert not out.exists() and not artifacts.exists()  # a dry run writes nothing


def test_dry_run_components_filter(capsys):
    assert main(["build", "24gb", "--dry-run", "--components", "unet1,x4_unet"]) == 0
    assert [e["name"] for e in json.loads(capsys.readouterr().out)["engines"]] == ["unet1-fp16", "x4_unet-fp16"]


def test_dry_run_uses_the_given_checkpoints_configs(stage1_dir, tmp_path, capsys):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text('[shapes]\nbase = 32\n[components]\nunet1 = "fp16"\nt5 = "bf16"\n')
    assert main(["build", str(recipe), "--dry-run", "--stage1", str(stage1_dir)]) == 0
    engines = {e["component"]: e for e in json.loads(capsys.readouterr().out)["engines"]}
    assert engines["unet1"]["inputs"]["encoder_hidden_states"]["max"] == [2, 77, 32]


def test_dry_run_against_exported_graphs_reports_their_hashes(tmp_path, capsys):
    export_tiny_vae(tmp_path / "artifacts", "fp32")
    recipe = tmp_path / "vae.toml"
    recipe.write_text('[components]\nvae_decoder = "fp32"\n')
    assert main(["build", str(recipe), "--dry-run", "--artifacts", str(tmp_path / "artifacts")]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["missing_exports"] == [] and len(plan["engines"][0]["export"]["graph_sha256"]) == 64


def test_dry_run_on_graphs_from_the_real_exporter(request, tmp_path, capsys):
    from ifengine.export import api

    stage3_dir = request.getfixturevalue("stage3_dir")
    artifacts = tmp_path / "artifacts"
    api.export_artifacts({3: stage3_dir}, artifacts, components=["vae_decoder"], precisions=["fp32"], progress=False)
    recipe = tmp_path / "vae.toml"  # the tiny x4 checkpoint's graphs take 16..64 px latents
    recipe.write_text('[shapes]\nbase = 8\naspects = ["1:1", "2:1"]\n[components]\nvae_decoder = "fp32"\n')
    assert main(["build", str(recipe), "--dry-run", "--artifacts", str(artifacts)]) == 0
    (engine,) = json.loads(capsys.readouterr().out)["engines"]
    assert engine["inputs"]["latents"]["max"][2:] == [32, 64]
    assert engine["export"] is not None and engine["inputs"]["latents"]["dtype"] == "float32"


@pytest.mark.skipif(_has_tensorrt(), reason="TensorRT is installed here")
def test_without_tensorrt_build_exits_2_with_install_steps(tmp_path, capsys):
    out, artifacts = tmp_path / "engines", tmp_path / "artifacts"
    assert main(["build", "24gb", "--out", str(out), "--artifacts", str(artifacts), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ifengine: error: TensorRT is not installed") and "pip install" in err
    assert "--dry-run" in err and "Traceback" not in err and err.count("\n") == 1
    assert not out.exists() and not artifacts.exists()  # failed before exporting anything


@pytest.mark.parametrize(
    "args, message",
    [
        (["build", "no-such-recipe", "--dry-run"], "no recipe 'no-such-recipe'"),
        (["build", "24gb", "--dry-run", "--components", "step9"], "builds no step9"),
        (["build", "24gb", "--dry-run", "--stage1", "/no/such/folder"], "neither a checkpoint folder"),
    ],
)
def test_bad_input_is_one_line_and_status_2(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "ifengine: error:" in err and message in err and "Traceback" not in err


def test_bad_recipe_value_names_the_key(tmp_path, capsys):
    recipe = tmp_path / "bad.toml"
    recipe.write_text('[components]\nunet1 = { precision = "fp12" }\n')
    assert main(["build", str(recipe), "--dry-run"]) == 2
    assert "[components.unet1] precision = 'fp12' is invalid" in capsys.readouterr().err


def test_importing_the_engine_code_needs_no_tensorrt():
    for name in (
        "ifengine",
        "ifengine.engines.trt_build",
        "ifengine.engines.trt_runtime",
        "ifengine.engines.builder",
        "ifengine.backends.tensorrt.engines",
        "ifengine.commands.build",
    ):
        importlib.import_module(name)
    assert _has_tensorrt() or "tensorrt" not in sys.modules
