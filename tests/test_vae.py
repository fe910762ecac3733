"""VAEDecoder against diffusers' AutoencoderKL built from the same tiny config."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from diffusers import AutoencoderKL

from ifengine.models.presets import VAE_PRESETS
from ifengine.models.vae import DECODER_PREFIXES, VAEDecoder, decode_dtype, decoder_state_dict
from reference_utils import assert_strict_load_refuses, config_kwargs, perturb, rel_err

TINY = VAE_PRESETS["tiny-vae"]
SF = TINY.scaling_factor
# Tiles normalise with their own GroupNorm statistics (as in diffusers' tiled decode), so tiling is an
# approximation; on the smooth periodic latent below the tiny random VAE shows 4.5e-2 relative.
TILE_TOLERANCE = 0.08


def latents(batch: int, h: int, w: int) -> torch.Tensor:
    """Random latents at the scale the U-Net produces (decode divides by scaling_factor)."""
    g = torch.Generator().manual_seed(batch * 100 + h + w)
    return SF * torch.randn(batch, TINY.latent_channels, h, w, generator=g)


def smooth_latents(h: int, w: int, period: float = 16.0) -> torch.Tensor:
    """Low-frequency periodic latents: every tile sees similar statistics, as in a stationary texture."""
    y = torch.arange(h, dtype=torch.float32)[:, None] * 2 * math.pi / period
    x = torch.arange(w, dtype=torch.float32)[None, :] * 2 * math.pi / period
    channels = [torch.sin(x + k) + torch.cos(y - 2 * k) for k in range(TINY.latent_channels)]
    return SF * torch.stack(channels)[None]


@pytest.fixture(scope="module")
def pair() -> tuple[VAEDecoder, AutoencoderKL]:
    torch.manual_seed(0)
    ref = AutoencoderKL(**config_kwargs(TINY)).eval()
    perturb(ref)
    ours = VAEDecoder(TINY).eval()
    ours.load_state_dict(decoder_state_dict(ref.state_dict()), strict=True)
    return ours, ref


def test_state_dict_keys_equal_diffusers_decoder(pair):
    ours, ref = pair
    full = set(ref.state_dict())
    assert set(ours.state_dict()) == {k for k in full if k.startswith(DECODER_PREFIXES)}
    dropped = full - set(ours.state_dict())
    assert dropped and all(k.startswith(("encoder.", "quant_conv.")) for k in dropped)


def test_strict_load_rejects_missing_and_unexpected_keys(pair):
    _, ref = pair
    full = ref.state_dict()
    # unfiltered, the full AutoencoderKL state brings encoder keys: unexpected in a decoder
    assert_strict_load_refuses(VAEDecoder(TINY), decoder_state_dict(full), "post_quant_conv.weight", full)


@pytest.mark.parametrize("size", [(8, 8), (8, 12)])
@torch.no_grad()
def test_decode_matches_diffusers(pair, size):
    ours, ref = pair
    z = latents(2, *size)
    expected = ref.decode(z / SF).sample  # what StableDiffusionUpscalePipeline does
    out = ours.decode(z)
    assert out.shape == (2, TINY.out_channels, size[0] * 4, size[1] * 4)
    assert rel_err(out, expected) <= 1e-5
    assert torch.equal(ours(z / SF), out)


@torch.no_grad()
def test_tiled_decode_close_to_untiled(pair):
    ours, _ = pair
    z = smooth_latents(64, 64)
    full = ours.decode(z)
    tiled = ours.decode_tiled(z, tile=48, overlap=16)
    assert tiled.shape == full.shape
    assert rel_err(tiled, full) <= TILE_TOLERANCE


@pytest.mark.parametrize("size, tile, overlap", [((24, 20), 12, 4), ((17, 30), 8, 3), ((16, 16), 6, 0)])
@torch.no_grad()
def test_tile_blending_is_exact_for_a_pointwise_decoder(monkeypatch, size, tile, overlap):
    """With a decoder that has no spatial context, tiling must not change a single pixel:
    this checks tile placement, the pinned last tile and weight normalisation on their own."""
    vae = VAEDecoder(TINY)

    def pointwise(z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(torch.tanh(z[:, :3]) * 2 + 1, scale_factor=4, mode="nearest")

    monkeypatch.setattr(vae, "forward", pointwise)
    z = latents(2, *size)
    assert rel_err(vae.decode_tiled(z, tile, overlap), vae.decode(z)) <= 1e-6


@torch.no_grad()
def test_tiled_decode_exact_when_one_tile_covers(pair):
    ours, _ = pair
    z = latents(1, 8, 12)
    assert torch.equal(ours.decode_tiled(z, tile=12, overlap=4), ours.decode(z))


@torch.no_grad()
def test_tiled_decode_single_axis_tiling_keeps_shape(pair):
    ours, _ = pair
    z = smooth_latents(8, 30)
    assert ours.decode_tiled(z, tile=10, overlap=0).shape == (1, 3, 32, 120)


def test_tiled_decode_rejects_bad_overlap(pair):
    ours, _ = pair
    with pytest.raises(ValueError, match="overlap"):
        ours.decode_tiled(latents(1, 8, 8), tile=4, overlap=4)


def test_decode_dtype_follows_force_upcast():
    assert decode_dtype(TINY, torch.float16) == torch.float32
    assert decode_dtype(TINY, torch.bfloat16) == torch.bfloat16
    assert decode_dtype(dataclasses.replace(TINY, force_upcast=False), torch.float16) == torch.float16


@pytest.mark.parametrize(
    "change, name",
    [
        (dict(up_block_types=("UpDecoderBlock2D", "AttnUpDecoderBlock2D", "UpDecoderBlock2D")), "up_block_types"),
        (dict(act_fn="relu"), "activation"),
    ],
)
def test_unsupported_config_is_a_value_error(change, name):
    with pytest.raises(ValueError, match=name):
        VAEDecoder(dataclasses.replace(TINY, **change))


@torch.no_grad()
def test_bf16_close_to_fp32(pair):
    """Against our fp32 decoder, which test_decode_matches_diffusers holds to diffusers' AutoencoderKL."""
    ours, _ = pair
    z = latents(1, 8, 12)
    half = VAEDecoder(TINY).eval().to(torch.bfloat16)
    half.load_state_dict(ours.state_dict())
    out = half.decode(z)  # decode casts the float32 latents to the weights' dtype
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert rel_err(out, ours.decode(z)) <= 5e-2


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
@torch.no_grad()
def test_onnx_export_matches_torch(pair, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    ours, _ = pair
    z = latents(1, 8, 12) / SF
    path = tmp_path / "vae_decoder.onnx"
    torch.onnx.export(
        ours, (z,), str(path), dynamo=False, opset_version=17, input_names=["latents"], output_names=["image"]
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"latents": z.numpy()})
    assert rel_err(torch.from_numpy(out), ours(z)) <= 1e-4


def test_full_size_parameter_count_on_meta():
    config = VAE_PRESETS["x4-vae"]
    with torch.device("meta"):
        ours = VAEDecoder(config)
        ref = AutoencoderKL(**config_kwargs(config))
    expected = {k: v.shape for k, v in ref.state_dict().items() if k.startswith(DECODER_PREFIXES)}
    assert {k: v.shape for k, v in ours.state_dict().items()} == expected
    assert sum(p.numel() for p in ours.parameters()) == sum(s.numel() for s in expected.values())
