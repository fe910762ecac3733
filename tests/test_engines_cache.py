"""Engine cache: keys, manifests, atomic writes, the build lock, and rejection of stale/foreign/corrupt engines."""

import json
import threading
import time
from pathlib import Path
from dataclasses import replace

import pytest

from ifengine.engines.builder import build_plan
from ifengine.engines.cache import (
    Target,
    build_once,
    cache_key,
    engine_manifests,
    engine_paths,
    load_verified,
    write_atomic,
)
from ifengine.engines.errors import EngineCorrupt, EngineForeign, EngineMissing, EngineStale
from ifengine.engines.exports import find_exports
from ifengine.engines.build_plan import make_plan
from ifengine.engines.recipe import parse_recipe
from test_engines_fixtures import TARGET, export_tiny_vae, fake_engine_bytes

RECIPE = {"shapes": {"aspects": ["1:1", "4:3"]}, "components": {"vae_decoder": "fp32"}}


@pytest.fixture
def built(tmp_path):
    """A tiny exported VAE graph and its (fake-TensorRT) engine built through the real build path."""
    artifacts, out = tmp_path / "artifacts", tmp_path / "engines"
    export_tiny_vae(artifacts)
    plan = make_plan(parse_recipe(RECIPE, "mine.toml"), artifacts, out, exports=find_exports(artifacts))
    (result,) = build_plan(plan, TARGET, fake_engine_bytes, progress=False)
    return plan, result


def test_target_slug_names_gpu_architecture_and_tensorrt():
    assert TARGET.slug == "sm90-nvidia-h200-trt10.13.0.35"


def test_a_plan_made_before_export_is_completed_from_the_artifacts(tmp_path):
    from ifengine.engines.builder import complete_exports

    plan = make_plan(parse_recipe(RECIPE, "mine.toml"), tmp_path / "artifacts", tmp_path / "engines")
    assert plan.missing_exports() == [("vae_decoder", "fp32")]
    export_tiny_vae(tmp_path / "artifacts")
    done = complete_exports(plan, {}, None, None, progress=False)
    assert done.missing_exports() == [] and done.jobs[0].export.graph.is_file()


def test_the_key_changes_with_everything_that_changes_an_engine(built):
    plan, _ = built
    job = plan.jobs[0]
    base = cache_key(job.key_fields(), TARGET)
    assert base == cache_key(job.key_fields(), TARGET) and len(base) == 16
    changed = [
        {**job.key_fields(), "export_fingerprint": "f" * 64},
        {**job.key_fields(), "precision": "bf16"},
        {**job.key_fields(), "flags": {**job.flags.to_json(), "refittable": True}},
        {**job.key_fields(), "profile": {"latents": {"min": [1], "opt": [1], "max": [2]}}},
    ]
    targets = [
        replace(TARGET, tensorrt="11.1.0"),
        replace(TARGET, compute_capability="8.9"),
        replace(TARGET, gpu="NVIDIA H100"),
    ]
    keys = {cache_key(f, TARGET) for f in changed} | {cache_key(job.key_fields(), t) for t in targets}
    assert len(keys) == 7 and base not in keys


def test_build_writes_engine_manifest_and_index(built):
    plan, result = built
    assert result.built and result.engine.is_file()
    manifest = json.loads(result.engine.with_suffix(".json").read_text())
    export = plan.jobs[0].export
    assert manifest["graph_sha256"] == export.graph_sha256 and manifest["precision"] == "fp32"
    assert manifest["export_fingerprint"] == export.fingerprint and manifest["spec"]["name"] == "vae_decoder"
    assert manifest["target"] == TARGET.to_json() and manifest["engine_bytes"] == result.engine.stat().st_size
    assert manifest["profile"]["inputs"]["latents"]["max"] == [1, 4, 256, 352]  # 4:3 at stage II
    assert manifest["build_command"].startswith("ifengine build mine.toml") and manifest["build_seconds"] >= 0
    index = json.loads((result.engine.parent / "index.json").read_text())
    assert index["engines"]["vae_decoder"]["vae_decoder-fp32"]["manifest"] == result.engine.with_suffix(".json").name
    assert not list(result.engine.parent.glob(".*.tmp"))


def test_a_build_defines_the_engine_set_of_the_components_it_builds(built):
    plan, first = built
    static = make_plan(
        parse_recipe({**RECIPE, "build": {"static_shapes": True}}, "static.toml"),
        plan.artifacts,
        plan.out,
        exports=find_exports(plan.artifacts),
    )
    results = build_plan(static, TARGET, fake_engine_bytes, progress=False)
    listed = engine_manifests(plan.out, TARGET, "vae_decoder")
    assert sorted(listed) == sorted(r.engine.with_suffix(".json") for r in results) and len(listed) == 2
    assert first.engine.is_file()  # still cached, just not listed: rebuilding the first recipe is instant


def test_a_second_build_reuses_the_fresh_engine(built):
    plan, first = built
    calls = []
    (again,) = build_plan(plan, TARGET, lambda *a: calls.append(a) or b"x", progress=False)
    assert not again.built and again.engine == first.engine and calls == []


def test_concurrent_builds_of_one_engine_build_it_once(tmp_path):
    paths = engine_paths(tmp_path, TARGET, "unet1-fp16", "k" * 16)
    calls, results = [], []

    def slow_build():
        calls.append(1)
        time.sleep(0.3)
        return b"E" * 1000

    def worker():
        results.append(build_once(paths, "k" * 16, slow_build, lambda: {"component": "unet1"}))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(built for built, _ in results) == [False, False, True]
    assert paths.engine.read_bytes() == b"E" * 1000
    assert len({json.dumps(m, sort_keys=True) for _, m in results}) == 1


def test_a_failed_build_or_write_leaves_the_previous_engine_and_no_debris(tmp_path, monkeypatch):
    paths = engine_paths(tmp_path, TARGET, "unet1-fp16", "k" * 16)
    build_once(paths, "k" * 16, lambda: b"good", lambda: {})
    with pytest.raises(RuntimeError, match="TensorRT failed"):
        build_once(paths, "j" * 16, lambda: (_ for _ in ()).throw(RuntimeError("TensorRT failed")), lambda: {})

    def full_disk(fd):
        raise OSError("No space left on device")

    monkeypatch.setattr("ifengine.atomic.os.fsync", full_disk)  # fails after the bytes were written
    with pytest.raises(OSError, match="No space"):
        write_atomic(paths.engine, b"half-written replacement")
    assert paths.engine.read_bytes() == b"good" and not list(paths.engine.parent.glob(".*.tmp"))
    assert json.loads(paths.manifest.read_text())["key"] == "k" * 16


def test_a_good_engine_loads(built):
    _, result = built
    manifest, data = load_verified(result.engine.with_suffix(".json"), TARGET)
    assert data == result.engine.read_bytes() and manifest["component"] == "vae_decoder"
    assert engine_manifests(result.engine.parent.parent, TARGET, "vae_decoder") == [result.engine.with_suffix(".json")]


def _damage(result, how):
    engine, manifest = result.engine, result.engine.with_suffix(".json")
    if how == "flipped byte":
        data = bytearray(engine.read_bytes())
        data[10] ^= 0xFF
        engine.write_bytes(bytes(data))
    elif how == "truncated":
        engine.write_bytes(engine.read_bytes()[:-5])
    elif how == "engine deleted":
        engine.unlink()
    elif how == "manifest garbled":
        manifest.write_text(manifest.read_text()[:40])
    return manifest


@pytest.mark.parametrize(
    "how, message",
    [
        ("flipped byte", "sha256"),
        ("truncated", "truncated"),
        ("engine deleted", "missing"),
        ("manifest garbled", "unreadable"),
    ],
)
def test_corrupt_engines_are_rejected_with_the_build_command(built, how, message):
    _, result = built
    manifest = _damage(result, how)
    with pytest.raises(EngineCorrupt, match=message) as err:
        load_verified(manifest, TARGET)
    assert "ifengine build" in str(err.value)


@pytest.mark.parametrize(
    "other, what",
    [
        (replace(TARGET, tensorrt="11.1.0"), "TensorRT 10.13.0.35"),
        (replace(TARGET, compute_capability="8.9"), "compute capability 9.0"),
    ],
)
def test_foreign_engines_are_rejected(built, other, what):
    _, result = built
    with pytest.raises(EngineForeign, match=f"built for .*{what}.*run `ifengine build mine.toml"):
        load_verified(result.engine.with_suffix(".json"), other)


def test_same_architecture_other_board_only_warns(built, caplog):
    _, result = built
    load_verified(result.engine.with_suffix(".json"), replace(TARGET, gpu="NVIDIA H100"))
    assert any("H100" in r.getMessage() for r in caplog.records)


def test_an_engine_of_a_reexported_graph_is_stale(built, tmp_path):
    plan, result = built
    artifacts = tmp_path / "artifacts"
    export_tiny_vae(artifacts, channels_out=2)  # the model changed and was exported again
    current = find_exports(artifacts)[("vae_decoder", "fp32")]
    assert current.fingerprint != plan.jobs[0].export.fingerprint
    with pytest.raises(EngineStale, match="re-exported.*run `ifengine build"):
        load_verified(result.engine.with_suffix(".json"), TARGET, current.fingerprint)
    replan = make_plan(plan.recipe, artifacts, plan.out, exports=find_exports(artifacts))
    (rebuilt,) = build_plan(replan, TARGET, fake_engine_bytes, progress=False)
    assert rebuilt.built and rebuilt.engine != result.engine  # a new key, the old engine untouched
    load_verified(rebuilt.engine.with_suffix(".json"), TARGET, current.fingerprint)


def test_new_external_weights_make_an_engine_stale_even_with_the_same_graph_file(built):
    plan, result = built
    manifest_path = plan.jobs[0].export.manifest
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["model.onnx.data"] = {"size": 10, "sha256": "a" * 64}  # weights outside model.onnx changed
    manifest_path.write_text(json.dumps(manifest))
    current = find_exports(plan.artifacts)[("vae_decoder", "fp32")]
    assert current.graph_sha256 == plan.jobs[0].export.graph_sha256
    with pytest.raises(EngineStale):
        load_verified(result.engine.with_suffix(".json"), TARGET, current.fingerprint)


def test_missing_and_foreign_engine_folders_name_the_fix(built, tmp_path):
    _, result = built
    out = result.engine.parent.parent
    with pytest.raises(EngineMissing, match="has no unet1 engine: run `ifengine build mine.toml"):
        engine_manifests(out, TARGET, "unet1")
    with pytest.raises(EngineForeign, match="only for sm90-nvidia-h200-trt10.13.0.35"):
        engine_manifests(out, Target("NVIDIA GeForce RTX 4090", "8.9", "10.13.0.35"), "vae_decoder")
    with pytest.raises(EngineMissing, match="no TensorRT engines in"):
        engine_manifests(tmp_path / "empty", TARGET, "vae_decoder")
    with pytest.raises(EngineMissing, match="is missing"):
        load_verified(out / TARGET.slug / "nothing.json", TARGET)


def test_engine_errors_name_the_folders_in_use_now_not_those_of_the_build(built, tmp_path):
    """Engines and graphs moved since the build: the hint names today's --artifacts/--out (and the recipe)."""
    plan, result = built
    moved_out, moved_art = tmp_path / "moved-engines", tmp_path / "moved-artifacts"
    result.engine.parent.parent.rename(moved_out)
    Path(plan.artifacts).rename(moved_art)
    manifest = moved_out / TARGET.slug / result.engine.with_suffix(".json").name
    with pytest.raises(EngineForeign) as err:
        load_verified(manifest, replace(TARGET, tensorrt="11.1.0"), artifacts=moved_art)
    assert f"run `ifengine build mine.toml --artifacts {moved_art} --out {moved_out}`" in str(err.value)
    assert str(plan.out) not in str(err.value)


def test_a_garbled_index_names_the_build_that_remakes_it(built):
    _, result = built
    out = result.engine.parent.parent
    (result.engine.parent / "index.json").write_text('{"engines": ')
    with pytest.raises(EngineCorrupt, match=rf"unreadable .*: run `ifengine build RECIPE --out {out}`"):
        engine_manifests(out, TARGET, "vae_decoder")
    (result.engine.parent / "index.json").write_text('["not", "an", "index"]')
    with pytest.raises(EngineCorrupt, match="is not an ifengine index: run `ifengine build"):
        engine_manifests(out, TARGET, "vae_decoder")


def test_engines_carry_the_run_defaults_and_precision_of_their_export(tmp_path):
    from ifengine.backends.tensorrt.load import built_precision_of, engine_run_defaults, verify_engines
    from ifengine.stage.options import RunDefaults

    artifacts, out = tmp_path / "artifacts", tmp_path / "engines"
    export_manifest = export_tiny_vae(artifacts)
    raw = json.loads(export_manifest.read_text())
    raw.update(stage=3, run_defaults={"steps": 7, "guidance": 3.0, "noise_level": 30})  # as export records them
    export_manifest.write_text(json.dumps(raw))
    plan = make_plan(parse_recipe(RECIPE, "mine.toml"), artifacts, out, exports=find_exports(artifacts))
    (result,) = build_plan(plan, TARGET, fake_engine_bytes, progress=False)
    manifest = json.loads(result.engine.with_suffix(".json").read_text())
    assert manifest["run_defaults"] == raw["run_defaults"] and manifest["stage"] == 3
    verified = verify_engines(out, ["vae_decoder"], TARGET, artifacts)
    assert engine_run_defaults(verified, {}, {}) == RunDefaults(
        steps=(100, 50, 7), guidance=(7.0, 4.0, 3.0), noise_level=(250, 30)
    )
    assert built_precision_of(verified) == "fp32"  # so generate --engines without --dtype runs fp32
