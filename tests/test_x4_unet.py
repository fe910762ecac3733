"""X4UNet against diffusers' UNet2DConditionModel built from the same tiny config."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from ifengine.models.config import UNetConfig
from ifengine.models.presets import UNET_PRESETS
from ifengine.models.x4_unet import X4UNet
from reference_utils import assert_strict_load_refuses, config_kwargs, perturb, rel_err

TINY = UNET_PRESETS["tiny-x4"]
TEXT_TOKENS = 7


def diffusers_kwargs(config: UNetConfig) -> dict:
    """Our dataclass as UNet2DConditionModel keyword arguments."""
    kwargs = config_kwargs(config)
    if len(set(kwargs["cross_attention_dim"])) == 1:
        kwargs["cross_attention_dim"] = kwargs["cross_attention_dim"][0]
    if kwargs["num_attention_heads"] is None:
        del kwargs["num_attention_heads"]  # diffusers refuses it; attention_head_dim carries the heads
    return kwargs


@pytest.fixture(scope="module")
def pair() -> tuple[X4UNet, UNet2DConditionModel]:
    torch.manual_seed(0)
    ref = UNet2DConditionModel(**diffusers_kwargs(TINY)).eval()
    perturb(ref)
    ours = X4UNet(TINY).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def inputs(batch: int, h: int, w: int, dtype: torch.dtype = torch.float32) -> tuple:
    g = torch.Generator().manual_seed(batch * 100 + h + w)
    sample = torch.randn(batch, TINY.in_channels, h, w, generator=g, dtype=dtype)
    timestep = torch.tensor([981, 21][:batch])
    context = torch.randn(batch, TEXT_TOKENS, TINY.cross_attention_dim[0], generator=g, dtype=dtype)
    labels = torch.tensor([20, 350][:batch])
    return sample, timestep, context, labels


def test_state_dict_keys_equal_diffusers(pair):
    ours, ref = pair
    assert set(ours.state_dict()) == set(ref.state_dict())
    assert all(ours.state_dict()[k].shape == v.shape for k, v in ref.state_dict().items())


def test_strict_load_rejects_missing_and_unexpected_keys(pair):
    _, ref = pair
    assert_strict_load_refuses(
        X4UNet(TINY), ref.state_dict(), "conv_in.weight", {"add_embedding.linear_1.weight": torch.zeros(1)}
    )


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("size", [(16, 16), (16, 24)])
@torch.no_grad()
def test_matches_diffusers(pair, batch, size):
    ours, ref = pair
    sample, t, context, labels = inputs(batch, *size)
    expected = ref(sample, t, encoder_hidden_states=context, class_labels=labels).sample
    out = ours(sample, t, context, labels)
    assert out.shape == (batch, TINY.out_channels, *size)
    assert rel_err(out, expected) <= 1e-5


@torch.no_grad()
def test_config_variants_match_diffusers():
    """Settings the x4 checkpoint does not use but the module implements, checked against diffusers."""
    config = TINY.replace(
        layers_per_block=(1, 2, 1, 2),
        transformer_layers_per_block=(1, 2, 1, 2),
        use_linear_projection=False,
        only_cross_attention=(False, True, False, False),
        resnet_time_scale_shift="scale_shift",
        time_embedding_dim=40,
        time_embedding_act_fn="silu",
        mid_block_scale_factor=1.3,
        upcast_attention=True,
    )
    torch.manual_seed(1)
    ref = UNet2DConditionModel(**diffusers_kwargs(config)).eval()
    perturb(ref)
    ours = X4UNet(config).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    sample, t, context, labels = inputs(2, 16, 24)
    expected = ref(sample, t, encoder_hidden_states=context, class_labels=labels).sample
    assert rel_err(ours(sample, t, context, labels), expected) <= 1e-5


@torch.no_grad()
def test_timestep_and_label_forms_broadcast(pair):
    """A self-comparison on purpose: every accepted form of timestep and label means the same call."""
    ours, _ = pair
    sample, _, context, _ = inputs(2, 16, 16)
    expected = ours(sample, torch.tensor([500, 500]), context, torch.tensor([20, 20]))
    for t, label in [(torch.tensor(500), torch.tensor(20)), (500, 20), (500.0, torch.tensor([20]))]:
        assert torch.equal(ours(sample, t, context, label), expected)


def test_missing_class_labels_is_an_error(pair):
    ours, _ = pair
    sample, t, context, _ = inputs(1, 16, 16)
    with pytest.raises(ValueError, match="class_labels"):
        ours(sample, t, context)


@pytest.mark.parametrize(
    "change, name",
    [
        (dict(class_embed_type="timestep"), "class_embed_type"),
        (dict(addition_embed_type="text"), "addition_embed_type"),
        (dict(resnet_out_scale_factor=1.4), "resnet_out_scale_factor"),
        (dict(mid_block_type="UNetMidBlock2DSimpleCrossAttn"), "mid_block_type"),
    ],
)
def test_unsupported_config_names_the_field(change, name):
    with pytest.raises(ValueError, match=name):
        X4UNet(TINY.replace(**change))


@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 5e-2), (torch.float16, 5e-3)])
@torch.no_grad()
def test_half_precision_close_to_fp32(pair, dtype, tol):
    """Against our fp32 module, which test_matches_diffusers holds to diffusers' fp32 U-Net."""
    ours, _ = pair
    sample, t, context, labels = inputs(2, 16, 24)
    expected = ours(sample, t, context, labels)
    half = X4UNet(TINY).eval().to(dtype)
    half.load_state_dict(ours.state_dict())
    out = half(sample.to(dtype), t, context.to(dtype), labels)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel_err(out, expected) <= tol


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
@torch.no_grad()
def test_onnx_export_matches_torch(pair, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    ours, _ = pair
    sample, t, context, labels = inputs(2, 16, 24)
    path = tmp_path / "x4_unet.onnx"
    torch.onnx.export(
        ours,
        (sample, t, context, labels),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["sample", "timestep", "encoder_hidden_states", "class_labels"],
        output_names=["out"],
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = dict(
        sample=sample.numpy(), timestep=t.numpy(), encoder_hidden_states=context.numpy(), class_labels=labels.numpy()
    )
    (out,) = session.run(None, feeds)
    assert rel_err(torch.from_numpy(out), ours(sample, t, context, labels)) <= 1e-4


def test_full_size_parameter_count_on_meta():
    config = UNET_PRESETS["x4-upscaler"]
    with torch.device("meta"):
        ours = X4UNet(config)
        ref = UNet2DConditionModel(**diffusers_kwargs(config))
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in ref.parameters())
    assert 470e6 < count < 476e6
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
