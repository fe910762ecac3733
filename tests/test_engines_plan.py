"""Build plans: every shipped recipe resolves to a JSON plan; exported graphs replace planned specs."""

import json

import pytest

from ifengine.engines.exports import ensure_exports, find_exports, read_export
from ifengine.engines.build_plan import graph_io_dtypes, make_plan
from ifengine.engines.recipe import load_recipe, parse_recipe, shipped_recipes
from test_engines_fixtures import export_tiny_vae, tiny_vae_graph


@pytest.mark.parametrize("path", shipped_recipes(), ids=lambda p: p.stem)
def test_every_shipped_recipe_resolves_to_a_complete_json_plan(path, tmp_path):
    recipe = load_recipe(path)
    plan = make_plan(recipe, tmp_path / "artifacts", tmp_path / "engines")
    data = json.loads(json.dumps(plan.to_json()))
    assert data["recipe"] == recipe.name and len(data["engines"]) == len(recipe.components)
    assert data["missing_exports"] == [[c.name, c.precision] for c in recipe.components]
    wanted = {c.name: c for c in recipe.components}
    for engine in data["engines"]:
        part = wanted[engine["component"]]
        assert engine["precision"] == part.precision and engine["flags"]["strongly_typed"]
        assert engine["flags"]["weight_streaming"] == part.weight_streaming
        assert engine["flags"]["optimization_level"] == recipe.build.optimization_level
        assert set(engine["inputs"]) == {t["name"] for t in engine["spec"]["inputs"]}
        for shapes in engine["inputs"].values():
            lo, opt, hi = shapes["min"], shapes["opt"], shapes["max"]
            assert len(lo) == len(opt) == len(hi) and all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True))
            assert shapes["dtype"] in ("float32", "float16", "bfloat16", "int64")
    assert data["build_command"].startswith(f"ifengine build {recipe.name} --artifacts ")


def test_plan_reads_the_24gb_shapes():
    plan = make_plan(load_recipe("24gb"), "artifacts", "engines")
    jobs = {j.component: j for j in plan.jobs}
    assert jobs["unet2"].profile.shapes["sample"] == ((1, 6, 256, 256), (2, 6, 256, 256), (4, 6, 448, 448))
    assert jobs["t5"].flags.weight_streaming and jobs["t5"].stream_budget == "auto"
    assert jobs["vae_decoder"].io_dtypes == {"latents": "bfloat16", "image": "bfloat16"}
    assert jobs["t5"].io_dtypes["input_ids"] == "int64"


def test_checkpoint_configs_fix_the_planned_shapes(stage1_dir):
    from ifengine.models.checkpoint import resolve

    recipe = parse_recipe({"shapes": {"base": 32, "aspects": ["1:1"]}, "components": {"t5": "bf16", "unet1": "fp16"}})
    plan = make_plan(recipe, "a", "e", checkpoints={1: resolve(stage1_dir, 1)})
    jobs = {j.component: j for j in plan.jobs}
    hidden = jobs["t5"].spec.outputs[0].dims[-1]
    assert hidden == 32  # the tiny checkpoint's T5 width, not the XXL preset's 4096
    assert jobs["unet1"].profile.shapes["encoder_hidden_states"][2] == (2, 77, 32)


def test_exported_graphs_are_found_and_their_spec_and_dtypes_used(tmp_path):
    manifest = export_tiny_vae(tmp_path, "fp32")
    (tmp_path / "notes.json").write_text('{"not": "a manifest"}')  # ignored
    (tmp_path / ".hash-cache.json").write_text("{}")
    exports = find_exports(tmp_path)
    assert set(exports) == {("vae_decoder", "fp32")}
    record = exports[("vae_decoder", "fp32")]
    assert record.manifest == manifest.resolve() and record.graph.is_file()
    recipe = parse_recipe({"shapes": {"aspects": ["1:1", "4:3"]}, "components": {"vae_decoder": "fp32"}})
    plan = make_plan(recipe, tmp_path, tmp_path / "engines", exports=exports)
    (job,) = plan.jobs
    assert job.export == record and plan.missing_exports() == []
    assert job.io_dtypes == {"latents": "float32", "image": "float32"}
    assert job.key_fields()["export_fingerprint"] == record.fingerprint
    assert plan.to_json()["engines"][0]["export"]["graph_sha256"] == record.graph_sha256


def test_a_concrete_exported_spec_states_the_dtypes_without_opening_the_graph(tmp_path):
    from dataclasses import replace

    from test_engines_fixtures import tiny_vae_spec, write_export

    spec = tiny_vae_spec()
    concrete = replace(
        spec,
        inputs=tuple(replace(t, dtype="float16") for t in spec.inputs),
        outputs=tuple(replace(t, dtype="float16") for t in spec.outputs),
    )
    write_export(tmp_path, "vae_decoder", "fp16", concrete, tiny_vae_graph(tmp_path / "src.onnx", "float16"))
    record = find_exports(tmp_path)[("vae_decoder", "fp16")]
    record.graph.unlink()
    plan = make_plan(
        parse_recipe({"components": {"vae_decoder": "fp16"}}), tmp_path, "e", exports={("vae_decoder", "fp16"): record}
    )
    assert plan.jobs[0].io_dtypes == {"latents": "float16", "image": "float16"}


def test_graph_dtypes_come_from_the_graph_itself(tmp_path):
    assert graph_io_dtypes(tiny_vae_graph(tmp_path / "g.onnx", "float16")) == {"latents": "float16", "image": "float16"}


def test_a_broken_manifest_is_reported_when_read_directly(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"component": "unet1", "precision": "fp16"}))
    with pytest.raises(ValueError, match="not an (ifengine artifact|export) manifest"):
        read_export(path)


def test_components_filter_and_unknown_components(tmp_path):
    recipe = load_recipe("16gb")
    plan = make_plan(recipe, "a", "e", components=("unet1", "unet2"))
    assert [j.component for j in plan.jobs] == ["unet1", "unet2"]
    with pytest.raises(ValueError, match="builds no step1"):
        make_plan(recipe, "a", "e", components=("step1",))


def test_step_graphs_plan_their_guidance_batch_from_the_image_batch():
    recipe = parse_recipe(
        {
            "batch": {"min": 1, "opt": 1, "max": 2},
            "shapes": {"aspects": ["1:1", "16:9"]},
            "build": {"static_shapes": True},
            "components": {"step1": "fp16", "step2": "fp16"},
        }
    )
    jobs = make_plan(recipe, "a", "e").jobs
    step1 = jobs[0].profile.shapes
    assert step1["sample"][0] == (1, 3, 64, 64) and step1["text_embeds"][0] == (2, 77, 4096)
    assert step1["schedule"][0][0] < step1["schedule"][2][0]  # the step count stays a range
    assert [j.name for j in jobs] == [
        "step1-fp16-b1-64x64",
        "step1-fp16-b1-112x64",
        "step2-fp16-b1-256x256",
        "step2-fp16-b1-448x256",
    ]
    assert jobs[3].profile.shapes["noise_level"] == ((2,), (2,), (2,))


def test_exporting_missing_graphs_needs_their_checkpoints(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"t5 \(bf16\), unet1 \(fp16\), vae_decoder \(fp32\) not exported .* "
        r"pass --stage1 CHECKPOINT --stage3 CHECKPOINT",
    ):
        ensure_exports([("t5", "bf16"), ("unet1", "fp16"), ("vae_decoder", "fp32")], {}, tmp_path)
    export_tiny_vae(tmp_path)  # present: used as is without its checkpoint
    assert set(ensure_exports([("vae_decoder", "fp32")], {}, tmp_path)) == {("vae_decoder", "fp32")}


def test_graphs_are_exported_through_the_exporter_once(request, tmp_path, caplog):
    stage3 = request.getfixturevalue("stage3_dir")
    records = ensure_exports([("vae_decoder", "fp32")], {3: stage3}, tmp_path / "artifacts", progress=False)
    record = records[("vae_decoder", "fp32")]
    assert record.graph.is_file() and graph_io_dtypes(record.graph)["latents"] == "float32"
    again = ensure_exports([("vae_decoder", "fp32")], {3: stage3}, tmp_path / "artifacts", progress=False)
    assert again[("vae_decoder", "fp32")].fingerprint == record.fingerprint  # up to date: not re-exported
