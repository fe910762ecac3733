"""Weight placement: partition into streamable units, the shared swap area, streaming hooks, and the whole
tiny cascade run under a budget that forces offloading and streaming (bit-identical to the eager cascade)."""

import pytest
import torch
from torch import nn

import ifengine
from ifengine.runtime import configure
from ifengine.runtime.api import RuntimeOptions
from ifengine.memory.workload import Workload
from ifengine.memory.offload import WeightPlacer
from ifengine.memory.partition import LAYOUT_ALIGN, partition
from ifengine.memory.plan_inputs import cascade_modules, plan_inputs
from ifengine.memory.planner import OFFLOAD, RESIDENT, STREAM, MemoryPlan, Placement, PlanOptions, minimum_budget
from ifengine.runtime.throughput import run_throughput


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.a, self.b = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class Net(nn.Module):
    def __init__(self, width: int = 32, depth: int = 3, direct: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.head = nn.Linear(width, width)
        self.scale = nn.Parameter(torch.ones(width)) if direct else None

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        x = self.head(x)
        return x * self.scale if self.scale is not None else x


def test_partition_splits_containers_and_the_root_and_keeps_direct_weights_fixed():
    torch.manual_seed(0)
    net = Net(direct=True)
    part = partition(net, max_unit_bytes=10_000)
    paths = [u.path for u in part.units]
    assert paths == ["blocks.0", "blocks.1", "blocks.2", "head"]  # never "" (root) nor "blocks" (a list)
    assert part.fixed == ("scale",)
    assert all(u.nbytes % LAYOUT_ALIGN == 0 for u in part.units)
    assert [u.path for u in partition(net, max_unit_bytes=1_000).units][:2] == ["blocks.0.a", "blocks.0.b"]


def test_partition_counts_tied_weights_once():
    a, b = nn.Linear(8, 8), nn.Linear(8, 8)
    b.weight = a.weight
    seq = nn.Sequential(a, b)
    part = partition(seq)
    assert part.total_bytes == 3 * 256  # the 256-byte weight once, and two (padded) biases
    assert part.fixed == ("0.weight",)  # tied: whichever module runs, the weight must already be there


def fake_plan(placements, swap, slot) -> MemoryPlan:
    return MemoryPlan(
        budget_bytes=0,
        options=PlanOptions(),
        workload=Workload(),
        placements=tuple(placements),
        swap_bytes=swap,
        slot_bytes=slot,
        graph_scope="none",
        vae_tile=None,
        phases=(),
        resident_bytes=0,
        buffer_bytes=0,
        transfer_bytes_per_call=0,
        unet_streamed_bytes_per_call=0,
    )


def test_swap_area_shared_by_two_modules_and_streamed_units_compute_exactly():
    torch.manual_seed(0)
    one, two, three = Net(), Net(direct=True), Net()
    x = torch.randn(4, 32)
    expected = [m(x) for m in (one, two, three)]
    size = partition(one).total_bytes
    unit = partition(two).units[-1]  # "head": streamed through the slot
    plan = fake_plan(
        [
            Placement("one", OFFLOAD, 0, 0, size),
            Placement("two", STREAM, 0, 0, partition(two).total_bytes - unit.nbytes, (unit.path,), unit.nbytes),
            Placement("three", RESIDENT, 0),
        ],
        swap=size,
        slot=unit.nbytes,
    )
    placer = WeightPlacer(plan, {"one": one, "two": two, "three": three}, "cpu").apply()
    assert placer.loaded == frozenset()
    assert torch.equal(one(x), expected[0]) and placer.loaded == {"one"}  # loaded by its own pre-hook
    assert torch.equal(two(x), expected[1]) and placer.loaded == {"two"}  # same bytes: "one" was evicted
    assert torch.equal(one(x), expected[0]) and torch.equal(three(x), expected[2])
    assert one.head.weight.untyped_storage().data_ptr() == placer.swap.untyped_storage().data_ptr()
    with pytest.raises(ValueError, match="already placed"):
        WeightPlacer(plan, {"one": one, "two": two, "three": three}, "cpu").apply()


def test_a_unit_entered_without_its_hook_is_an_error():
    class Sneaky(Net):
        def forward(self, x):
            return self.head.forward(x)  # bypasses __call__, so a streaming hook would never load "head"

    net = Sneaky()
    unit = partition(net).units[-1]
    plan = fake_plan(
        [Placement("net", STREAM, 0, 0, partition(net).total_bytes - unit.nbytes, (unit.path,), unit.nbytes)],
        swap=partition(net).total_bytes,
        slot=unit.nbytes,
    )
    WeightPlacer(plan, {"net": net}, "cpu").apply()
    with pytest.raises(RuntimeError, match="ran without their pre-hook"):
        net(torch.randn(1, 32))


def load(d1, d2, d3):
    return ifengine.Cascade.from_pretrained(d1, d2, d3, safety=False)


def test_tiny_cascade_under_a_tight_budget_equals_the_eager_cascade(stage1_dir, stage2_dir, stage3_dir):
    """A self-comparison on purpose: offloading and streaming weights must not change a single value."""
    steps, seeds = (2, 2, 2), (5,)
    reference = load(stage1_dir, stage2_dir, stage3_dir)
    expected = [
        reference("a red cat", steps=steps, seed=s, height=8, width=8, output_type="pt", progress=False).stages
        for s in seeds
    ]
    cascade = load(stage1_dir, stage2_dir, stage3_dir)
    workload = Workload(height=8, width=8, steps=steps)
    plan_options = PlanOptions(cuda_graphs=False, reserve_bytes=0, activation_margin=1.0, context_reserve_bytes=0)
    budget = minimum_budget(plan_inputs(cascade_modules(cascade), workload), plan_options, precision=64 * 1024)
    runtime = configure(
        cascade,
        workload=workload,
        options=RuntimeOptions(vram_budget=budget, cuda_graphs=False, plan=plan_options, weights="native"),
    )
    modes = runtime.plan.modes()
    assert STREAM in modes.values() and RESIDENT not in (modes["unet1"], modes["unet2"])
    assert runtime.plan.peak_bytes <= budget
    result = run_throughput(cascade, runtime, ["a red cat"], seed=seeds[0], steps=steps, height=8, width=8)
    for want, got in zip(expected, result.outputs, strict=True):
        assert all(torch.equal(w, g) for w, g in zip(want, got, strict=True))
    assert result.images == 1 and result.images_per_second > 0
