"""One set of defaults per model source: what a checkpoint records (model_index.json, "ifengine") is what
its cascade, its exported graphs and its engines run with, and the precision of exported graphs is what
was exported. References: the torch cascade of the same checkpoints with the same settings spelled out."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import ifengine
from ifengine.cli import main
from ifengine.errors import DamagedFileError
from ifengine.models.checkpoint import RUN_DEFAULTS_KEY, read_run_defaults
from ifengine.stage.options import RunDefaults

RECORDED = {1: {"steps": 3, "guidance": 5.0}, 2: {"steps": 2, "noise_level": 100}, 3: {"steps": 2, "guidance": 2.0}}
COMMON = ["generate", "a red cat", "--seed", "4", "--quiet", "--no-safety"]


def _record(folder, entry):
    index = json.loads((folder / "model_index.json").read_text())
    index[RUN_DEFAULTS_KEY] = entry
    (folder / "model_index.json").write_text(json.dumps(index))


@pytest.fixture(scope="module")
def recording(tmp_path_factory, stage1_dir, stage2_dir, stage3_dir):
    """Copies of the tiny checkpoints that record their own run defaults."""
    root = tmp_path_factory.mktemp("recording")
    out = {}
    for n, src in ((1, stage1_dir), (2, stage2_dir), (3, stage3_dir)):
        out[n] = shutil.copytree(src, root / f"stage{n}")
        _record(out[n], RECORDED[n])
    return out


def test_the_demo_checkpoints_record_the_demo_defaults():
    from ifengine.demo import demo_checkpoints
    from ifengine.demo.build import DEMO_DEFAULTS_STEPS

    paths = demo_checkpoints()
    for n in (1, 2, 3):
        assert read_run_defaults(paths[f"stage{n}"]) == {"steps": DEMO_DEFAULTS_STEPS[n - 1], "precision": "fp32"}


def test_a_checkpoint_without_or_with_bad_defaults(stage1_dir, tmp_path):
    assert read_run_defaults(stage1_dir) == {}
    bad = shutil.copytree(stage1_dir, tmp_path / "bad")
    _record(bad, {"steps": "many"})
    with pytest.raises(DamagedFileError, match=r"ifengine.steps = 'many' is not a run default \(steps, guidance"):
        read_run_defaults(bad)


def test_from_pretrained_runs_with_what_the_checkpoints_record(recording, stage1_dir, stage2_dir, stage3_dir):
    pipe = ifengine.Cascade.from_pretrained(*recording.values(), safety=False)
    assert pipe.defaults == RunDefaults(steps=(3, 2, 2), guidance=(5.0, 4.0, 2.0), noise_level=(100, 20))
    plain = ifengine.Cascade.from_pretrained(stage1_dir, stage2_dir, stage3_dir, safety=False)
    assert plain.defaults == RunDefaults()
    run = dict(seed=1, output_type="pt", progress=False, last_stage=2)
    spelled = plain("a cat", steps=(3, 2, 2), guidance=(5.0, 4.0, 2.0), noise_level=(100, 20), **run)
    assert (pipe("a cat", **run).stages[1] - spelled.stages[1]).abs().max().item() == 0


def test_export_records_the_defaults_and_the_recorded_precision(recording, tmp_path):
    """No --precision: the checkpoint's recorded precision (fp32 here), not fp16."""
    _record(recording[1], {**RECORDED[1], "precision": "fp32"})
    try:
        assert main(["export", "--stage1", str(recording[1]), "--components", "unet1", "--out", str(tmp_path)]) == 0
    finally:
        _record(recording[1], RECORDED[1])
    manifest = json.loads((tmp_path / "unet1" / "fp32" / "manifest.json").read_text())
    assert manifest["run_defaults"] == {"steps": 3, "guidance": 5.0} and manifest["stage"] == 1
    assert not (tmp_path / "unet1" / "fp16").exists()


@pytest.fixture(scope="module")
def graphs(exports, tmp_path_factory):
    """The tiny cascade's fp32 graphs as if exported from ``recording``: their manifests carry its defaults."""
    root = exports.copy(tmp_path_factory.mktemp("graphs") / "art", "fp32")
    for manifest_path in root.glob("*/*/manifest.json"):
        if manifest_path.parent.name != "fp32":
            shutil.rmtree(manifest_path.parent)
            continue
        manifest = json.loads(manifest_path.read_text())
        full = {**RunDefaults().__dict__}
        stage = manifest["stage"]
        record = {"steps": full["steps"][stage - 1], "guidance": full["guidance"][stage - 1], **RECORDED[stage]}
        if stage > 1:
            record.setdefault("noise_level", full["noise_level"][stage - 2])
        manifest["run_defaults"] = record
        manifest_path.write_text(json.dumps(manifest))
    return root


def test_generate_from_graphs_uses_their_defaults_and_precision(graphs, stage1_dir, stage2_dir, stage3_dir, tmp_path):
    """`generate --artifacts` with no other flags = the checkpoints with the recorded settings spelled out;
    no --dtype on a CPU with only fp32 graphs, and the picture is the same (<= 1/255)."""
    pipe = ifengine.Cascade.from_artifacts(graphs)
    assert pipe.defaults == RunDefaults(steps=(3, 2, 2), guidance=(5.0, 4.0, 2.0), noise_level=(100, 20))
    ckpts = ["--stage1", str(stage1_dir), "--stage2", str(stage2_dir), "--stage3", str(stage3_dir)]
    spelled = ["--steps", "3,2,2", "--guidance", "5,4,2", "--noise-level", "100,20"]
    assert main(COMMON + ckpts + spelled + ["--out", str(tmp_path / "torch.png")]) == 0
    assert main(COMMON + ["--artifacts", str(graphs), "--out", str(tmp_path / "ort.png")]) == 0
    a = np.asarray(Image.open(tmp_path / "torch.png"), np.int16)
    b = np.asarray(Image.open(tmp_path / "ort.png"), np.int16)
    assert a.shape == b.shape and np.abs(a - b).max() <= 1
    # --from an image made from the graphs, with the graphs: no --stage flags appear, same picture
    assert main(COMMON[:1] + ["--from", str(tmp_path / "ort.png"), "--artifacts", str(graphs), "--out",
                str(tmp_path / "again.png"), "--quiet"]) == 0  # fmt: skip
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again.png"), np.int16), b)


def test_the_precision_of_graphs_is_what_was_exported(exports, tmp_path):
    from ifengine.backends.onnxruntime.load import exported_precision

    only16 = exports.copy(tmp_path / "art", "fp16")
    for folder in only16.glob("*/*"):
        if folder.is_dir() and folder.name != "fp16":
            shutil.rmtree(folder)
    assert exported_precision(only16) == "fp16" and exported_precision(only16, gpu=True) == "fp16"
    assert ifengine.Cascade.from_artifacts(only16).dtype == __import__("torch").float16  # no "no fp32 graphs"
    assert exported_precision(exports.get("fp32")) == "fp32" and exported_precision(exports.root, gpu=True) == "fp16"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no exported graphs under .*run `ifengine export --out"):
        exported_precision(tmp_path / "empty")
