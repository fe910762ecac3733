"""The Stable Diffusion x4 upscaler U-Net (stage III of the cascade), export-friendly.

Parameter names equal the keys of diffusers' ``UNet2DConditionModel`` state dict for this architecture.
The forward pass has no data-dependent control flow: timestep and noise level are broadcast to the batch
with reshape/expand, and every branch is decided by the config when the module is built.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .config import SD_DOWN_BLOCKS, SD_UP_BLOCKS, UNetConfig
from .layers import ResnetSettings, TimestepEmbedding, Timesteps, activation
from .x4_blocks import (
    AttnSettings,
    CrossAttnDownBlock2D,
    CrossAttnUpBlock2D,
    DownBlock2D,
    UNetMidBlock2DCrossAttn,
    UpBlock2D,
)

# Settings this module does not implement, with the values that mean "off" (diffusers ignores most of
# them for these block types; refusing them keeps a mismatched checkpoint from loading silently).
_OFF_VALUES = {
    "encoder_hid_dim": (None,),
    "addition_embed_type": (None,),
    "class_embed_type": (None,),
    "cross_attention_norm": (None,),
    "resnet_skip_time_act": (False,),
    "resnet_out_scale_factor": (1.0,),
    "mid_block_only_cross_attention": (None, False),
}


def check_x4_config(config: UNetConfig) -> None:
    """Raise ValueError naming every setting the x4 U-Net module cannot honour."""
    bad = [f"{name}={getattr(config, name)!r}" for name, off in _OFF_VALUES.items() if getattr(config, name) not in off]
    bad += [f"down_block_types={t!r}" for t in config.down_block_types if t not in SD_DOWN_BLOCKS]
    bad += [f"up_block_types={t!r}" for t in config.up_block_types if t not in SD_UP_BLOCKS]
    if config.mid_block_type != "UNetMidBlock2DCrossAttn":
        bad.append(f"mid_block_type={config.mid_block_type!r}")
    if bad:
        raise ValueError(f"X4UNet does not implement these config values: {', '.join(bad)}")


def attention_heads(config: UNetConfig) -> tuple[int, ...]:
    """Heads per down block. diffusers reads ``attention_head_dim`` as the head count when
    ``num_attention_heads`` is unset (a legacy naming kept for existing configs), and so do we."""
    return config.num_attention_heads or config.attention_head_dim


def batch_vector(value: torch.Tensor | float | int, batch: int, device: torch.device) -> torch.Tensor:
    """A 0-d tensor, python number or 1-D tensor as a 1-D tensor of length ``batch`` (static ops only).

    A python number becomes a host-to-device copy, so inside a captured CUDA graph pass tensors."""
    if not torch.is_tensor(value):
        value = torch.tensor([value], device=device)
    return value.reshape(-1).expand(batch)


class X4UNet(nn.Module):
    """Latent U-Net of stabilityai/stable-diffusion-x4-upscaler.

    Input ``sample`` is the noisy latent concatenated with the low-res RGB image on channels (7 in all);
    ``class_labels`` is the noise level applied to that image, embedded and added to the time embedding.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        check_x4_config(config)
        self.config = config
        c0 = config.block_out_channels[0]
        temb_dim = config.time_embedding_dim or 4 * c0
        self.conv_in = nn.Conv2d(config.in_channels, c0, 3, padding=1)
        self.time_proj = Timesteps(c0, config.flip_sin_to_cos, config.freq_shift)
        self.time_embedding = TimestepEmbedding(c0, temb_dim, act=config.act_fn)
        self.class_embedding = nn.Embedding(config.num_class_embeds, temb_dim) if config.num_class_embeds else None
        self.time_embed_act = activation(config.time_embedding_act_fn) if config.time_embedding_act_fn else None
        # skip_time_act and output_scale keep their defaults: check_x4_config refuses any other value
        rs = ResnetSettings(
            temb_ch=temb_dim,
            groups=config.norm_num_groups,
            eps=config.norm_eps,
            act=config.act_fn,
            time_norm=config.resnet_time_scale_shift,
        )
        self.down_blocks = nn.ModuleList(_down_blocks(config, rs))
        # the mid block never uses only_cross_attention (diffusers does not pass it there either)
        mid_attn = dataclasses.replace(_attn(config, -1), only_cross=False)
        self.mid_block = UNetMidBlock2DCrossAttn(
            config.block_out_channels[-1], rs.with_scale(config.mid_block_scale_factor), mid_attn
        )
        self.up_blocks = nn.ModuleList(_up_blocks(config, rs))
        self.conv_norm_out = nn.GroupNorm(config.norm_num_groups, c0, eps=config.norm_eps)
        self.conv_act = activation(config.act_fn)
        self.conv_out = nn.Conv2d(c0, config.out_channels, 3, padding=1)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        class_labels: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """Predict the model output (v for the x4 checkpoint) for ``sample`` at ``timestep``."""
        temb = self._embed(sample, timestep, class_labels)
        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, temb, encoder_hidden_states)
            skips += block_skips
        x = self.mid_block(x, temb, encoder_hidden_states)
        for block in self.up_blocks:
            n = len(block.resnets)
            x, skips = block(x, skips[-n:], temb, encoder_hidden_states), skips[:-n]
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))

    def _embed(
        self, sample: torch.Tensor, timestep: torch.Tensor | float | int, class_labels: torch.Tensor | int | None
    ) -> torch.Tensor:
        batch = sample.shape[0]
        # sinusoids are computed in float32 and cast to the model dtype, as the checkpoints were trained
        t_emb = self.time_proj(batch_vector(timestep, batch, sample.device)).to(sample.dtype)
        emb = self.time_embedding(t_emb)
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("this U-Net needs class_labels (the noise level of the low-res image)")
            labels = batch_vector(class_labels, batch, sample.device)
            emb = emb + self.class_embedding(labels).to(sample.dtype)
        if self.time_embed_act is not None:
            emb = self.time_embed_act(emb)
        return emb


def _attn(config: UNetConfig, i: int) -> AttnSettings:
    """Attention settings of down block ``i`` (the up path mirrors them with reversed indices)."""
    return AttnSettings(
        heads=attention_heads(config)[i],
        cross_dim=config.cross_attention_dim[i],
        groups=config.norm_num_groups,
        layers=config.transformer_layers_per_block[i],
        linear_proj=config.use_linear_projection,
        only_cross=config.only_cross_attention[i],
        upcast=config.upcast_attention,
    )


def _down_blocks(config: UNetConfig, rs: ResnetSettings) -> list[nn.Module]:
    widths, n = config.block_out_channels, config.num_blocks
    blocks = []
    for i, kind in enumerate(config.down_block_types):
        in_ch, out_ch = widths[max(i - 1, 0)], widths[i]
        args = (in_ch, out_ch, config.layers_per_block[i], rs)
        if kind == "CrossAttnDownBlock2D":
            blocks.append(CrossAttnDownBlock2D(*args, _attn(config, i), i < n - 1, config.downsample_padding))
        else:
            blocks.append(DownBlock2D(*args, i < n - 1, config.downsample_padding))
    return blocks


def _up_blocks(config: UNetConfig, rs: ResnetSettings) -> list[nn.Module]:
    widths, n = config.block_out_channels, config.num_blocks
    blocks = []
    for i, kind in enumerate(config.up_block_types):
        d = n - 1 - i  # the down block this up block mirrors
        prev_ch, out_ch, in_ch = widths[min(d + 1, n - 1)], widths[d], widths[max(d - 1, 0)]
        # one resnet more than the down block: it also consumes the down block's input skip
        args = (in_ch, prev_ch, out_ch, config.layers_per_block[d] + 1, rs)
        if kind == "CrossAttnUpBlock2D":
            blocks.append(CrossAttnUpBlock2D(*args, _attn(config, d), i < n - 1))
        else:
            blocks.append(UpBlock2D(*args, i < n - 1))
    return blocks
