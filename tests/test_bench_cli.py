"""`ifengine bench --quick`: the standard set on a CPU machine (FLOP counts + host overhead), once.

The FLOP counts of the full-size models (meta device) are checked against three outside references:
the published per-call figures of if-facts.md (written out below, not read from the code's table),
the same count on diffusers' own U-Net and VAE built from the same configs, and, for T5, the count by
hand from the encoder's shape.
"""

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ifengine.cli import main
from ifengine.models.presets import unet_preset, vae_preset
from reference_utils import config_kwargs

# /work/shared/reference/if-facts.md, "Work per image": FLOP per call at default shapes, CFG batch 2,
# given to 2 decimals in TFLOP (so a count that rounds to them is within 0.005 T)
PUBLISHED = {"t5": 1.43e12, "stage1": 5.76e12, "stage2": 6.18e12, "stage3": 9.06e12, "vae": 18.98e12}
ROUNDING = 0.005e12


@pytest.fixture(scope="module")
def standard_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    before = torch.get_num_threads()
    try:
        assert main(["bench", "--quick", "--no-gpu", "--quiet", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(before)
    return out


@pytest.fixture(scope="module")
def counted(standard_run) -> dict[str, dict]:
    return json.loads((standard_run / "work.json").read_text())["components"]


def test_standard_set_writes_every_result(standard_run, capsys):
    for name, files in {"work": ("json", "md"), "host_overhead": ("json", "md", "png")}.items():
        for ext in files:
            assert (standard_run / f"{name}.{ext}").is_file(), f"{name}.{ext} missing"
    assert not list(standard_run.glob(".*"))  # atomic writes leave no temporary files behind


@pytest.mark.parametrize("key", list(PUBLISHED))
def test_flop_counts_reproduce_the_published_figures(counted, key):
    component = counted[key]
    assert component["flops_per_call"] == pytest.approx(PUBLISHED[key], abs=ROUNDING), component
    assert component["if_facts"] == PUBLISHED[key]  # the report's reference column is the published one
    assert component["rel_diff"] == pytest.approx(component["flops_per_call"] / PUBLISHED[key] - 1)


def test_t5_count_is_the_count_by_hand(counted):
    """T5 v1.1 XXL (if-facts.md): per layer and token, q/k/v/o projections and the gated-GELU FFN
    (wi_0, wi_1, wo) are 2 * (4 d * inner + 3 d * d_ff) FLOP; per layer and sequence, scores and
    attention-weighted values are 2 * 2 * heads * L^2 * d_kv. Two sequences (prompt, negative) of 77."""
    d_model, d_ff, heads, d_kv, layers, length, sequences = 4096, 10240, 64, 64, 24, 77, 2
    projections = 2 * sequences * length * (4 * d_model * heads * d_kv + 3 * d_model * d_ff)
    attention = 2 * 2 * sequences * heads * length**2 * d_kv
    assert counted["t5"]["flops_per_call"] == layers * (projections + attention)


def _meta(*shape, dtype=torch.float32):
    return torch.zeros(shape, dtype=dtype, device="meta")


def _count(call, *args, **kwargs) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        call(*args, **kwargs)
    return counter.get_total_flops()


def _diffusers_count(key: str) -> int:
    """The same call counted on diffusers' UNet2DConditionModel / AutoencoderKL (meta, no weights)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    if key == "vae":
        with torch.device("meta"):
            vae = AutoencoderKL(**config_kwargs(vae_preset("x4-vae"))).eval()
        return _count(vae.decode, _meta(1, 4, 256, 256))  # to 1024 px
    preset, size = {"stage1": ("IF-I-XL", 64), "stage2": ("IF-II-L", 256), "stage3": ("x4-upscaler", 256)}[key]
    config = unet_preset(preset)
    kwargs = config_kwargs(config)
    kwargs["cross_attention_dim"] = kwargs["cross_attention_dim"][0]  # one value for every block here
    if kwargs["num_attention_heads"] is None:
        del kwargs["num_attention_heads"]  # diffusers refuses it; attention_head_dim carries the heads
    with torch.device("meta"):
        unet = UNet2DConditionModel(**kwargs).eval()
    labels = _meta(2, dtype=torch.long) if config.class_embed_type or config.num_class_embeds else None
    text = _meta(2, 77, config.encoder_hid_dim or config.cross_attention_dim[0])
    sample = _meta(2, config.in_channels, size, size)
    return _count(unet, sample, _meta(2, dtype=torch.long), text, class_labels=labels)


# ~2-8 s each on 2 shared cores; stage II runs the same IFUNet code as stage I, so it waits for the slow run
@pytest.mark.parametrize("key", ["stage1", pytest.param("stage2", marks=pytest.mark.slow), "stage3", "vae"])
def test_unet_and_vae_counts_equal_diffusers(counted, key):
    """Our modules do exactly the matmul/conv/attention work of diffusers' for the same config."""
    assert counted[key]["flops_per_call"] == _diffusers_count(key)


def test_work_table_states_the_floor(standard_run):
    table = (standard_run / "work.md").read_text()
    assert "| component | counted / call |" in table and "floor" in table
    payload = json.loads((standard_run / "work.json").read_text())
    assert 1.5e15 < payload["total_flops"] < 1.65e15  # if-facts.md: ~1.58 PFLOP per 1024px image
