"""Tiny random diffusers pipelines saved in the Hub layout of the IF cascade.

Every architecture field mirrors the real checkpoints (DeepFloyd IF-I-XL / IF-II-L and
stabilityai/stable-diffusion-x4-upscaler); only the widths, depths and vocabularies shrink.
Weights are random but seeded per component, so the same call writes the same bytes.
The configs are read-only module constants so other tests can mirror them exactly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import MappingProxyType as _frozen

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    IFPipeline,
    IFSuperResolutionPipeline,
    StableDiffusionUpscalePipeline,
    UNet2DConditionModel,
)
from diffusers.pipelines.deepfloyd_if.safety_checker import IFSafetyChecker
from diffusers.pipelines.deepfloyd_if.watermark import IFWatermarker
from safetensors.torch import load_file
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from ifengine.demo.tokenizers import clip_tokenizer_dir, t5_tokenizer_dir

SEED = 0
# IF-II scales residual outputs by 1/0.7071 (the original code's "/ sqrt(2)" approximation).
IF_SR_SCALE = 1 / 0.7071
SHARD_SIZE = "40KB"  # small enough to split the tiny T5 encoder into several shards

TINY_T5 = _frozen(
    dict(
        d_model=32,
        d_ff=37,
        d_kv=8,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",  # sets is_gated_act=True, dense_act_fn="gelu_new" (T5 v1.1)
        tie_word_embeddings=False,
        layer_norm_epsilon=1e-6,
        dropout_rate=0.1,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
)  # vocab_size comes from the tokenizer

# IF-I-XL layout: Resnet down block, then simple cross-attention blocks; text_proj of the
# raw T5 states to cross_attention_dim and attention pooling into the time embedding.
STAGE1_UNET = _frozen(
    dict(
        sample_size=16,
        in_channels=3,
        out_channels=6,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        attention_head_dim=8,
        norm_num_groups=8,
        # cross_attention_dim must divide by 32: the cross-attention group norm has 32 groups.
        cross_attention_dim=64,
        encoder_hid_dim=TINY_T5["d_model"],
        encoder_hid_dim_type="text_proj",
        addition_embed_type="text",
        addition_embed_type_num_heads=2,
        class_embed_type=None,
        cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift",
        act_fn="gelu",
        only_cross_attention=False,
        upcast_attention=False,
        use_linear_projection=False,
    )
)

# IF-II-L layout: noisy image + upscaled low-res image in, noise level as a timestep class.
STAGE2_UNET = _frozen(
    dict(
        STAGE1_UNET,
        sample_size=64,
        in_channels=6,
        out_channels=6,
        down_block_types=("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"),
        layers_per_block=(1, 1, 2),
        class_embed_type="timestep",
        time_embedding_dim=64,
        time_embedding_act_fn="gelu",
        resnet_skip_time_act=True,
        resnet_out_scale_factor=IF_SR_SCALE,
        mid_block_scale_factor=IF_SR_SCALE,
    )
)

# The x4 upscaler's text tower: OpenCLIP ViT-H text transformer (gelu, 77 positions).
TINY_CLIP_TEXT = _frozen(
    dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="gelu",
        projection_dim=32,
        layer_norm_eps=1e-5,
    )
)  # vocab_size and special ids come from the tokenizer

# stable-diffusion-x4-upscaler U-Net: 4 latent + 3 RGB channels in, noise level as class id.
# attention_head_dim is diffusers' legacy name for the number of heads here.
STAGE3_UNET = _frozen(
    dict(
        sample_size=16,
        in_channels=7,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        only_cross_attention=(True, True, True, False),
        use_linear_projection=True,
        block_out_channels=(16, 32, 32, 48),
        layers_per_block=1,
        attention_head_dim=2,
        norm_num_groups=8,
        cross_attention_dim=TINY_CLIP_TEXT["hidden_size"],
        num_class_embeds=1000,
        act_fn="silu",
    )
)

# x4 VAE: three levels (x4 spatial factor), 4 latent channels, the upscaler's scaling factor.
STAGE3_VAE = _frozen(
    dict(
        sample_size=64,
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        act_fn="silu",
        scaling_factor=0.08333,
    )
)

# Tiny stand-in for the CLIP ViT-L/14 safety model (only the vision tower is instantiated).
TINY_SAFETY_VISION = _frozen(
    dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=16,
    )
)
TINY_SAFETY_TEXT = _frozen(dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4))

# The schedulers exactly as the converted Hub checkpoints configure them.
STAGE1_SCHEDULER = _frozen(
    dict(
        beta_schedule="squaredcos_cap_v2",
        variance_type="learned_range",
        prediction_type="epsilon",
        thresholding=True,
        dynamic_thresholding_ratio=0.95,
        sample_max_value=1.5,
    )
)
STAGE2_SCHEDULER = _frozen(dict(STAGE1_SCHEDULER, sample_max_value=1.0))
STAGE2_NOISING_SCHEDULER = _frozen(dict(beta_schedule="squaredcos_cap_v2"))
STAGE3_SCHEDULER = _frozen(
    dict(
        beta_schedule="scaled_linear",
        beta_start=0.0001,
        beta_end=0.02,
        prediction_type="v_prediction",
        steps_offset=1,
        clip_sample=False,
        set_alpha_to_one=False,
    )
)
STAGE3_LOW_RES_SCHEDULER = _frozen(dict(beta_schedule="scaled_linear", beta_start=0.0001, beta_end=0.02))
STAGE3_MAX_NOISE_LEVEL = 350


def _seeded(build, *args, **kwargs):
    """Build one component from a fresh seed so it does not depend on what was built before."""
    torch.manual_seed(SEED)
    return build(*args, **kwargs).eval()


def t5_tokenizer() -> T5Tokenizer:
    return T5Tokenizer.from_pretrained(t5_tokenizer_dir())


def clip_tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(clip_tokenizer_dir())


def tiny_t5_encoder(vocab_size: int) -> T5EncoderModel:
    return _seeded(T5EncoderModel, T5Config(vocab_size=vocab_size, **TINY_T5))


def tiny_clip_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    ids = dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    return _seeded(CLIPTextModel, CLIPTextConfig(vocab_size=len(tokenizer), **TINY_CLIP_TEXT, **ids))


def _watermark_image() -> torch.Tensor:
    """A deterministic RGBA disc in the watermarker's (62, 62, 4) 0-255 buffer layout."""
    yy, xx = torch.meshgrid(torch.arange(62.0), torch.arange(62.0), indexing="ij")
    alpha = (((yy - 30.5) ** 2 + (xx - 30.5) ** 2) < 25.0**2).float() * 255.0
    rgb = torch.stack([xx * 4.0, yy * 4.0, torch.full_like(xx, 128.0)], dim=-1)
    return torch.cat([rgb, alpha[..., None]], dim=-1)


def safety_components() -> dict:
    """safety_checker, feature_extractor and watermarker, as the IF repos ship them."""
    config = CLIPConfig(text_config=dict(TINY_SAFETY_TEXT), vision_config=dict(TINY_SAFETY_VISION), projection_dim=16)
    size = TINY_SAFETY_VISION["image_size"]
    watermarker = _seeded(IFWatermarker)
    watermarker.watermark_image.copy_(_watermark_image())
    return dict(
        safety_checker=_seeded(IFSafetyChecker, config),
        feature_extractor=CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}),
        watermarker=watermarker,
    )


def load_if_safety_checker(folder) -> IFSafetyChecker:
    """Load a saved IFSafetyChecker without its from_pretrained.

    diffusers 0.42's IFSafetyChecker never calls post_init(), and transformers 5's
    from_pretrained then fails with "no attribute 'all_tied_weights_keys'".
    """
    folder = Path(folder)
    (weights,) = folder.glob("model*.safetensors")
    checker = IFSafetyChecker(CLIPConfig.from_pretrained(folder))
    checker.load_state_dict(load_file(weights))
    return checker.eval()


def _no_safety() -> dict:
    return dict(safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False)


def _save(pipe, out_dir, variant: str | None, shard: bool, tokenizer_src: Path) -> Path:
    out_dir = Path(out_dir)
    if variant is not None:
        # The Hub's fp16 variant files hold half-precision weights.
        pipe.to(dtype=torch.float16)
    pipe.save_pretrained(out_dir, variant=variant)
    if shard and getattr(pipe, "text_encoder", None) is not None:
        _reshard_text_encoder(pipe.text_encoder, out_dir / "text_encoder", variant)
    _match_hub_files(out_dir, tokenizer_src)
    return out_dir


def _match_hub_files(out_dir: Path, tokenizer_src: Path) -> None:
    """Undo what transformers 5 / a torchvision-less install write differently from the Hub."""
    # The Hub repos hold slow-tokenizer files (spiece.model or vocab.json + merges.txt), not
    # the tokenizer.json that a tokenizers-backed save_pretrained writes.
    shutil.rmtree(out_dir / "tokenizer")
    shutil.copytree(tokenizer_src, out_dir / "tokenizer")
    index_path = out_dir / "model_index.json"
    index = json.loads(index_path.read_text())
    if index.get("feature_extractor", [None])[0] == "transformers":
        # Without torchvision transformers saves the PIL fallback class name.
        index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    if index.get("text_encoder", [None, None])[1] == "T5EncoderModel":
        _match_hub_t5_config(out_dir / "text_encoder" / "config.json")


def _match_hub_t5_config(path: Path) -> None:
    """Write the T5 v1.1 flags as the Hub's (transformers 4) text_encoder/config.json has them.

    transformers 5 forces tie_word_embeddings=True (recording scale_decoder_outputs instead)
    and T5EncoderModel flips is_encoder_decoder/use_cache on the config it is given.
    """
    config = json.loads(path.read_text())
    config.pop("scale_decoder_outputs", None)
    config["torch_dtype"] = config.pop("dtype", "float32")
    config.update(tie_word_embeddings=False, is_encoder_decoder=True, use_cache=True)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _reshard_text_encoder(text_encoder, folder: Path, variant: str | None) -> None:
    """Only the text encoder is sharded on the Hub; re-save it in pieces plus an index."""
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    text_encoder.save_pretrained(folder, max_shard_size=SHARD_SIZE, variant=variant)


def make_stage1(out_dir, *, safety: bool = False, variant: str | None = None, shard: bool = False) -> Path:
    """Tiny IF-I: T5 encoder + tokenizer, stage-I U-Net and scheduler (+ safety parts)."""
    tokenizer = t5_tokenizer()
    extras = safety_components() if safety else _no_safety()
    pipe = IFPipeline(
        tokenizer=tokenizer,
        text_encoder=tiny_t5_encoder(len(tokenizer)),
        unet=_seeded(UNet2DConditionModel, **STAGE1_UNET),
        scheduler=DDPMScheduler(**STAGE1_SCHEDULER),
        **extras,
    )
    return _save(pipe, out_dir, variant, shard, t5_tokenizer_dir())


def make_stage2(out_dir, *, safety: bool = False, variant: str | None = None) -> Path:
    """Tiny IF-II: tokenizer but no text encoder (callers pass T5 embeddings), SR U-Net."""
    extras = safety_components() if safety else _no_safety()
    pipe = IFSuperResolutionPipeline(
        tokenizer=t5_tokenizer(),
        text_encoder=None,
        unet=_seeded(UNet2DConditionModel, **STAGE2_UNET),
        scheduler=DDPMScheduler(**STAGE2_SCHEDULER),
        image_noising_scheduler=DDPMScheduler(**STAGE2_NOISING_SCHEDULER),
        **extras,
    )
    return _save(pipe, out_dir, variant, False, t5_tokenizer_dir())


def make_stage3(out_dir, *, variant: str | None = None) -> Path:
    """Tiny stable-diffusion-x4-upscaler: CLIP text tower, latent U-Net, x4 VAE."""
    tokenizer = clip_tokenizer()
    pipe = StableDiffusionUpscalePipeline(
        vae=_seeded(AutoencoderKL, **STAGE3_VAE),
        text_encoder=tiny_clip_text_encoder(tokenizer),
        tokenizer=tokenizer,
        unet=_seeded(UNet2DConditionModel, **STAGE3_UNET),
        low_res_scheduler=DDPMScheduler(**STAGE3_LOW_RES_SCHEDULER),
        scheduler=DDIMScheduler(**STAGE3_SCHEDULER),
        max_noise_level=STAGE3_MAX_NOISE_LEVEL,
    )
    return _save(pipe, out_dir, variant, False, clip_tokenizer_dir())
