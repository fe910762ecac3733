"""Damaged files on disk give one line that names the file and what to do; the CLI checks flags first.

Each test damages a copy of one demo checkpoint folder (or one exported graph) the way a broken download
or a full disk does: cut in half, or overwritten with zeros; or valid JSON with the wrong content."""

import shutil

import pytest

from ifengine import Cascade
from ifengine.cli import main
from ifengine.errors import DamagedFileError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo_dirs(demo_env):
    from ifengine.demo import demo_checkpoints

    return demo_checkpoints()


def _damaged(demo_dirs, tmp_path, stage: str, rel: str, how: str):
    root = shutil.copytree(demo_dirs[stage], tmp_path / stage)
    path = root / rel
    data = path.read_bytes()
    payload = {"half": data[: len(data) // 2], "zeros": bytes(len(data)), "empty-json": b"{}", "list": b"[1]"}
    path.write_bytes(payload[how])
    return root, path


CASES = [
    ("stage1", "unet/diffusion_pytorch_model.safetensors", "half"),
    ("stage1", "unet/diffusion_pytorch_model.safetensors", "zeros"),
    ("stage1", "unet/config.json", "half"),
    ("stage1", "unet/config.json", "empty-json"),
    ("stage1", "model_index.json", "list"),
    ("stage1", "scheduler/scheduler_config.json", "half"),
    ("stage1", "text_encoder/model.safetensors", "half"),
    ("stage1", "tokenizer/spiece.model", "zeros"),
    ("stage3", "vae/diffusion_pytorch_model.safetensors", "half"),
    ("stage3", "tokenizer/merges.txt", "zeros"),
]


@pytest.mark.parametrize("stage, rel, how", CASES, ids=[f"{s}/{r}:{h}" for s, r, h in CASES])
def test_a_damaged_checkpoint_file_is_one_value_error_naming_it(demo_dirs, tmp_path, stage, rel, how):
    root, path = _damaged(demo_dirs, tmp_path, stage, rel, how)
    with pytest.raises(DamagedFileError) as err:
        Cascade.from_pretrained(**{stage: root})
    message = str(err.value)
    named = path if path.suffix in (".safetensors", ".json") else path.parent  # tokenizers: their folder
    assert str(named) in message and "download the checkpoint again" in message
    assert isinstance(err.value, ValueError) and "\n" not in message


def test_the_cli_reports_a_truncated_weights_file_in_one_line(demo_dirs, tmp_path, capsys):
    root, path = _damaged(demo_dirs, tmp_path, "stage1", "unet/diffusion_pytorch_model.safetensors", "half")
    out = tmp_path / "a.png"
    assert main(["generate", "x", "--stage1", str(root), "--steps", "1", "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()  # transformers' own "Loading weights" bar may come first
    (line,) = [line for line in err.splitlines() if "error" in line]
    assert line.startswith("ifengine: error:") and str(path) in line and err.endswith(line)
    assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--height", "63"], "Nearest valid heights: 60, 64"),
        (["--steps", "0"], "steps must be a whole number >= 1"),
        (["--guidance", "nan"], "guidance must be a finite number"),
        (["--noise-level", "5000"], "noise_level must be a whole number in"),
        (["--num-images", "0"], "num_images_per_prompt must be a whole number >= 1"),
        (["--last-stage", "2"], "--last-stage 2 needs stage 2"),
        (["--image", "missing.png"], "image file missing.png does not exist"),
        (["--strength", "1.5", "--image", "SRC"], "--strength (stage 1) must be a number in (0, 1]"),
        (["--image", "SRC", "--mask", "WIDE"], "their aspect ratios differ"),
    ],
)
def test_flag_errors_come_before_any_weights_file_is_opened(demo_dirs, tmp_path, capsys, flags, message):
    from PIL import Image

    root = shutil.copytree(demo_dirs["stage1"], tmp_path / "stage1")
    (root / "unet" / "diffusion_pytorch_model.safetensors").unlink()  # loading would fail: flags must fail first
    (root / "text_encoder" / "model.safetensors").write_bytes(b"")
    Image.new("RGB", (32, 32)).save(tmp_path / "src.png")
    Image.new("L", (64, 16), 255).save(tmp_path / "wide.png")
    flags = [
        str(tmp_path / "src.png") if f == "SRC" else str(tmp_path / "wide.png") if f == "WIDE" else f for f in flags
    ]
    out = tmp_path / "a.png"
    assert main(["generate", "x", "--stage1", str(root), "--quiet", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "safetensors" not in err
    assert not out.exists()


def test_a_damaged_exported_graph_or_manifest_names_the_file_and_says_export_again(stage1_dir, tmp_path):
    from ifengine.backends.onnxruntime.session import OrtGraph
    from ifengine.export.api import export_artifacts
    from ifengine.export.manifest import ArtifactError, ManifestError, read_manifest

    (manifest,) = export_artifacts({1: stage1_dir}, tmp_path, components=["unet1"], precisions=["fp32"], progress=False)
    graph = manifest.parent / read_manifest(manifest)["graph"]
    raw = graph.read_bytes()
    graph.write_bytes(bytes(len(raw)))  # same size: passes the size check, ONNX Runtime cannot parse it
    with pytest.raises(ArtifactError) as err:
        OrtGraph(manifest)
    assert str(graph) in str(err.value) and "export the artifact again" in str(err.value)
    assert "\n" not in str(err.value)
    graph.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ArtifactError, match="truncated"):
        OrtGraph(manifest)
    manifest.write_text(manifest.read_text()[:40])
    with pytest.raises(ManifestError) as err:
        OrtGraph(manifest)
    assert str(manifest) in str(err.value) and "export the artifact again" in str(err.value)
