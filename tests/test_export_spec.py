"""The I/O specs: derived dims, serialisation, cascade size ranges, the step graphs' TopK limit."""

import pytest

from ifengine.export.sizes import cascade_sizes
from ifengine.export.spec import (
    MODEL,
    ComponentSpec,
    DimRange,
    SpecError,
    TensorSpec,
    if_unet_spec,
    t5_spec,
    vae_decoder_spec,
)
from ifengine.export.step_spec import (
    DDPM_COLUMNS,
    TOPK_MAX,
    if_step_spec,
    max_threshold_side,
    threshold_topk_k,
    x4_step_spec,
)
from ifengine.models.presets import unet_preset, vae_preset
from ifengine.schedule.presets import IF_STAGE1_DDPM, IF_STAGE2_DDPM, X4_DDIM

REAL = {1: unet_preset("IF-I-XL"), 2: unet_preset("IF-II-L"), 3: unet_preset("x4-upscaler")}


def test_real_cascade_sizes_match_the_published_resolutions():
    sizes = cascade_sizes(
        {n: c.sample_size for n, c in REAL.items()}, {n: c.downsample_factor for n, c in REAL.items()}
    )
    assert sizes[1] == DimRange(32, 64, 128, 8)
    assert sizes[2] == DimRange(128, 256, 512, 16)
    assert sizes[3] == DimRange(128, 256, 512, 8)
    # without stage I, each stage still gets the same range from its own sample size
    assert cascade_sizes({2: 256}, {2: 16})[2] == sizes[2]
    assert cascade_sizes({3: 128}, {3: 8})[3] == sizes[3]


def test_derived_dims_follow_their_base():
    spec = if_step_spec(REAL[1], 1, IF_STAGE1_DDPM, DimRange(32, 64, 128, 8))
    assert spec.ranges["cfg_batch"] == DimRange(2, 2, 16, 2)
    shapes = spec.input_shapes(batch=3, height=64, width=96, tokens=77, steps=100)
    assert shapes["text_embeds"] == (6, 77, 4096) and shapes["sample"] == (3, 3, 64, 96)
    assert shapes["schedule"] == (100, len(DDPM_COLUMNS)) and shapes["step"] == (1,)
    with pytest.raises(SpecError, match="cfg_batch must be 2 x batch"):
        spec.complete({"batch": 3, "cfg_batch": 5})
    vae = vae_decoder_spec(vae_preset("x4-vae"))
    assert vae.output_shapes(batch=1, height=256, width=128)["image"] == (1, 3, 1024, 512)


def test_out_of_range_dims_name_the_dim():
    spec = if_unet_spec(REAL[1], 1)
    with pytest.raises(SpecError, match=r"height=68 is outside 32\.\.128 \(multiple of 8\)"):
        spec.input_shapes(batch=2, height=68, width=64, tokens=77)
    with pytest.raises(SpecError, match="no value for dim 'tokens'"):
        spec.input_shapes(batch=2, height=64, width=64)


def test_round_trip_and_concrete_dtypes():
    spec = if_step_spec(REAL[2], 2, IF_STAGE2_DDPM, DimRange(128, 256, 512, 16))
    assert ComponentSpec.from_dict(spec.to_dict()) == spec
    fp16 = spec.with_dtype("float16")
    dtypes = {t.name: t.dtype for t in fp16.inputs}
    assert dtypes["sample"] == "float16" and dtypes["schedule"] == "float32" and dtypes["step"] == "int64"
    assert dtypes["noise_level"] == "float32" and MODEL not in {t.dtype for t in fp16.inputs + fp16.outputs}
    assert t5_spec().to_dict()["ranges"]["tokens"] == {"min": 1, "opt": 77, "max": 77, "multiple": 1}
    with pytest.raises(SpecError, match="unknown dtype"):
        ComponentSpec("x", (TensorSpec("a", "float64", (1,)),), ())


def test_step_graph_topk_stays_within_tensorrt_limit():
    assert threshold_topk_k(3 * 64 * 64, 0.95) == 616  # the quantile of a 64x64 stage I image
    side = max_threshold_side(3, 0.95, 8)
    assert threshold_topk_k(3 * side * side, 0.95) <= TOPK_MAX < threshold_topk_k(3 * (side + 8) ** 2, 0.95)
    assert side == 152
    if_step_spec(REAL[1], 1, IF_STAGE1_DDPM, DimRange(32, 64, 152, 8))  # the largest range accepted
    with pytest.raises(SpecError, match="at most 152x152"):
        if_step_spec(REAL[1], 1, IF_STAGE1_DDPM, DimRange(32, 64, 160, 8))
    # stage II thresholds with sample_max_value 1: a plain clip, no quantile, no limit
    if_step_spec(REAL[2], 2, IF_STAGE2_DDPM, DimRange(128, 256, 1024, 16))
    x4_step_spec(REAL[3], X4_DDIM, DimRange(128, 256, 512, 8))
