"""Memory planner decisions for the full-size cascade (T5-XXL, IF-I-XL, IF-II-L, x4) at 1024x1024.

Sizes come from the real module trees built on the meta device and from the step functions run on meta
tensors, so these tests need no GPU and no weights.
"""

import pytest
import torch

from ifengine.memory.workload import Workload
from ifengine.memory.plan_inputs import plan_inputs, preset_modules
from ifengine.memory.planner import OFFLOAD, RESIDENT, STREAM, PlanError, PlanOptions, minimum_budget, plan_memory
from ifengine.memory.sizes import GiB

UNETS = ("unet1", "unet2", "x4_unet")


@pytest.fixture(scope="module")
def inputs():
    return plan_inputs(preset_modules(("IF-I-XL", "IF-II-L", "x4"), torch.float16), Workload())


def test_component_sizes_are_the_published_ones(inputs):
    params = {c.name: c.params / 1e9 for c in inputs.components}
    assert params["t5"] == pytest.approx(4.76, abs=0.01) and params["unet1"] == pytest.approx(4.30, abs=0.01)
    assert params["unet2"] == pytest.approx(1.24, abs=0.01) and params["x4_unet"] == pytest.approx(0.473, abs=0.001)
    dtypes = {c.name: c.dtype for c in inputs.components}
    # T5 v1.1 overflows float16 (runs bf16); the x4 VAE is upcast to float32 (force_upcast)
    assert (
        dtypes["t5"] == torch.bfloat16 and dtypes["vae_decoder"] == torch.float32 and dtypes["unet1"] == torch.float16
    )


def test_activations_are_measured_per_stage_and_tiling_shrinks_the_decode(inputs):
    acts = {p.name: p.activation_bytes for p in inputs.phases}
    assert acts["stage1"] < acts["stage2"] < acts["stage3"] < 2 * GiB
    decode = dict(inputs.decode_options)
    assert decode[None] > 2 * GiB  # float32 decode of a 1024x1024 image
    assert decode[None] > decode[128] > decode[64] > decode[32]


def check_common(plan, budget):
    assert plan.peak_bytes <= budget and all(p.peak_bytes <= budget for p in plan.phases)
    assert plan.placement("t5").mode != RESIDENT and plan.t5_released_before_stage1
    return plan.modes()


def test_24_gib_keeps_every_unet_resident_and_decodes_whole(inputs):
    plan = plan_memory(inputs, 24 * GiB)
    modes = check_common(plan, 24 * GiB)
    # with the 0.75 GiB CUDA context reserve, CLIP and the VAE (used once per call) move in at stage III
    assert all(modes[n] == RESIDENT for n in UNETS) and all(modes[n] != "stream" for n in ("clip", "vae_decoder"))
    assert plan.vae_tile is None and plan.unet_streamed_bytes_per_call == 0


def test_16_gib_moves_the_big_unets_in_per_stage(inputs):
    plan = plan_memory(inputs, 16 * GiB)
    modes = check_common(plan, 16 * GiB)
    assert modes["unet1"] == OFFLOAD and modes["unet2"] == OFFLOAD and modes["x4_unet"] == RESIDENT
    assert plan.swap_bytes >= plan.placement("unet1").swap_bytes  # stage I's 8 GiB lands in the shared swap
    assert plan.vae_tile is None and plan.unet_streamed_bytes_per_call == 0


def test_12_gib_offloads_everything_and_tiles_the_vae(inputs):
    plan = plan_memory(inputs, 12 * GiB)
    modes = check_common(plan, 12 * GiB)
    # the 0.75 GiB CUDA context reserve makes T5 stream more, which leaves the small x4 U-Net room to stay
    assert modes["unet1"] == OFFLOAD and modes["unet2"] == OFFLOAD and modes["x4_unet"] != STREAM
    assert plan.vae_tile is not None and plan.unet_streamed_bytes_per_call == 0


def test_8_gib_needs_weight_streaming_not_int8(inputs):
    """IF-I-XL alone is 8.02 GiB in float16 and T5-XXL 8.87 GiB in bfloat16: under 8 GiB neither fits whole.
    The plan streams both (exact numerics); int8 T5 is not needed, and not used."""
    plan = plan_memory(inputs, 8 * GiB)
    modes = check_common(plan, 8 * GiB)
    assert modes["t5"] == STREAM and modes["unet1"] == STREAM
    assert modes["unet2"] == OFFLOAD and plan.vae_tile is not None
    assert plan.unet_streamed_bytes_per_call > 0 and plan.slot_bytes >= max(
        u.nbytes for u in inputs.component("unet1").partition.units if u.path in plan.placement("unet1").streamed_units
    )


def test_smaller_budgets_never_stream_less(inputs):
    streamed = [plan_memory(inputs, b * GiB).unet_streamed_bytes_per_call for b in (40, 24, 16, 12, 8, 6)]
    assert streamed == sorted(streamed)


def test_an_impossible_budget_names_the_minimum(inputs):
    needed = minimum_budget(inputs)
    assert 1 * GiB < needed < 4 * GiB
    with pytest.raises(PlanError, match="needs at least"):
        plan_memory(inputs, needed - 64 * 2**20)
    assert plan_memory(inputs, needed).peak_bytes <= needed


def test_throughput_mode_keeps_unets_resident_or_says_why(inputs):
    options = PlanOptions(mode="throughput")
    plan = plan_memory(inputs, 40 * GiB, options)
    assert all(plan.placement(n).mode == RESIDENT for n in UNETS) and plan.peak_bytes <= 40 * GiB
    with pytest.raises(PlanError, match="throughput mode"):
        plan_memory(inputs, 10 * GiB, options)  # the resident U-Nets, CLIP and VAE alone take 12 GiB


def test_without_graphs_no_pool_is_planned(inputs):
    plan = plan_memory(inputs, 16 * GiB, PlanOptions(cuda_graphs=False))
    assert plan.graph_scope == "none" and plan.peak_bytes <= 16 * GiB
