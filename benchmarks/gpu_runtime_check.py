"""GPU checks of the lean runtime, in one command (needs a CUDA GPU; nothing is downloaded):

    python benchmarks/gpu_runtime_check.py --out benchmarks/results/gpu_runtime.json

1. equality: each full-size stage (random IF-I-XL / IF-II-L / x4 weights, float16): every step replayed
   from a CUDA graph against the eager step from the same state (target <= 1e-3 max abs per step);
2. budgets: the whole cascade at 1024x1024 under 24, 16, 12 and 8 GiB, each in a fresh process with
   torch.cuda.set_per_process_memory_fraction; measured peak (allocated and reserved) vs plan vs budget,
   and which U-Nets weights="auto" made int8 (IF-I-XL under 8 GiB, by the plan);
3. throughput: images/s for a stream of prompts with stages overlapped on two streams, and without;
4. --sweep: per-step time per stage for float16/bfloat16 x eager/graphs/channels-last(/compile)/int8
   weights, the measurement the backend defaults should be chosen by.

Writes one JSON file. Without CUDA it exits with status 2 and says why.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ifengine.models.int8 import is_quantized
from ifengine.runtime import configure
from ifengine.bench.fullsize import move_to, random_cascade
from ifengine.memory.workload import Workload
from ifengine.memory.plan_inputs import cascade_modules
from ifengine.memory.sizes import GiB, parse_size
from ifengine.runtime.throughput import run_throughput

PROMPT = "a photograph of a red cat sitting on a wooden table"


def require_cuda() -> None:
    if not torch.cuda.is_available():
        sys.stderr.write(
            f"gpu_runtime_check needs a CUDA GPU, but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}). Run it on a machine "
            "with an NVIDIA GPU and a CUDA build of torch.\n"
        )
        raise SystemExit(2)


def stage_inputs(cascade, steps):
    """A request and its T5 embeddings for one image at 64 -> 256 -> 1024."""
    req = cascade.make_request(
        prompt=PROMPT,
        negative_prompt=None,
        height=64,
        width=64,
        num_images_per_prompt=1,
        steps=steps,
        guidance=None,
        noise_level=None,
        timesteps=(None, None, None),
        last_stage=None,
        output_type="pt",
    )
    pos, neg = cascade.encode(req, True)
    return req, torch.cat([neg, pos])


def run_stage(runtime, cascade, req, embeds, stage: int, image, seed: int):
    from ifengine.pipeline.stages import RunContext

    ctx = RunContext(cascade.device, cascade.dtype, torch.Generator().manual_seed(seed), False)
    opts = req.stages[stage - 1]
    if stage == 3:
        return runtime.run_x4_stage(cascade.stage3, opts, list(req.prompts), list(req.negatives), image, ctx)
    shape = (req.batch, 3, *req.size(stage))
    return runtime.run_if_stage(
        stage, (cascade.stage1, cascade.stage2)[stage - 1], opts, embeds, shape, ctx, image=image
    )


def check_equality(cascade, steps) -> dict:
    """Per step: graph replay from the eager trajectory's state vs the eager step's result."""
    req, embeds = stage_inputs(cascade, steps)
    eager, graphs = configure(cascade, cuda_graphs=False), configure(cascade, cuda_graphs=True)
    report, image = {}, None
    for stage in (1, 2, 3):
        states = []
        eager.runner.observe = lambda n, x, states=states: states.append(x.clone())  # bound: this stage's list
        out = run_stage(eager, cascade, req, embeds, stage, image, seed=stage)
        graphed = run_stage(graphs, cascade, req, embeds, stage, image, seed=stage)
        graph = list(graphs.runner.graphs[stage]._graphs.values())[-1]  # stages share one cache
        arena = graphs.runner.arenas[stage]
        x, index = arena.view("x", tuple(states[0].shape), states[0].dtype), arena.view("index", (), torch.long)
        errors = []
        for k in range(len(states) - 1):
            x.copy_(states[k])
            index.fill_(k + 1)
            graph.replay_no_sync()
            errors.append((x.float() - states[k + 1].float()).abs().max().item())
        report[f"stage{stage}"] = {
            "steps": len(states),
            "max_abs_per_step": errors,
            "worst": max(errors, default=0.0),
            "whole_stage_max_abs": (out.float() - graphed.float()).abs().max().item(),
            "pass": max(errors, default=0.0) <= 1e-3,
        }
        image = out
    return report


def budget_child(budget: str, steps, out: Path) -> None:
    """One budget in a fresh process: place, run twice (capture, then steady state), measure the peak."""
    result = {"budget": budget, "budget_bytes": parse_size(budget)}
    try:
        cascade = random_cascade(device="cuda")
        rt = configure(cascade, vram_budget=budget, limit_allocator=True, workload=Workload(steps=steps))
        int8 = [n for n, m in cascade_modules(cascade).items() if is_quantized(m)]  # weights="auto" chose these
        result.update(
            int8_weights=int8,
            plan_modes=rt.plan.modes(),
            predicted_peak=rt.plan.peak_bytes,
            vae_tile=rt.plan.vae_tile,
            graph_scope=rt.plan.graph_scope,
            phases={p.phase: p.peak_bytes for p in rt.plan.phases},
        )
        torch.cuda.reset_peak_memory_stats()
        for label in ("first_call", "second_call"):
            res = run_throughput(cascade, rt, [PROMPT], steps=steps, check_finite=False)
            result[f"{label}_seconds"] = res.seconds
        result.update(
            ok=True, peak_allocated=torch.cuda.max_memory_allocated(), peak_reserved=torch.cuda.max_memory_reserved()
        )
        result["within_budget"] = result["peak_reserved"] <= result["budget_bytes"]
    except Exception as err:  # an OOM is a result here, not a crash
        result.update(ok=False, error=f"{type(err).__name__}: {err}"[:2000])
    out.write_text(json.dumps(result, indent=2))


def check_budgets(budgets: list[str], steps, timeout: int) -> list[dict]:
    results = []
    for budget in budgets:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "budget.json"
            cmd = [
                sys.executable,
                __file__,
                "--budget-child",
                budget,
                "--steps",
                ",".join(map(str, steps)),
                "--child-out",
                str(path),
            ]
            done = subprocess.run(cmd, timeout=timeout, capture_output=True, text=True)
            entry = json.loads(path.read_text()) if path.exists() else {"budget": budget, "ok": False}
            if done.returncode:
                entry["stderr_tail"] = done.stderr[-2000:]
            results.append(entry)
            reserved, predicted = entry.get("peak_reserved", 0) / GiB, entry.get("predicted_peak", 0) / GiB
            print(f"budget {budget}: ok={entry.get('ok')} peak reserved {reserved:.2f} GiB, predicted {predicted:.2f}")
    return results


def check_throughput(cascade, prompts: int, steps) -> dict:
    rt = configure(cascade, mode="throughput")
    run_throughput(cascade, rt, [PROMPT] * 2, steps=steps, check_finite=False)  # captures every graph first
    report = {}
    for overlap in (True, False):
        res = run_throughput(cascade, rt, [PROMPT] * prompts, steps=steps, overlap=overlap, check_finite=False)
        report["overlapped" if overlap else "sequential"] = {
            "images": res.images,
            "seconds": res.seconds,
            "images_per_second": res.images_per_second,
        }
    return report


def stage_times(cascade, steps, **options) -> dict:
    rt = configure(cascade, **options)
    req, embeds = stage_inputs(cascade, steps)
    times, image = {}, None
    for stage in (1, 2, 3):
        run_stage(rt, cascade, req, embeds, stage, image, seed=0)  # warm-up / capture / compile
        torch.cuda.synchronize()
        start = time.perf_counter()
        image = run_stage(rt, cascade, req, embeds, stage, image, seed=0)
        torch.cuda.synchronize()
        times[f"stage{stage}_ms_per_step"] = 1000 * (time.perf_counter() - start) / steps[stage - 1]
    return times


def sweep(steps, with_compile: bool) -> dict:
    report = {}
    for dtype in (torch.float16, torch.bfloat16):
        cascade = random_cascade(dtype=dtype, device="cuda")
        move_to(cascade, "cuda")
        name = str(dtype).replace("torch.", "")
        report[f"{name}/eager"] = stage_times(cascade, steps, cuda_graphs=False)
        report[f"{name}/graphs"] = stage_times(cascade, steps, cuda_graphs=True)
        if with_compile:
            report[f"{name}/graphs+compile"] = stage_times(cascade, steps, cuda_graphs=True, compile=True)
        report[f"{name}/graphs+channels_last"] = stage_times(cascade, steps, cuda_graphs=True, channels_last=True)
        # last: quantising is in place and cannot be undone; this is the dequantise-per-layer cost
        report[f"{name}/graphs+int8_weights"] = stage_times(cascade, steps, cuda_graphs=True, weights="int8")
        del cascade
        torch.cuda.empty_cache()
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_runtime.json"))
    p.add_argument("--budgets", default="24GiB,16GiB,12GiB,8GiB")
    p.add_argument("--steps", default="10,5,5", help="steps per stage (memory peaks do not depend on it)")
    p.add_argument("--prompts", type=int, default=8, help="prompts in the throughput stream")
    p.add_argument("--sweep", action="store_true", help="also time dtype x graphs x channels-last per stage")
    p.add_argument("--compile", action="store_true", help="include torch.compile in the sweep (slow)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per budget run")
    p.add_argument("--budget-child", help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    require_cuda()
    steps = tuple(int(s) for s in args.steps.split(","))
    if args.budget_child:
        budget_child(args.budget_child, steps, args.child_out)
        return 0
    cascade = random_cascade(device="cuda")
    move_to(cascade, "cuda")
    report = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "steps": steps,
        "equality": check_equality(cascade, steps),
        "throughput": check_throughput(cascade, args.prompts, steps),
    }
    del cascade
    torch.cuda.empty_cache()
    report["budgets"] = check_budgets(args.budgets.split(","), steps, args.timeout)
    if args.sweep:
        report["sweep"] = sweep(steps, args.compile)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
