"""Named presets for every component of the cascade, full size and tiny.

Full-size presets are used to build random-weight models for speed and memory benchmarks and for
planning; a checkpoint's own config.json always wins over them. IF-I-XL, IF-II-L and the x4 upscaler
follow their published configs; the widths of IF-I-M, IF-I-L and IF-II-M are not published outside the
gated repositories and are estimated from their parameter counts (marked ESTIMATE).
"""

from __future__ import annotations

from .config import TextEncoderConfig, UNetConfig, VAEConfig


def _if_stage1(
    widths: tuple[int, ...],
    layers: int,
    sample: int = 64,
    heads: int = 64,
    groups: int = 32,
    head_dim: int = 64,
    text_dim: int = 4096,
) -> UNetConfig:
    n = len(widths)
    return UNetConfig(
        in_channels=3,
        out_channels=6,
        sample_size=sample,
        block_out_channels=widths,
        down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("SimpleCrossAttnUpBlock2D",) * (n - 1) + ("ResnetUpsampleBlock2D",),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        layers_per_block=(layers,) * n,
        cross_attention_dim=(widths[-1],) * n,
        attention_head_dim=(head_dim,) * n,
        only_cross_attention=(False,) * n,
        transformer_layers_per_block=(1,) * n,
        act_fn="gelu",
        norm_num_groups=groups,
        encoder_hid_dim=text_dim,
        addition_embed_type="text",
        addition_embed_type_num_heads=heads,
        cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift",
    )


def _if_stage2(
    widths: tuple[int, ...],
    layers: tuple[int, ...],
    sample: int = 256,
    heads: int = 64,
    groups: int = 32,
    head_dim: int = 64,
    text_dim: int = 4096,
    attn_blocks: int = 2,
) -> UNetConfig:
    n = len(widths)
    plain = n - attn_blocks
    scale = 1 / 0.7071  # published: resnet_out_scale_factor = mid_block_scale_factor = 1/0.7071
    return UNetConfig(
        in_channels=6,
        out_channels=6,
        sample_size=sample,
        block_out_channels=widths,
        down_block_types=("ResnetDownsampleBlock2D",) * plain + ("SimpleCrossAttnDownBlock2D",) * attn_blocks,
        up_block_types=("SimpleCrossAttnUpBlock2D",) * attn_blocks + ("ResnetUpsampleBlock2D",) * plain,
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        layers_per_block=layers,
        cross_attention_dim=(widths[-1],) * n,
        attention_head_dim=(head_dim,) * n,
        only_cross_attention=(False,) * n,
        transformer_layers_per_block=(1,) * n,
        act_fn="gelu",
        norm_num_groups=groups,
        encoder_hid_dim=text_dim,
        addition_embed_type="text",
        addition_embed_type_num_heads=heads,
        cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift",
        class_embed_type="timestep",
        time_embedding_dim=widths[-1],
        time_embedding_act_fn="gelu",
        resnet_skip_time_act=True,
        resnet_out_scale_factor=scale,
        mid_block_scale_factor=scale,
    )


def _x4_unet(
    widths: tuple[int, ...], layers: int, heads: int, text_dim: int, groups: int = 32, sample: int = 128
) -> UNetConfig:
    n = len(widths)
    return UNetConfig(
        in_channels=7,
        out_channels=4,
        sample_size=sample,
        block_out_channels=widths,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        mid_block_type="UNetMidBlock2DCrossAttn",
        layers_per_block=(layers,) * n,
        cross_attention_dim=(text_dim,) * n,
        # diffusers' legacy naming: for this checkpoint "attention_head_dim" is the number of heads
        attention_head_dim=(heads,) * n,
        only_cross_attention=(True,) * (n - 1) + (False,),
        transformer_layers_per_block=(1,) * n,
        act_fn="silu",
        norm_num_groups=groups,
        num_class_embeds=1000,
        use_linear_projection=True,
    )


UNET_PRESETS: dict[str, UNetConfig] = {
    "IF-I-XL": _if_stage1((704, 1408, 2112, 2816), layers=3),
    "IF-I-L": _if_stage1((320, 640, 960, 1280), layers=3),  # ESTIMATE from 0.9 B parameters
    "IF-I-M": _if_stage1((192, 384, 576, 768), layers=3),  # ESTIMATE from 0.4 B parameters (0.36 B)
    "IF-II-L": _if_stage2((160, 320, 640, 960, 1280), layers=(2, 2, 3, 5, 5)),
    "IF-II-M": _if_stage2((96, 192, 384, 576, 768), layers=(2, 2, 3, 5, 5)),  # ESTIMATE from 0.45 B
    "x4-upscaler": _x4_unet((256, 512, 512, 1024), layers=2, heads=8, text_dim=1024),
    "tiny-I": _if_stage1((16, 32, 64), layers=1, sample=16, heads=2, groups=8, head_dim=8, text_dim=32),
    "tiny-II": _if_stage2(
        (16, 32, 64), layers=(1, 1, 2), sample=64, heads=2, groups=8, head_dim=8, text_dim=32, attn_blocks=1
    ),
    "tiny-x4": _x4_unet((16, 32, 32, 48), layers=1, heads=2, text_dim=32, groups=8, sample=16),
}

VAE_PRESETS: dict[str, VAEConfig] = {
    "x4-vae": VAEConfig(),
    "tiny-vae": VAEConfig(block_out_channels=(16, 16, 32), layers_per_block=1, norm_num_groups=8),
}

TEXT_PRESETS: dict[str, TextEncoderConfig] = {
    "t5-v1_1-xxl": TextEncoderConfig(
        "t5", hidden_size=4096, num_layers=24, num_heads=64, ffn_size=10240, vocab_size=32128
    ),
    "clip-vit-h-text": TextEncoderConfig(
        "clip",
        hidden_size=1024,
        num_layers=23,
        num_heads=16,
        ffn_size=4096,
        vocab_size=49408,
        extra={"hidden_act": "gelu"},
    ),
    "tiny-t5": TextEncoderConfig(
        "t5", hidden_size=32, num_layers=2, num_heads=4, ffn_size=37, vocab_size=512, head_dim=8, relative_buckets=8
    ),
    "tiny-clip": TextEncoderConfig(
        "clip", hidden_size=32, num_layers=2, num_heads=4, ffn_size=37, vocab_size=512, extra={"hidden_act": "gelu"}
    ),
}


def unet_preset(name: str) -> UNetConfig:
    return _lookup(UNET_PRESETS, name, "U-Net")


def vae_preset(name: str) -> VAEConfig:
    return _lookup(VAE_PRESETS, name, "VAE")


def text_preset(name: str) -> TextEncoderConfig:
    return _lookup(TEXT_PRESETS, name, "text encoder")


def _lookup(table: dict, name: str, what: str):
    if name not in table:
        raise ValueError(f"unknown {what} preset {name!r}; known: {', '.join(table)}")
    return table[name]
