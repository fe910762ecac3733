"""What a fresh install checks before it runs: ONNX Runtime providers and devices, missing extras, both
ONNX Runtime packages at once, and exported graphs' content hashes (cached by size and mtime)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ifengine.atomic import replacing_folder
from ifengine.backends.onnxruntime.session import OrtGraph, ProviderError, check_providers
from ifengine.cli import main
from ifengine.errors import MissingExtra, missing_extra, require_extra
from ifengine.export.manifest import ArtifactError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("requested, missing", [("cuda", "CUDAExecutionProvider"), ("tensorrt", "Tensorrt")])
def test_missing_providers_are_refused_before_loading_with_the_available_ones(requested, missing, tmp_path, capsys):
    import onnxruntime as ort

    if missing in " ".join(ort.get_available_providers()):
        pytest.skip(f"this ONNX Runtime has {missing}")
    # nothing exists under tmp_path: the providers are checked before any graph is looked for
    assert (
        main(
            [
                "generate",
                "a cat",
                "--artifacts",
                str(tmp_path),
                "--providers",
                requested,
                "--out",
                str(tmp_path / "x.png"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"has no {missing}" in err and "available: " in err and "CPUExecutionProvider" in err
    assert "onnxruntime-gpu" in err  # how to get them


def test_a_gpu_provider_needs_a_cuda_device_torch_can_see(monkeypatch):
    import onnxruntime as ort
    import torch

    # this ORT claims CUDA (as onnxruntime-gpu on a GPU-less host does): the device is what is missing
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ProviderError, match=f"cuda:{count}, but torch sees"):
        check_providers([("CUDAExecutionProvider", {"device_id": count})])
    check_providers(["CPUExecutionProvider"])


def test_a_missing_extra_names_the_pip_install():
    err = missing_extra("onnx", "export", "exporting graphs")
    assert isinstance(err, ImportError)
    assert str(err).startswith('exporting graphs needs onnx, which is not installed: pip install "ifengine[export]"')
    assert "ifengine[gpu]" in str(err)  # the GPU machine's alternative
    with pytest.raises(MissingExtra, match=r'pip install "ifengine\[serve\]"'):
        require_extra(("json", "surely_not_a_module_here"), "serve", "serving")
    require_extra(("json",), "serve", "serving")


def _fake_distribution(folder: Path, name: str, version: str) -> None:
    info = folder / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_info_system_warns_when_both_onnxruntime_packages_are_installed(tmp_path):
    from ifengine.installed import version_of

    present = [n for n in ("onnxruntime", "onnxruntime-gpu") if version_of(n)]
    if len(present) != 1:
        pytest.skip("needs exactly one ONNX Runtime package installed")
    other = "onnxruntime-gpu" if present == ["onnxruntime"] else "onnxruntime"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "ifengine.cli", "info", "--system"]
    clean = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert clean.returncode == 0 and f"{present[0]}: " in clean.stdout and "both installed" not in clean.stderr
    _fake_distribution(tmp_path, other, "1.20.0")  # its metadata, as pip leaves it beside the other one
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{tmp_path}"
    both = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert both.returncode == 0 and f"{other}: 1.20.0" in both.stdout
    assert "are both installed" in both.stderr and "pip uninstall -y onnxruntime onnxruntime-gpu" in both.stderr


def test_a_flipped_byte_in_a_graph_is_refused_in_one_line_and_export_repairs_it(exports, tmp_path, capsys):
    from ifengine.export.hashing import HashCache

    art = exports.copy(tmp_path / "art", "fp32")
    manifest = art / "unet1" / "fp32" / "manifest.json"
    OrtGraph(manifest)  # hashes once and remembers the digest under the file's size and mtime
    import json

    graph = manifest.parent / json.loads(manifest.read_text())["graph"]
    cache = HashCache(art / ".hash-cache.json")
    assert cache._entries[str(graph.resolve())]["size"] == graph.stat().st_size
    raw = bytearray(graph.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # same size
    graph.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="does not match the sha256 its manifest records") as err:
        OrtGraph(manifest)
    assert "\n" not in str(err.value) and "export the artifact again" in str(err.value)
    # the fix the message names works: export sees the damage (not "up to date") and replaces the graph
    stage1 = f"--stage1={exports.stages[1]}"
    assert main(["export", stage1, "--components", "unet1", "--precision", "fp32", "--out", str(art), "--quiet"]) == 0
    OrtGraph(manifest)


def test_an_unchanged_graph_is_not_hashed_again(exports, tmp_path, monkeypatch):
    import ifengine.export.hashing as hashing

    art = exports.copy(tmp_path / "art", "fp32")
    manifest = art / "vae_decoder" / "fp32" / "manifest.json"
    OrtGraph(manifest)
    calls = []
    real = hashing.sha256_file
    monkeypatch.setattr(hashing, "sha256_file", lambda path: calls.append(path) or real(path))
    OrtGraph(manifest)
    assert calls == []  # served from the cache: same size and mtime
    os.utime(next(manifest.parent.glob("*/model.onnx")), ns=(1, 1))  # touched: hashed again
    OrtGraph(manifest)
    assert len(calls) == 1


def test_replacing_folder_publishes_whole_folders_only(tmp_path):
    target = tmp_path / "ckpt"
    with pytest.raises(RuntimeError), replacing_folder(target) as tmp:
        (tmp / "half.json").write_text("{")
        raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    target.mkdir()
    (target / "stale").write_text("from a crash")
    with replacing_folder(target) as tmp:
        (tmp / "model_index.json").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == ["model_index.json"]
    with replacing_folder(target, done=lambda p: (p / "model_index.json").is_file()) as tmp:
        (tmp / "other").write_text("x")
    assert sorted(p.name for p in target.iterdir()) == ["model_index.json"]  # another writer finished first
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
