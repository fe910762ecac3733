"""Artifacts: manifests, up-to-date checks, atomic replacement, external data, bad input, the CLI."""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

import ifengine
from ifengine.cli import main
from ifengine.export import api, onnx_export
from ifengine.export.api import export_artifacts
from ifengine.export.hashing import sha256_file
from ifengine.export.manifest import ArtifactError, ManifestError, read_manifest
from ifengine.export.onnx_export import gather_external_data
from ifengine.export.spec import ComponentSpec
from ifengine.models.checkpoint import CheckpointError
from ifengine.backends.onnxruntime.session import OrtGraph


def _export_unet1(stage1_dir, out, **kw):
    (path,) = export_artifacts({1: stage1_dir}, out, components=["unet1"], precisions=["fp32"], progress=False, **kw)
    return path


def _payloads(manifest_path):
    return sorted(p.name for p in manifest_path.parent.iterdir() if p.is_dir())


def test_manifest_records_what_the_graph_is_and_where_it_came_from(exports):
    root = exports.get("fp32")
    for path in sorted(root.glob("*/fp32/manifest.json")):
        m = read_manifest(path)
        assert m["component"] == path.parent.parent.name and m["precision"] == "fp32"
        assert m["graph_sha256"] == sha256_file(path.parent / m["graph"])
        assert all((path.parent / name).stat().st_size == f["size"] for name, f in m["files"].items())
        assert len(m["source_sha256"]) == len(m["checkpoint_sha256"]) == 64
        assert m["opset"] == 19 and "TorchScript" in m["exporter"]["name"]
        assert m["ifengine_version"] == ifengine.__version__
        assert ComponentSpec.from_dict(m["spec"]).name == m["component"]
        assert m["config"] and m["stage"] in (1, 2, 3)
    with pytest.raises(ManifestError, match="no manifest"):
        read_manifest(root / "nothing" / "fp32")


def test_up_to_date_artifacts_are_not_exported_again(stage1_dir, tmp_path, monkeypatch):
    first = _export_unet1(stage1_dir, tmp_path)
    before = (first.stat().st_mtime_ns, _payloads(first))
    monkeypatch.setattr(api, "trace_to_onnx", lambda *a, **k: pytest.fail("an up-to-date artifact was exported"))
    assert _export_unet1(stage1_dir, tmp_path) == first
    assert (first.stat().st_mtime_ns, _payloads(first)) == before


def _changed_copy(stage1_dir, dest):
    """A copy of the checkpoint with one U-Net weight changed."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(stage1_dir, dest)
    weights = dest / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["conv_in.bias"] = state["conv_in.bias"] + 1
    save_file(state, weights)
    return dest


def test_changed_weights_or_version_export_again_and_replace_the_old(stage1_dir, tmp_path):
    out = tmp_path / "art"
    first = read_manifest(_export_unet1(stage1_dir, out))
    changed = _changed_copy(stage1_dir, tmp_path / "changed")
    path = _export_unet1(changed, out)
    second = read_manifest(path)
    assert second["source_sha256"] != first["source_sha256"] and second["graph"] != first["graph"]
    assert _payloads(path) == [second["graph"].split("/")[0]]  # the old payload is gone
    stale = {**second, "ifengine_version": "0.0.0"}
    path.write_text(json.dumps(stale))
    assert read_manifest(_export_unet1(changed, out))["ifengine_version"] == ifengine.__version__


def test_interrupted_export_leaves_the_old_artifact_intact(stage1_dir, tmp_path, monkeypatch):
    out = tmp_path / "art"
    path = _export_unet1(stage1_dir, out)
    old = path.read_bytes()
    killed = path.parent / ".tmp-deadbeef0000"  # what a killed export leaves behind
    killed.mkdir()
    (killed / "model.onnx").write_bytes(b"partial")

    def interrupted(graph, spec):
        assert graph.exists()  # the new graph is written, not yet published
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "check_graph", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _export_unet1(_changed_copy(stage1_dir, tmp_path / "changed"), out)
    assert path.read_bytes() == old
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".tmp-")] == []
    OrtGraph(path)  # the old artifact still loads and checks out


def test_not_a_checkpoint_is_a_clear_error(stage2_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a diffusers checkpoint folder"):
        export_artifacts({1: tmp_path / "empty"}, tmp_path / "art")
    with pytest.raises(CheckpointError, match="given as stage I"):
        export_artifacts({1: stage2_dir}, tmp_path / "art")
    with pytest.raises(CheckpointError, match="needs a stage 1 checkpoint"):
        export_artifacts({2: stage2_dir}, tmp_path / "art", components=["t5"])
    with pytest.raises(ValueError, match="unknown precision"):
        export_artifacts({2: stage2_dir}, tmp_path / "art", precisions=["fp8"])
    assert not (tmp_path / "art").exists() or not any((tmp_path / "art").rglob("*.onnx"))


@pytest.fixture
def external(stage1_dir, tmp_path, monkeypatch):
    """unet1 exported with its weights in an external data file (threshold lowered from 2 GB)."""
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 1024)
    path = _export_unet1(stage1_dir, tmp_path / "art")
    m = read_manifest(path)
    graph, data = path.parent / m["graph"], path.parent / (m["graph"] + ".data")
    assert m["external_data"] and data.stat().st_size > 2 * graph.stat().st_size
    return path, data


def test_external_data_graph_runs_and_damage_is_detected(external, stage1_dir):
    path, data = external
    graph = OrtGraph(path)
    gen = torch.Generator().manual_seed(0)
    out = graph(
        sample=torch.randn(2, 3, 16, 16, generator=gen),
        timestep=torch.tensor([3.0, 3.0]),
        encoder_hidden_states=torch.randn(2, 77, 32, generator=gen),
    )
    assert out.shape == (2, 6, 16, 16) and torch.isfinite(out).all()
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF  # same size, different bytes: only a hash check sees it
    data.write_bytes(bytes(raw))
    OrtGraph(path, verify="size")
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        OrtGraph(path)  # the default: hashes, cached by size and mtime (the write changed the mtime)
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        OrtGraph(path, verify="full")
    data.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(ArtifactError, match="truncated"):
        OrtGraph(path)
    data.unlink()
    with pytest.raises(ArtifactError, match="is missing"):
        OrtGraph(path)
    repaired = _export_unet1(stage1_dir, path.parent.parent.parent)  # a damaged artifact is not up to date
    OrtGraph(repaired, verify="hash")


def test_per_tensor_external_files_are_gathered_into_one(tmp_path):
    """What torch writes past 2 GB (one file per tensor) becomes model.onnx + model.onnx.data."""
    import onnxruntime as ort

    w = onnx.numpy_helper.from_array(np.arange(6000, dtype=np.float32).reshape(60, 100), "w")
    node = onnx.helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [onnx.helper.make_tensor_value_info("x", 1, [2, 60])],
        [onnx.helper.make_tensor_value_info("y", 1, [2, 100])],
        [w],
    )
    path = tmp_path / "model.onnx"
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 19)], ir_version=9)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0)
    assert len(list(tmp_path.iterdir())) == 2 and not (tmp_path / "model.onnx.data").exists()
    gather_external_data(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    x = np.ones((2, 60), np.float32)
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(out, x @ np.arange(6000, dtype=np.float32).reshape(60, 100))


def test_cli_exports_and_reports_bad_input(stage3_dir, tmp_path, capsys):
    out = tmp_path / "art"
    args = [
        "export",
        "--stage3",
        str(stage3_dir),
        "--out",
        str(out),
        "--components",
        "clip,vae_decoder",
        "--precision",
        "fp32",
        "--quiet",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [
        str(out / "clip" / "fp32" / "manifest.json"),
        str(out / "vae_decoder" / "fp32" / "manifest.json"),
    ]
    assert main(["export", "--stage1", str(tmp_path), "--out", str(out)]) == 2
    assert "not a diffusers checkpoint folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["export", "--stage3", str(stage3_dir), "--out", str(out), "--components", "unet9"])
    assert done.value.code == 2  # argparse's usage error, not a crash
    assert "choose from" in capsys.readouterr().err
