"""Weight-only int8 U-Nets: the rounding itself, the layers it replaces, closeness to diffusers' fp32
U-Nets (the reference), the planner's weights="auto" choice, and a whole cascade placed under a budget."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ifengine
from ifengine.models.if_unet import IFUNet
from ifengine.models.int8 import (
    QMAX,
    Int8Conv2d,
    Int8Linear,
    compute_dtype,
    is_quantized,
    largest_dequantized_bytes,
    quantize_module,
    quantize_per_channel,
)
from ifengine.models.presets import UNET_PRESETS
from ifengine.stage.steps import if_step
from ifengine.runtime import configure
from ifengine.runtime.api import RuntimeOptions
from ifengine.backends.torch.settings import TorchBackendOptions, UNetBackend
from ifengine.runtime.capture_audit import audit
from ifengine.memory.workload import Workload
from ifengine.memory.plan_inputs import cascade_modules, plan_inputs, preset_modules
from ifengine.memory.planner import STREAM, PlanError, PlanOptions, plan_memory
from ifengine.memory.weight_precision import apply_int8, choose_weights, int8_twin
from ifengine.schedule import ddpm_tables
from ifengine.schedule.presets import IF_STAGE1_DDPM

GiB = 2**30


def test_per_channel_rounding_is_within_half_a_step_and_uses_the_full_range():
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3) * torch.logspace(-3, 1, 16)[:, None, None, None]  # very different channels
    w[3] = 0
    q, scale = quantize_per_channel(w, torch.float32)
    assert q.dtype == torch.int8 and q.shape == w.shape and scale.shape == (16,)
    assert int(q.abs().max()) == QMAX and int(q.min()) >= -QMAX
    back = q.float() * scale[:, None, None, None]
    assert ((back - w).abs() <= scale[:, None, None, None] / 2 + 1e-12).all()
    assert torch.equal(back[3], torch.zeros_like(w[3]))  # an all-zero channel survives exactly
    peaks = q.reshape(16, -1).abs().amax(1)
    assert torch.equal(peaks[torch.arange(16) != 3], torch.full((15,), QMAX, dtype=torch.int8))


@pytest.mark.parametrize(
    "layer,x",
    [
        (nn.Linear(64, 32), torch.randn(5, 64)),
        (nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.randn(2, 16, 9, 7)),
        (nn.Conv2d(32, 32, 3, padding=2, dilation=2, groups=4, bias=False), torch.randn(1, 32, 8, 8)),
    ],
)
def test_int8_layers_compute_with_the_dequantised_weight(layer, x):
    torch.manual_seed(1)
    q = (Int8Linear if isinstance(layer, nn.Linear) else Int8Conv2d)(layer)
    w = q.dequantized()
    exact = (
        F.linear(x, w, layer.bias)
        if isinstance(layer, nn.Linear)
        else F.conv2d(x, w, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
    )
    assert torch.equal(q(x), exact)
    ref = layer(x)
    assert (q(x) - ref).abs().max() / ref.abs().max() < 0.02
    assert not any(p.requires_grad for p in q.parameters())


def test_quantize_module_keeps_pixel_layers_and_small_weights_and_works_on_meta():
    torch.manual_seed(0)
    net = nn.Sequential()
    net.conv_in = nn.Conv2d(3, 64, 3)
    net.body = nn.Conv2d(64, 64, 3)
    net.tiny = nn.Linear(8, 8)
    net.conv_out = nn.Conv2d(64, 3, 3)
    report = quantize_module(net)
    assert report.layers == 1 and isinstance(net.body, Int8Conv2d)
    assert type(net.conv_in) is nn.Conv2d and type(net.conv_out) is nn.Conv2d and type(net.tiny) is nn.Linear
    assert report.bytes_after == 64 * 64 * 9 + 64 * 4 + 64 * 4  # int8 weight, fp32 scales, fp32 bias
    with torch.device("meta"):
        meta = nn.Sequential(nn.Linear(256, 256)).half()
    quantize_module(meta)
    assert meta[0].qweight.is_meta and meta[0].qweight.dtype == torch.int8 and compute_dtype(meta) == torch.float16


@pytest.fixture(scope="module")
def diffusers_unets():
    from test_if_unet import ours_from, reference_unet

    return {
        name: (reference_unet(UNET_PRESETS[name]), ours_from(reference_unet(UNET_PRESETS[name]), UNET_PRESETS[name]))
        for name in ("tiny-I", "tiny-II")
    }


@torch.no_grad()
@pytest.mark.parametrize("name", ["tiny-I", "tiny-II"])
def test_int8_unet_stays_close_to_the_diffusers_fp32_unet(diffusers_unets, name):
    from test_if_unet import inputs

    ref, ours = diffusers_unets[name]
    args = inputs(UNET_PRESETS[name], 2, 16, 24)
    expected = ref(**args).sample
    quantize_module(ours)
    assert is_quantized(ours)
    out = ours(**args)
    cosine = F.cosine_similarity(out.flatten(), expected.flatten(), dim=0).item()
    rel = ((out - expected).norm() / expected.norm()).item()
    assert cosine >= 0.999 and rel <= 0.05, (cosine, rel)


def test_auto_weights_make_int8_only_what_the_budget_would_stream():
    modules = preset_modules(("IF-I-XL", "IF-II-L", "x4"), torch.float16)
    roomy = choose_weights(modules, Workload(), 24 * GiB)
    assert roomy.int8 == () and roomy.plan.unet_streamed_bytes_per_call == 0
    tight = choose_weights(modules, Workload(), 8 * GiB)
    assert tight.int8 == ("unet1",)  # the biggest U-Net first, and only as many as needed
    assert tight.plan.unet_streamed_bytes_per_call == 0 and tight.plan.peak_bytes <= 8 * GiB
    native = choose_weights(modules, Workload(), 8 * GiB, weights="native")
    assert native.int8 == () and native.plan.unet_streamed_bytes_per_call > 100 * GiB  # 100 steps re-read
    forced = choose_weights(modules, Workload(), 24 * GiB, weights="int8")
    assert forced.int8 == ("unet1", "unet2", "x4_unet")
    with pytest.raises(PlanError, match="int8"):
        choose_weights(modules, Workload(), 1 * GiB)
    with pytest.raises(ValueError, match="auto, native, int8"):
        choose_weights(modules, Workload(), 8 * GiB, weights="fp8")


def test_int8_twin_sizes_what_quantising_the_real_unet_gives():
    unet = IFUNet(UNET_PRESETS["tiny-I"])
    twin = int8_twin(unet)
    quantize_module(unet)
    assert [(n, p.shape, p.dtype) for n, p in twin.named_parameters()] == [
        (n, p.shape, p.dtype) for n, p in unet.named_parameters()
    ]
    assert largest_dequantized_bytes(unet) == max(
        m.qweight.numel() * 4 for m in unet.modules() if isinstance(m, (Int8Linear, Int8Conv2d))
    )


def _fits_without_unet_streaming(inputs, budget, options) -> bool:
    try:
        return plan_memory(inputs, budget, options).unet_streamed_bytes_per_call == 0
    except PlanError:
        return False


def _smallest_budget_without_unet_streaming(inputs, options) -> int:
    low, high = 0, 256 * 2**20
    while high - low > 16 * 1024:
        mid = (low + high) // 2
        low, high = (low, mid) if _fits_without_unet_streaming(inputs, mid, options) else (mid, high)
    return high


def load(d1, d2, d3):
    return ifengine.Cascade.from_pretrained(d1, d2, d3, safety=False)


def test_a_budget_that_would_stream_runs_int8_unets_equal_to_the_plain_int8_cascade(stage1_dir, stage2_dir, stage3_dir):
    """A self-comparison on purpose: the planner's int8 choice must run exactly the int8 cascade (whose
    closeness to diffusers' fp32 U-Nets is checked above)."""
    steps, workload = (2, 2, 2), Workload(height=8, width=8, steps=(2, 2, 2))
    # a CPU run of tiny models: no CUDA context to leave room for
    options = PlanOptions(cuda_graphs=False, reserve_bytes=0, activation_margin=1.0, context_reserve_bytes=0)
    cascade = load(stage1_dir, stage2_dir, stage3_dir)
    modules = cascade_modules(cascade)
    all_int8 = {n: int8_twin(m) if n.startswith("unet") else m for n, m in modules.items()}
    budget = _smallest_budget_without_unet_streaming(plan_inputs(all_int8, workload), options)
    # native weights would have to stream at this budget (or not fit at all)
    assert not _fits_without_unet_streaming(plan_inputs(modules, workload), budget, options)
    runtime = configure(
        cascade, workload=workload, options=RuntimeOptions(vram_budget=budget, cuda_graphs=False, plan=options)
    )
    quantised = [n for n, m in cascade_modules(cascade).items() if is_quantized(m)]
    assert quantised and set(quantised) <= {"unet1", "unet2", "x4_unet"}
    assert runtime.plan.unet_streamed_bytes_per_call == 0 and runtime.plan.peak_bytes <= budget
    assert STREAM not in [runtime.plan.placement(n).mode for n in quantised]

    reference = load(stage1_dir, stage2_dir, stage3_dir)
    apply_int8(cascade_modules(reference), tuple(quantised))
    kw = dict(steps=steps, seed=3, height=8, width=8, output_type="pt", progress=False)
    for want, got in zip(reference("a red cat", **kw).stages, cascade("a red cat", **kw).stages, strict=True):
        assert torch.equal(want, got)


def test_weights_int8_without_a_budget_quantises_every_unet(stage1_dir, stage2_dir, stage3_dir):
    cascade = ifengine.Cascade.from_pretrained(stage1_dir, stage2_dir, stage3_dir, safety=False, weights="int8")
    modules = cascade_modules(cascade)
    assert all(is_quantized(modules[n]) for n in ("unet1", "unet2", "x4_unet"))
    assert not any(is_quantized(modules[n]) for n in ("t5", "clip", "vae_decoder"))
    assert cascade.runtime is not None and cascade.runtime.plan is None  # no budget: nothing is placed
    out = cascade("a red cat", steps=(2, 2, 2), seed=0, output_type="pt", progress=False)
    assert all(torch.isfinite(s).all() for s in out.stages)


def test_an_int8_step_is_capturable_and_compiles_as_one_graph():
    """Dequantising inside the forward adds no host read and no graph break: it stays one captured step."""
    torch.manual_seed(0)
    unet = IFUNet(UNET_PRESETS["tiny-I"]).eval()
    quantize_module(unet)
    tables = ddpm_tables(IF_STAGE1_DDPM, num_inference_steps=5)
    x, noise, embeds = torch.randn(1, 3, 16, 16), torch.randn(1, 3, 16, 16), torch.randn(2, 77, 32)
    index, guidance = torch.tensor(1), torch.tensor(7.0)
    with torch.no_grad():
        found = audit(lambda: if_step(unet, tables, index, x, embeds, noise, guidance, True))
        assert found.problems == [] and found.ops > 100
        compiled = UNetBackend(TorchBackendOptions(compile=True, compile_backend="eager")).unet_for(unet)
        args = (torch.randn(2, 3, 16, 16), torch.tensor(5), embeds)
        assert torch.equal(compiled(*args), unet(*args))
