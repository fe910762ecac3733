"""GPU-only checks of the runtime (skipped without CUDA), and the GPU check script's no-CUDA message."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ifengine.bench.ulps import max_ulps
from ifengine.runtime import configure
from ifengine.bench.fullsize import move_to, random_cascade
from ifengine.memory.workload import Workload
from ifengine.runtime.throughput import run_throughput

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
TINY = ("tiny-I", "tiny-II", "tiny-x4")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_gpu_check_script_explains_that_it_needs_cuda():
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", "unused"], capture_output=True, text=True)
    assert done.returncode == 2 and "needs a CUDA GPU" in done.stderr and "--device cpu" in done.stderr


def test_every_section_of_the_gpu_check_runs_on_the_cpu(tmp_path):
    """benchmarks/gpu_check.py itself, every section in its child process on tiny models: a wrong preset
    name, a missing import or a wrong key fails here, not on the GPU. Only GPU-only calls are skipped."""
    from ifengine.bench.gpu_check import names

    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--preset", "tiny", "--out", str(tmp_path)]
    done = subprocess.run(cmd + ["--seconds", "1200"], capture_output=True, text=True, timeout=1300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    sections = report["sections"]
    assert list(sections) == list(names()) and names()[0] == "machine"
    assert {n: e["status"] for n, e in sections.items()} == {n: "ok" for n in names()}, sections
    assert sections["machine"]["result"]["versions"]["torch"] == torch.__version__
    assert sections["graph_reuse"]["result"]["max_ulps_per_stage"] == [0, 0, 0]  # eager twice on the CPU
    assert len(sections["step_times"]["result"]["rows"]) == 3
    assert set(sections["throughput"]["result"]) == {"throughput", "latency"}
    budget = sections["budget"]["result"]
    assert budget["max_ulps_vs_unconstrained"] == 0 and budget["plan_modes"]
    assert "## budget: ok" in (tmp_path / "gpu_check.md").read_text()
    compiled = sections["inductor"]["result"]  # the tiny step compiled with AOTInductor on the CPU
    assert compiled["preset"] == "tiny-I" and compiled["inductor_ms"] > 0 and compiled["max_abs_vs_eager"] <= 1e-4
    assert "inductor_graph_ms" not in compiled  # CUDA graphs are GPU-only


@pytest.fixture(scope="module")
def tiny_cuda():
    cascade = random_cascade(TINY, dtype=torch.float16, device="cuda")
    move_to(cascade, "cuda")
    return cascade


def stage1(cascade, runtime, seed=0, observe=None):
    from ifengine.stage.options import StageOptions
    from ifengine.stage.stages import RunContext

    runtime.runner.observe = observe
    embeds = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(1)).to("cuda", torch.float16)
    ctx = RunContext(torch.device("cuda"), torch.float16, torch.Generator().manual_seed(seed), False)
    return runtime.run_if_stage(1, cascade.stage1, StageOptions(steps=8, guidance=7.0), embeds, (1, 3, 16, 16), ctx)


@pytest.mark.gpu
@needs_cuda
def test_graph_replay_equals_eager_per_step_in_float16(tiny_cuda):
    """A self-comparison on purpose: replayed CUDA graphs must give the eager steps' states."""
    eager_states, graph_states = [], []
    stage1(tiny_cuda, configure(tiny_cuda, cuda_graphs=False), observe=lambda n, x: eager_states.append(x.clone()))
    stage1(tiny_cuda, configure(tiny_cuda, cuda_graphs=True), observe=lambda n, x: graph_states.append(x.clone()))
    assert len(eager_states) == len(graph_states) == 8
    for e, g in zip(eager_states, graph_states, strict=True):
        assert max_ulps(e, g) == 0  # the same kernels on the same inputs: bit for bit (1e-3 < 1 ulp at |x|>=2)


@pytest.mark.gpu
@needs_cuda
def test_replays_never_synchronise_the_host(tiny_cuda):
    runtime = configure(tiny_cuda, cuda_graphs=True)
    stage1(tiny_cuda, runtime)  # warm-up and capture (capture synchronises once, by design)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        stage1(tiny_cuda, runtime, seed=1)  # upload, replays and the result copy: no sync allowed
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@needs_cuda
def test_a_whole_cached_prompt_call_never_synchronises_before_its_fetch(tiny_cuda):
    runtime = configure(tiny_cuda, cuda_graphs=True)
    kwargs = dict(steps=(3, 2, 2), height=16, width=16, output_type="pt", progress=False)
    tiny_cuda("a red cat", seed=0, **kwargs)  # encodes the prompts (T5 and CLIP), captures every graph
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = tiny_cuda("a red cat", seed=1, **kwargs)  # only the final fetch may wait, on an event
    finally:
        torch.cuda.set_sync_debug_mode("default")
        runtime.close()
    assert len(out.stages) == 3


@pytest.mark.gpu
@needs_cuda
def test_budgeted_tiny_cascade_stays_under_its_limit():
    cascade = random_cascade(TINY, dtype=torch.float16, device="cuda")
    workload = Workload(height=16, width=16, steps=(4, 3, 3))
    # 640 MiB for the allocator on top of the 768 MiB CUDA context reserve
    runtime = configure(cascade, vram_budget="1408MiB", limit_allocator=True, workload=workload)
    torch.cuda.reset_peak_memory_stats()
    result = run_throughput(cascade, runtime, ["a red cat"], steps=(4, 3, 3), height=16, width=16)
    assert result.images == 1 and torch.cuda.max_memory_reserved() <= 640 * 2**20
    torch.cuda.set_per_process_memory_fraction(1.0)


@pytest.mark.gpu
@needs_cuda
def test_overlapped_streams_give_the_sequential_images(tiny_cuda):
    """A self-comparison on purpose: overlapping batches on streams must not change any image."""
    runtime = configure(tiny_cuda, mode="throughput")
    kwargs = dict(steps=(4, 3, 3), height=16, width=16, seed=3)
    overlapped = run_throughput(tiny_cuda, runtime, ["a", "b", "c"], overlap=True, **kwargs)
    sequential = run_throughput(tiny_cuda, runtime, ["a", "b", "c"], overlap=False, **kwargs)
    for a, b in zip(overlapped.outputs, sequential.outputs, strict=True):
        assert all(
            max_ulps(x, y) == 0 for x, y in zip(a, b, strict=True)
        )  # the same kernels per batch, in another order
