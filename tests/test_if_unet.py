"""IFUNet against diffusers' UNet2DConditionModel (the reference) on tiny IF-I / IF-II layouts."""

from __future__ import annotations

import diffusers
import pytest
import torch
from diffusers.models.attention_processor import AttnAddedKVProcessor, AttnAddedKVProcessor2_0

from ifengine.models.config import UNetConfig
from ifengine.models.if_unet import IFUNet
from ifengine.models.presets import UNET_PRESETS
from reference_utils import config_kwargs, perturb, rel_err

TOL = 1e-5  # max |ours - reference| / max |reference| in float32
SIZES = [(1, 16, 16), (2, 24, 16), (2, 16, 32)]  # (batch, H, W): square and both non-square orientations


def diffusers_kwargs(cfg: UNetConfig) -> dict:
    """Our config as UNet2DConditionModel keyword arguments."""
    kw = config_kwargs(cfg)
    assert len(set(kw["cross_attention_dim"])) == 1
    kw["cross_attention_dim"] = kw["cross_attention_dim"][0]  # the SimpleCrossAttn blocks need one int
    if kw["num_attention_heads"] is None:
        kw.pop("num_attention_heads")
    return kw


def reference_unet(cfg: UNetConfig, seed: int = 0) -> torch.nn.Module:
    """A random diffusers U-Net with every parameter perturbed, so no zero/one init makes a check trivial."""
    torch.manual_seed(seed)
    ref = diffusers.UNet2DConditionModel(**diffusers_kwargs(cfg)).eval()
    perturb(ref, 0.1)
    return ref


def ours_from(ref: torch.nn.Module, cfg: UNetConfig) -> IFUNet:
    model = IFUNet(cfg).eval()
    model.load_state_dict(ref.state_dict(), strict=True)
    return model


def inputs(cfg: UNetConfig, batch: int, h: int, w: int, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    text_dim = cfg.encoder_hid_dim or cfg.cross_attention_dim[0]
    args = dict(
        sample=torch.randn(batch, cfg.in_channels, h, w, generator=g),
        timestep=torch.tensor([999, 10][:batch]),  # different timestep per batch element
        encoder_hidden_states=torch.randn(batch, 77, text_dim, generator=g),
    )
    if cfg.class_embed_type == "timestep":
        args["class_labels"] = torch.tensor([250, 20][:batch])
    return args


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add overhead


@pytest.fixture(scope="module", params=["tiny-I", "tiny-II"])
def pair(request):
    cfg = UNET_PRESETS[request.param]
    ref = reference_unet(cfg)
    return cfg, ref, ours_from(ref, cfg)


@torch.no_grad()
@pytest.mark.parametrize("batch,h,w", SIZES)
def test_matches_diffusers(pair, batch, h, w):
    cfg, ref, ours = pair
    assert all(type(p) is AttnAddedKVProcessor2_0 for p in ref.attn_processors.values())  # IF's default
    args = inputs(cfg, batch, h, w)
    expected = ref(**args).sample
    out = ours(**args)
    assert out.shape == (batch, cfg.out_channels, h, w)
    assert rel_err(out, expected) <= TOL


@torch.no_grad()
def test_matches_classic_added_kv_processor(pair):
    """The non-SDPA processor (what set_default_attn_processor picks) gives the same numbers too."""
    cfg, _, ours = pair
    ref = reference_unet(cfg)
    ref.set_attn_processor(AttnAddedKVProcessor())
    args = inputs(cfg, 2, 16, 24)
    assert rel_err(ours(**args), ref(**args).sample) <= TOL


def test_state_dict_keys_and_shapes_equal_diffusers(pair):
    _, ref, ours = pair
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert list(our_sd) == list(ref_sd)
    assert all(our_sd[k].shape == ref_sd[k].shape for k in ref_sd)


def test_strict_loading_rejects_missing_and_unexpected_keys(pair):
    cfg, ref, _ = pair
    missing = dict(ref.state_dict())
    missing.pop("conv_out.weight")
    with pytest.raises(RuntimeError, match="conv_out.weight"):
        IFUNet(cfg).load_state_dict(missing, strict=True)
    extra = dict(ref.state_dict(), **{"mid_block.extra.weight": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="mid_block.extra.weight"):
        IFUNet(cfg).load_state_dict(extra, strict=True)


@torch.no_grad()
def test_from_diffusers_config_dict(pair):
    """The config diffusers writes to unet/config.json builds the same model."""
    cfg, ref, ours = pair
    model = IFUNet.from_config_dict(dict(ref.config)).eval()
    model.load_state_dict(ref.state_dict(), strict=True)
    args = inputs(cfg, 1, 16, 16)
    assert torch.equal(model(**args), ours(**args))


@torch.no_grad()
def test_timestep_forms_agree(pair):
    """Python number, 0-d tensor and a (B,) tensor broadcast to the same result."""
    cfg, _, ours = pair
    args = inputs(cfg, 2, 16, 16)
    args["timestep"] = torch.tensor([500, 500])
    if "class_labels" in args:
        args["class_labels"] = torch.tensor([100, 100])
    expected = ours(**args)
    for t in (500, 500.0, torch.tensor(500)):
        args["timestep"] = t
        if "class_labels" in args:
            args["class_labels"] = torch.tensor(100)
        assert torch.allclose(ours(**args), expected, rtol=0, atol=1e-6)


@torch.no_grad()
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 0.1), (torch.float16, 0.02)])
def test_low_precision_is_finite_and_close(pair, dtype, tol):
    """Loose bounds: diffusers' own bf16/fp16 runs sit ~3e-2 / ~4e-3 from fp32 on these models."""
    cfg, _, ours = pair
    args = inputs(cfg, 2, 16, 24)
    expected = ours(**args)
    low = IFUNet(cfg).eval().to(dtype)
    low.load_state_dict(ours.state_dict())
    cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in args.items()}
    out = low(**cast)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel_err(out, expected) < tol


@torch.no_grad()
def test_variant_config_matches_diffusers():
    """Paths the IF presets leave unused: only-cross attention (blocks and mid), per-block head widths,
    no encoder_hid_proj (text already at cross_attention_dim), upcast_attention, silu, default time norm."""
    cfg = UNET_PRESETS["tiny-I"].replace(
        only_cross_attention=(False, True, False),
        mid_block_only_cross_attention=True,
        attention_head_dim=(8, 16, 8),
        encoder_hid_dim=None,
        upcast_attention=True,
        act_fn="silu",
        resnet_time_scale_shift="default",
        time_embedding_act_fn="silu",
        mid_block_scale_factor=1.3,
    )
    ref = reference_unet(cfg)
    args = inputs(cfg, 2, 24, 16)
    assert rel_err(ours_from(ref, cfg)(**args), ref(**args).sample) <= TOL


@torch.no_grad()
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_onnx_export_matches_torch(pair, tmp_path):
    """Legacy (TorchScript) export at one shape; ORT then runs other batch sizes and H x W too,
    which shows nothing shape-dependent was baked into the graph."""
    import onnxruntime as ort

    cfg, _, ours = pair
    args = inputs(cfg, 2, 16, 24)
    spatial = {0: "batch", 2: "height", 3: "width"}
    dynamic = {name: {0: "batch"} for name in args} | {"sample": spatial, "out": spatial}
    path = tmp_path / "unet.onnx"
    torch.onnx.export(
        ours,
        tuple(args.values()),
        str(path),
        input_names=list(args),
        output_names=["out"],
        dynamic_axes=dynamic,
        opset_version=17,
        dynamo=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, h, w in [(2, 16, 24), (1, 32, 16)]:
        feed = inputs(cfg, batch, h, w, seed=batch)
        got = session.run(None, {k: v.numpy() for k, v in feed.items()})[0]
        assert rel_err(torch.from_numpy(got), ours(**feed)) <= TOL


@pytest.mark.parametrize(
    "change,field",
    [
        (dict(cross_attention_norm="layer_norm"), "cross_attention_norm"),
        (
            dict(down_block_types=("DownBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D")),
            "down_block_types",
        ),
        (
            dict(up_block_types=("CrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D")),
            "up_block_types",
        ),
        (dict(mid_block_type="UNetMidBlock2DCrossAttn"), "mid_block_type"),
        (dict(num_attention_heads=(2, 2, 2)), "num_attention_heads"),
        (dict(num_class_embeds=1000), "num_class_embeds"),
        (dict(cross_attention_dim=(64, 64, 32)), "cross_attention_dim"),
        (dict(act_fn="relu6"), "act_fn"),
        (dict(time_embedding_act_fn="tanh"), "time_embedding_act_fn"),
        (dict(resnet_time_scale_shift="ada_group"), "resnet_time_scale_shift"),
        (dict(only_cross_attention=(True, True, True)), "mid_block_only_cross_attention"),
        (dict(attention_head_dim=(8, 8, 48)), "attention_head_dim"),
        (dict(addition_embed_type="text_time"), "addition_embed_type"),
        (dict(class_embed_type="projection"), "class_embed_type"),
    ],
)
def test_unsupported_config_raises_naming_it(change, field):
    with pytest.raises(ValueError, match=field):
        IFUNet(UNET_PRESETS["tiny-I"].replace(**change))


@pytest.mark.parametrize("name,billions", [("IF-I-XL", 4.30), ("IF-II-L", 1.24)])
def test_full_size_parameter_count_matches_diffusers(name, billions):
    cfg = UNET_PRESETS[name]
    with torch.device("meta"):
        ours = IFUNet(cfg)
        ref = diffusers.UNet2DConditionModel(**diffusers_kwargs(cfg))
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in ref.parameters())
    assert round(count / 1e9, 2) == billions
    assert list(ours.state_dict()) == list(ref.state_dict())


def test_every_preset_builds():
    """Full-size presets are what benchmarks and the planner build: each must construct."""
    import torch

    from ifengine.models.presets import UNET_PRESETS
    from ifengine.models.x4_unet import X4UNet

    for name, config in UNET_PRESETS.items():
        with torch.device("meta"):
            model = (X4UNet if "x4" in name else IFUNet)(config)
        assert sum(p.numel() for p in model.parameters()) > 0, name
