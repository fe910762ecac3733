"""What a line-by-line review of the GPU runtime found (issue 12), each shown on the CPU where a CPU can.

The CUDA touch points of graphs.py (stream, pool, capture) are replaced by conftest's recording fakes
(``fake_cuda``); everything around them (caches, keys, buffers, tables, planner) is the real code.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ifengine.memory.planner import MiB, PlanOptions, graph_pool_bytes
from ifengine.memory.sizes import GiB
from ifengine.models.int8 import Int8Conv2d, Int8Linear
from ifengine.runtime.buffers import foreign_streams
from ifengine.runtime.graphs import GraphCache
from ifengine.runtime.throughput import overlap_streams


# 1. run_throughput's streams follow the runtime's mode -----------------------------------------------------
def test_overlap_follows_the_runtime_mode_and_refuses_only_an_explicit_request():
    assert overlap_streams(None, "cuda", "latency") is False  # a latency runtime: batches one after another
    assert overlap_streams(None, "cuda", "throughput") is True
    assert overlap_streams(None, "cpu", "throughput") is False  # no streams on a CPU
    assert overlap_streams(False, "cuda", "throughput") is False
    with pytest.raises(ValueError, match="mode='throughput'"):
        overlap_streams(True, "cuda", "latency")


# 2. one capture stream per cache, and the planner's pool term is what one stream gives ----------------------
def test_every_graph_of_a_cache_captures_on_the_one_stream_of_its_cache(fake_cuda):
    cache = GraphCache("cuda", warmup_steps=1)
    made = [cache.get(("stage", n), lambda: lambda: None) for n in range(3)]
    for graph in made:
        graph.step_no_sync()  # warm-up, then capture
    pools_streams = fake_cuda["captures"]
    assert len(pools_streams) == 3 and len(fake_cuda["streams"]) == 1
    assert all(stream is cache.stream for _, stream in pools_streams)
    assert all(pool is cache.pool for pool, _ in pools_streams)
    cache.clear()
    assert cache.stream is fake_cuda["streams"][0]  # the stream (and its cuBLAS workspace) outlives clear()


def test_the_planned_pool_is_the_largest_graph_per_stream_not_the_sum():
    acts = {"text": 50, "stage1": 100, "stage2": 300, "stage3": 200, "decode": 900}
    assert graph_pool_bytes(acts, "latency") == 300  # one cache, one stream: blocks are reused across graphs
    assert graph_pool_bytes(acts, "throughput") == 100 + 300  # front cache (stage I) + back cache (II, III)
    assert graph_pool_bytes({"text": 5}, "latency") == 0


# 5. int8 dequantisation is one pass --------------------------------------------------------------------------
class Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("kind", ["linear", "conv", "conv channels-last"])
def test_int8_dequantisation_is_one_pass_and_bit_identical_to_cast_then_scale(dtype, kind):
    torch.manual_seed(0)
    float_layer = torch.nn.Linear(64, 48) if kind == "linear" else torch.nn.Conv2d(16, 32, 3)
    layer = (Int8Linear if kind == "linear" else Int8Conv2d)(float_layer.to(dtype))
    if kind == "conv channels-last":
        layer = layer.to(memory_format=torch.channels_last)
    shape = (-1,) + (1,) * (layer.qweight.dim() - 1)
    two_pass = layer.qweight.to(layer.scale.dtype).mul_(layer.scale.view(shape))  # the old formula
    with Ops() as seen:
        fused = layer.dequantized()
    compute = [op for op in seen.ops if op not in ("aten.view", "aten.reshape", "aten._unsafe_view")]
    assert compute == ["aten.mul"], seen.ops  # one kernel reads int8 and writes the float weight once
    assert fused.dtype == dtype and torch.equal(fused, two_pass)
    assert fused.stride() == two_pass.stride()  # channels-last weights stay channels-last


# 7. the CUDA context is outside the allocator: plans leave room for it ------------------------------------
def test_a_plan_leaves_the_context_reserve_free_and_the_allocator_limit_excludes_it():
    from ifengine.memory.plan_inputs import plan_inputs, preset_modules
    from ifengine.memory.planner import plan_memory
    from ifengine.memory.workload import Workload
    from ifengine.runtime.api import allocator_limit_bytes

    options = PlanOptions()
    assert options.context_reserve_bytes == 768 * MiB
    inputs = plan_inputs(preset_modules(("IF-I-XL", "IF-II-L", "x4"), torch.float16), Workload())
    plan = plan_memory(inputs, 8 * GiB, options)
    assert plan.peak_bytes + options.context_reserve_bytes <= 8 * GiB
    assert allocator_limit_bytes(8 * GiB, options) == 8 * GiB - 768 * MiB
    with pytest.raises(ValueError, match="context reserve"):
        allocator_limit_bytes(512 * MiB, options)


# 9. a grown buffer read by other streams is kept until they are done ----------------------------------------
def test_the_streams_to_record_on_a_freed_buffer_are_the_users_other_than_its_own():
    own, front, back = "default", "front", "back"  # any hashable stream identities
    assert foreign_streams(own, [own, front, back, front]) == [front, back]
    assert foreign_streams(own, [own]) == []
    assert foreign_streams(None, [None]) == []  # CPU: no streams at all


# 6. a step graph does not depend on the step count or the strength --------------------------------------------
@pytest.fixture(scope="module")
def tiny_cascade(stage1_dir, stage2_dir, stage3_dir):
    import ifengine

    return ifengine.Cascade.from_pretrained(stage1_dir, stage2_dir, stage3_dir, safety=False)


def test_new_step_counts_and_strengths_replay_the_graph_already_captured(fake_cuda, tiny_cascade):
    from ifengine.stage.options import StageOptions
    from ifengine.stage.stages import RunContext, Start, run_if_stage
    from ifengine.runtime.gpu_runner import GraphRunner

    cpu = torch.device("cpu")
    cache = GraphCache(cpu, warmup_steps=1)  # "enabled" with the recording fakes: a real key, a fake capture
    runner = GraphRunner(cpu, graphs={1: cache, 2: cache, 3: cache})
    runner.reserve_for(1, batch=1, height=8, width=8, steps=6, text_dim=32, dtype=torch.float32)
    cond = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(1))
    source = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    calls = [(steps, None) for steps in (6, 4, 5)] + [(6, Start(source, s)) for s in (0.5, 0.8)]
    for seed, (steps, start) in enumerate(calls):
        opts = StageOptions(steps=steps, guidance=7.0)
        context = lambda seed=seed: RunContext(cpu, torch.float32, torch.Generator().manual_seed(seed), False)  # noqa: E731
        ours = runner.run_if_stage(1, tiny_cascade.stage1, opts, cond, (1, 3, 8, 8), context(), start=start)
        ref = run_if_stage(1, tiny_cascade.stage1, opts, cond, (1, 3, 8, 8), context(), start=start)
        assert torch.equal(ours, ref), (steps, start)  # the reused graph reads this call's tables and noise
    # one graph for text-to-image (3 step counts), one for img2img (2 strengths): nothing else recaptured
    assert cache.captures == 2 and len(cache) == 2


# 3. every prompt is encoded before stage I is queued -----------------------------------------------------
@pytest.mark.parametrize("runtime", [False, True])
def test_clip_encodes_before_stage1_is_queued(tiny_cascade, runtime):
    cascade = tiny_cascade
    if runtime:
        cascade.use_runtime(cuda_graphs=False)
    order, hooks = [], []
    modules = {"t5": cascade.text.model, "clip": cascade.stage3.text.model, "unet1": cascade.stage1.unet}
    modules["x4_unet"] = cascade.stage3.unet
    for name, module in modules.items():
        hooks.append(module.register_forward_pre_hook(lambda m, a, name=name: order.append(name)))
    try:
        for encoder in cascade.encoders():
            encoder.clear_cache()
        cascade("a red cat", negative_prompt="blurry", seed=0, steps=(2, 2, 2), height=8, width=8, output_type="pt")
    finally:
        for hook in hooks:
            hook.remove()
        cascade.set_runtime(None)
    assert order.index("clip") < order.index("unet1") < order.index("x4_unet")
    assert order.count("clip") == 1  # one run for prompt and negative; stage III only reads the cache


# 8. equality is judged in ulps, and a closed runtime frees its cascade -----------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_ulp_distance_counts_representable_values(dtype):
    from ifengine.bench.ulps import max_ulps, ulp_distance

    x = torch.tensor([-3.0, -1e-3, 0.0, 1.0, 2.0, 1000.0], dtype=dtype)
    up = torch.nextafter(x, torch.full_like(x, float("inf")))
    assert ulp_distance(x, x).tolist() == [0] * 6 and ulp_distance(x, up).tolist() == [1] * 6
    assert max_ulps(torch.tensor([0.0], dtype=dtype), torch.tensor([-0.0], dtype=dtype)) == 0
    tiny = torch.nextafter(torch.zeros(1, dtype=dtype), torch.ones(1, dtype=dtype))
    assert max_ulps(tiny, -tiny) == 2  # across zero: -tiny, (-)0, +tiny
    two_up = torch.nextafter(up, torch.full_like(x, float("inf")))
    assert ulp_distance(two_up, x).tolist() == [2] * 6
    if dtype == torch.float16:  # why not 1e-3: one fp16 ulp at 2.0 is 2**-9 ~ 0.002
        assert (up[4] - x[4]).item() > 1e-3


def test_closing_a_runtime_breaks_the_cascade_runtime_cycle(stage1_dir):
    import gc
    import weakref

    import ifengine

    cascade = ifengine.Cascade.from_pretrained(stage1_dir, safety=False).use_runtime(cuda_graphs=False)
    ref = weakref.ref(cascade)
    gc.disable()  # only refcounting may free it: the cyclic collector would hide the cycle
    try:
        cascade.runtime.close()
        del cascade
        assert ref() is None
    finally:
        gc.enable()


# 4. weight streaming is double-buffered: unit k+1 is fetched before unit k computes -------------------------
def test_streamed_units_alternate_two_slots_and_the_next_is_fetched_before_this_one_computes():
    from torch import nn

    from ifengine.memory.offload import WeightPlacer
    from ifengine.memory.partition import partition
    from ifengine.memory.planner import STREAM, MemoryPlan, Placement, stream_slot_offsets
    from ifengine.memory.workload import Workload

    torch.manual_seed(0)
    net = nn.Sequential(*(nn.Linear(32, 32) for _ in range(4)))
    x = torch.randn(4, 32)
    expected, originals = net(x), {n: p.detach().clone() for n, p in net.named_parameters()}
    units = partition(net).units
    streamed = [u for u in units if u.path in ("1", "2", "3")]
    offsets, slot = stream_slot_offsets([u.nbytes for u in streamed])
    assert offsets == [0, streamed[0].nbytes, 0] and slot == streamed[0].nbytes + streamed[1].nbytes
    resident_part = partition(net).total_bytes - sum(u.nbytes for u in streamed)
    placement = Placement("net", STREAM, 0, 0, resident_part, tuple(u.path for u in streamed), slot)
    plan = MemoryPlan(0, PlanOptions(), Workload(), (placement,), resident_part, slot, "none", None, (), 0, 0, 0, 0)
    placer = WeightPlacer(plan, {"net": net}, "cpu").apply()
    assert placer.slot_offsets["net"] == dict(zip(("1", "2", "3"), offsets, strict=True))

    seen = {}

    def at_compute(path):
        def check(_module, _args):
            # runs after the placer's pre-hook: this unit's weights are in place, and so are the next one's
            following = str(int(path) + 1)
            names = [n for n in originals if n.split(".")[0] in (path, following)]
            seen[path] = all(torch.equal(dict(net.named_parameters())[n], originals[n]) for n in names)

        return check

    for path in ("1", "2"):
        net.get_submodule(path).register_forward_pre_hook(at_compute(path))
    got = net(x)
    assert seen == {"1": True, "2": True}  # with one slot, unit 2's bytes would still be unit 1's here
    assert torch.equal(got, expected) and torch.equal(net(x), expected)  # bit-identical, call after call
