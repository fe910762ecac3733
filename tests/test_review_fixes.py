"""Fixes from the review of the GPU path that a CPU can check: deferred finite checks, the host mask,
throughput streams made once, planner vs runner buffer sizes, the request estimate against a plan."""

import logging

import pytest
import torch

from ifengine.bench.fullsize import random_cascade
from ifengine.runtime.api import Runtime

TINY = ("tiny-I", "tiny-II", "tiny-x4")


@pytest.fixture(scope="module")
def tiny():
    return random_cascade(TINY, dtype=torch.float32, device="cpu")


def test_a_failed_deferred_check_survives_any_number_of_later_prompts(tiny):
    enc = tiny.text
    enc.clear_cache()
    enc.defer_checks = True
    weights = {k: v.clone() for k, v in enc.model.state_dict().items()}
    try:
        with torch.no_grad():
            for p in enc.model.parameters():
                p.fill_(float("nan"))
        enc.encode(["a poisoned prompt"])
        enc.model.load_state_dict(weights)
        for k in range(enc.cache_size + 6):  # more runs than the encoder keeps flags for
            enc.encode([f"prompt number {k}"])
        checks = enc.take_checks()
    finally:
        enc.defer_checks = False
        enc.clear_cache()
    assert len(checks) <= enc.cache_size
    failed = [prompts for prompts, finite in checks if not bool(finite)]
    assert len(failed) == 1 and "a poisoned prompt" in failed[0]
    assert sum(len(p) for p, _ in checks) == enc.cache_size + 7  # every prompt is still covered


def test_the_host_mask_path_says_loudly_when_transformers_changed(tiny, monkeypatch, caplog):
    import transformers.masking_utils as masking

    from ifengine.text import masks

    mask = torch.ones(1, 77, dtype=torch.long)
    mask[:, 9:] = 0  # padding: something is masked
    assert masks.host_attention_mask(tiny.text.model, mask).dim() == 4  # this transformers: prepared 4-D

    def drifted(**kwargs):
        raise TypeError("create_bidirectional_mask() got an unexpected keyword argument 'inputs_embeds'")

    monkeypatch.setattr(masking, "create_bidirectional_mask", drifted)
    masks._warned.clear()
    with caplog.at_level(logging.WARNING, logger="ifengine.text.masks"):
        assert masks.host_attention_mask(tiny.text.model, mask) is mask
        masks.host_attention_mask(tiny.text.model, mask)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "synchronis" in warnings[0].getMessage()
    assert masks.host_mask_status(tiny.text.model).startswith("2-D fallback")


def test_throughput_streams_are_made_once_per_runtime(tiny):
    runtime = Runtime(tiny, options=None, runner=None, backend=None)
    made = []

    def make():
        made.append(object())
        return made[-1]

    first = runtime.stream_pair(make)
    assert runtime.stream_pair(make) is first and len(made) == 2 and first == tuple(made)


def test_streamed_units_are_prefetched_in_the_order_the_forward_runs_them(stage1_dir, stage2_dir, stage3_dir):
    """Before, units streamed in registration order: IFUNet's up_blocks before its mid_block, so most
    prefetches were copies of the wrong unit. Now only each forward's first unit is fetched on arrival."""
    from ifengine.memory.plan_inputs import cascade_modules, plan_inputs
    from ifengine.memory.planner import STREAM, PlanOptions, minimum_budget
    from ifengine.memory.workload import Workload
    from ifengine.runtime.api import RuntimeOptions, configure

    import ifengine

    cascade = ifengine.Cascade.from_pretrained(stage1_dir, stage2_dir, stage3_dir, safety=False)
    steps, workload = (2, 2, 2), Workload(height=8, width=8, steps=(2, 2, 2))
    options = PlanOptions(cuda_graphs=False, reserve_bytes=0, activation_margin=1.0, context_reserve_bytes=0)
    budget = minimum_budget(plan_inputs(cascade_modules(cascade), workload), options, precision=64 * 1024)
    runtime = configure(
        cascade,
        workload=workload,
        options=RuntimeOptions(vram_budget=budget, cuda_graphs=False, plan=options, weights="native"),
    )
    streamed = [p.name for p in runtime.plan.placements if p.mode == STREAM]
    assert {"unet1", "unet2"} <= set(streamed)
    forwards = {name: 0 for name in streamed}
    modules = cascade_modules(cascade)
    for name in streamed:
        modules[name].register_forward_pre_hook(lambda *_, name=name: forwards.__setitem__(name, forwards[name] + 1))
    cascade("a red cat", steps=steps, height=8, width=8, seed=1, output_type="pt", progress=False)
    placer = runtime.placer
    for name in (n for n in streamed if forwards[n]):  # the VAE is entered through decode(), not forward
        units = len(runtime.plan.placement(name).streamed_units)
        assert placer.prefetch_misses[name] == forwards[name], name  # the first unit of each forward only
        assert placer.prefetch_hits.get(name, 0) == forwards[name] * (units - 1), name
    runtime.close()


def test_the_planner_counts_the_buffers_the_runner_reserves(tiny):
    from ifengine.memory.workload import Workload, arena_bytes, stage_buffers
    from ifengine.runtime import configure

    workload = Workload(height=8, width=8, batch=2, steps=(5, 4, 6))
    runtime = configure(tiny, workload=workload)
    reserved = sum(runtime.runner.arenas[n].nbytes for n in (1, 2, 3))
    stages = (tiny.stage1, tiny.stage2, tiny.stage3)
    dims = tuple(s.unet.config.encoder_hid_dim or s.unet.config.cross_attention_dim[0] for s in stages)
    assert arena_bytes(workload, dims, 4) == reserved
    runtime.close()
    # stage III is DDIM: no per-step noise, so more steps cost only their schedule rows
    few, many = (stage_buffers(3, batch=1, height=64, width=64, steps=s, text_dim=32, itemsize=2) for s in (3, 50))
    assert many["upload"] - few["upload"] == 24 * 47 * 8


def test_after_placement_a_request_is_checked_against_the_plan_not_the_free_memory(stage1_dir, stage2_dir, stage3_dir):
    import ifengine
    from ifengine.memory.estimate import RequestTooLarge, check_request
    from ifengine.memory.plan_inputs import cascade_modules, plan_inputs
    from ifengine.memory.planner import PlanOptions, minimum_budget
    from ifengine.memory.workload import Workload
    from ifengine.runtime.api import RuntimeOptions, configure

    cascade = ifengine.Cascade.from_pretrained(stage1_dir, stage2_dir, stage3_dir, safety=False)
    workload = Workload(height=8, width=8, steps=(2, 2, 2))
    options = PlanOptions(cuda_graphs=False, reserve_bytes=0, activation_margin=1.0, context_reserve_bytes=0)
    budget = minimum_budget(plan_inputs(cascade_modules(cascade), workload), options, precision=64 * 1024)
    runtime = configure(
        cascade,
        workload=workload,
        options=RuntimeOptions(vram_budget=budget, cuda_graphs=False, plan=options, weights="native"),
    )
    est = check_request(cascade, batch=1, height=8, width=8, steps=(2, 2, 2))
    # the plan's figures: weights streamed and offloaded count as the plan places them
    assert est.limit_bytes == budget and "memory plan" in est.limit_source
    assert est.needed_bytes == runtime.plan.peak_bytes <= budget
    with pytest.raises(RequestTooLarge, match="no memory plan fits"):
        check_request(cascade, batch=64, height=64, width=64, steps=(2, 2, 2))
    runtime.close()


def test_generate_with_vram_is_not_refused_for_weights_the_plan_will_place(stage1_dir, stage2_dir, stage3_dir):
    """Before loading, --vram is the limit and the weights are the planner's business."""
    from ifengine.cli import build_parser
    from ifengine.commands.preflight import check_before_loading
    from ifengine.memory.estimate import RequestTooLarge

    cli = build_parser()
    cpu, f32 = torch.device("cpu"), torch.float32

    def check(*extra):
        return check_before_loading(cli.parse_args(["generate", *base, *extra]), cpu, f32, None).estimate

    dirs = ["--stage1", str(stage1_dir), "--stage2", str(stage2_dir), "--stage3", str(stage3_dir)]
    base = ["a red cat", *dirs, "--height", "8", "--width", "8", "--steps", "2,2,2", "--out", "/tmp/x.png"]
    unplanned = check()
    # room for the buffers, the activations and half the weights: a plan offloads and streams the rest
    budget = unplanned.buffer_bytes + unplanned.activation_bytes + unplanned.weight_bytes // 2
    assert not unplanned.weights_loaded and unplanned.needed_bytes > budget
    planned = check("--vram", str(budget))
    assert planned.fits and planned.limit_bytes == budget and planned.needed_bytes < budget
    with pytest.raises(RequestTooLarge):
        check("--vram", "4096")  # not even the buffers fit
