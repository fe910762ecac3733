"""Benchmark harness smoke tests: CI-sized runs of every CPU-capable path; outputs must be well formed.

Nothing here asserts a duration: the figures live in benchmarks/RESULTS.md, written by the benchmarks.
"""

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch

from ifengine.bench import timing
from ifengine.bench.cascade import CascadeBenchConfig, run_cascade_bench, write_cascade_results
from ifengine.bench.checkpoints import build_checkpoints, cascade_spec
from ifengine.bench.host import HostConfig, run_host_overhead, write_host_results
from ifengine.bench.machine import NoCudaError
from ifengine.bench.memory import MemoryBenchConfig, run_memory_bench, write_memory_results
from ifengine.cli import main

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("host_overhead", "cascade", "memory", "flops", "checkpoints")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add overhead


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    return build_checkpoints(cascade_spec("tiny"), tmp_path_factory.mktemp("bench_ckpt"), progress=False)


def assert_outputs(paths: dict, keys: set, table_header: str):
    payload = json.loads(paths["json"].read_text())
    assert keys <= set(payload), f"missing keys {keys - set(payload)}"
    assert {"date_utc", "versions", "cpu", "git"} <= set(payload["machine"])
    assert payload["command"]
    table = paths["md"].read_text()
    assert table_header in table and "|---" in table
    if "png" in paths:
        assert paths["png"].read_bytes().startswith(PNG_MAGIC)
    return payload


def test_stats_and_alternation_order():
    stats = timing.Stats.of([3.0, 1.0, 2.0, 10.0])
    assert stats.median == 2.5 and stats.min == 1.0 and stats.max == 10.0 and stats.n == 4
    order = []
    runs = {name: (lambda name=name: order.append(name) or {"t": 1.0}) for name in "AB"}
    samples = timing.alternate(runs, repeats=2, warmup=1, progress=False)
    assert order == ["A", "B", "A", "B", "B", "A"]  # warm-up, then ABBA
    assert samples["A"]["t"] == [1.0, 1.0]
    assert timing.per_step([5.0], [1.0], 4) == [1.0]


def test_host_overhead_smoke(tmp_path):
    config = HostConfig(short_steps=1, long_steps=2, repeats=1, warmup=0, unet_calls=1)
    payload = run_host_overhead(config, progress=False)
    paths = write_host_results(payload, tmp_path)
    payload = assert_outputs(paths, {"wall", "cpu", "target", "config", "checkpoint"}, "| system | wall / step")
    for clock in ("wall", "cpu"):
        assert set(payload[clock]["per_step"]) == set(config.systems)
        assert set(payload[clock]["ratio_to_diffusers"]) == {"ifengine-eager", "ifengine-traced"}
        assert {"diffusers", "ifengine-eager"} == set(payload[clock]["unet_call"])
        assert set(payload["target"][clock]) == {"max_ratio", "system", "ratio", "met"}


def test_cascade_smoke_on_cpu(tmp_path, tiny_checkpoints):
    config = CascadeBenchConfig(
        preset="tiny",
        device="cpu",
        dtypes=("float32", "int8"),
        batches=(1,),
        steps=(2, 1, 1),
        repeats=1,
        warmup=0,
        checkpoints=str(tiny_checkpoints["stage1"].parent),
        systems=("ifengine-eager", "ifengine-traced", "ifengine-graphs", "diffusers-eager"),
    )
    paths = write_cascade_results(run_cascade_bench(config, progress=False), tmp_path)
    payload = assert_outputs(paths, {"runs", "flops", "matmul_peak", "skipped"}, "| dtype | batch | system |")
    (entry,) = payload["runs"]
    assert set(entry["stats"]) == set(config.systems)
    assert set(entry["stats"]["diffusers-eager"]) == {"T5", "I", "II", "III", "total"}
    assert all(v > 0 for v in entry["images_per_s"].values()) and set(entry["mfu"]) == set(config.systems)
    assert payload["skipped"] and "int8" in payload["skipped"][0]


def test_memory_smoke_on_cpu(tmp_path, tiny_checkpoints):
    config = MemoryBenchConfig(
        preset="tiny",
        device="cpu",
        dtype="float32",
        vram=(),
        steps=(1, 1, 1),
        checkpoints=str(tiny_checkpoints["stage1"].parent),
        systems=("ifengine-eager", "ifengine-graphs", "ifengine-graphs-int8"),
    )
    paths = write_memory_results(run_memory_bench(config, progress=False), tmp_path)
    payload = assert_outputs(paths, {"results"}, "| budget (GiB) | system |")
    assert [e["system"] for e in payload["results"]] == list(config.systems)
    for entry in payload["results"]:
        assert entry["status"] == "ok" and entry["peaks"] == {} and entry["seconds"]["total"] > 0
    with pytest.raises(ValueError, match="--vram"):
        run_memory_bench(MemoryBenchConfig(preset="tiny", device="cpu", vram=(8.0,)), progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_gpu_benchmarks_fail_clearly_without_cuda(capsys):
    with pytest.raises(NoCudaError, match="--device cpu"):
        run_cascade_bench(CascadeBenchConfig(), progress=False)
    assert main(["bench", "memory"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_both_systems_load_the_same_weights(tiny_checkpoints):
    from diffusers import UNet2DConditionModel

    import ifengine

    ours = ifengine.Cascade.from_pretrained(tiny_checkpoints["stage1"], variant="fp16", safety=False).stage1.unet
    theirs = UNet2DConditionModel.from_pretrained(tiny_checkpoints["stage1"] / "unet", variant="fp16")
    mine = ours.state_dict()
    assert set(mine) == set(theirs.state_dict())
    assert all(torch.equal(mine[k], v) for k, v in theirs.state_dict().items())


@pytest.mark.parametrize("name", ["IF-I-XL", "IF-II-L", "x4-upscaler", "x4-vae"])
def test_full_size_layouts_match_diffusers(name):
    """What the full-size builder writes for our modules is exactly what diffusers' classes expect."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from ifengine.demo.build import unet_config_json, vae_config_json
    from ifengine.models.if_unet import IFUNet
    from ifengine.models.presets import unet_preset, vae_preset
    from ifengine.models.vae import VAEDecoder
    from ifengine.models.weights import build_on_meta
    from ifengine.models.x4_unet import X4UNet

    if name == "x4-vae":
        config = vae_preset(name)
        ours = build_on_meta(lambda: VAEDecoder(config)).state_dict()
        theirs = build_on_meta(lambda: AutoencoderKL.from_config(vae_config_json(config))).state_dict()
        theirs = {k: v for k, v in theirs.items() if k in ours}  # the cascade never runs the encoder
    else:
        config = unet_preset(name)
        cls = X4UNet if name.startswith("x4") else IFUNet
        ours = build_on_meta(lambda: cls(config)).state_dict()
        theirs = build_on_meta(lambda: UNet2DConditionModel.from_config(unet_config_json(config))).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_show_help(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [f"benchmarks/{script}.py", "--help"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(REPO / "benchmarks" / f"{script}.py"), run_name="__main__")
    assert exit_.value.code == 0
    assert "usage: ifengine bench" in capsys.readouterr().out
