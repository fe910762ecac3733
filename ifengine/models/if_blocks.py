"""The down, mid and up blocks of the IF U-Nets (stage I and stage II).

Class and attribute names follow diffusers (``resnets``, ``attentions``, ``downsamplers``, ``upsamplers``)
so checkpoints load key for key. Resampling is done by a ResnetBlock2D with ``down``/``up`` set, as IF does.
Loops run over ModuleLists fixed at construction: no branch ever depends on a tensor value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .if_attention import AddedKVAttention
from .layers import ResnetSettings


@dataclass(frozen=True)
class AttentionSettings:
    """How one block builds its added-KV attentions."""

    head_dim: int
    context_dim: int
    groups: int
    cross_norm: str | None
    only_cross: bool

    def make(self, channels: int) -> AddedKVAttention:
        return AddedKVAttention(
            channels,
            self.head_dim,
            self.context_dim,
            self.groups,
            cross_norm=self.cross_norm,
            only_cross=self.only_cross,
        )


class _DownBlock(nn.Module):
    """``layers`` resnets, each optionally followed by attention, then an optional halving resnet.

    Returns the block output and every intermediate state the up path concatenates back (its skips).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        layers: int,
        resnet: ResnetSettings,
        attn: AttentionSettings | None,
        add_downsample: bool,
    ):
        super().__init__()
        # registration order mirrors diffusers so state_dict() lists keys in the same order
        self.attentions = nn.ModuleList(attn.make(out_ch) for _ in range(layers)) if attn else None
        self.resnets = nn.ModuleList(resnet.make(in_ch if i == 0 else out_ch, out_ch) for i in range(layers))
        self.downsamplers = nn.ModuleList([resnet.make(out_ch, out_ch, down=True)]) if add_downsample else None

    def forward(
        self, h: torch.Tensor, temb: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        skips: tuple[torch.Tensor, ...] = ()
        for i, resnet in enumerate(self.resnets):
            h = resnet(h, temb)
            if self.attentions is not None:
                h = self.attentions[i](h, context)
            skips += (h,)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h, temb)
            skips += (h,)
        return h, skips


class ResnetDownsampleBlock2D(_DownBlock):
    """Resnets only; downsampling by a resnet with average pooling inside."""

    def __init__(self, in_ch: int, out_ch: int, layers: int, resnet: ResnetSettings, add_downsample: bool):
        super().__init__(in_ch, out_ch, layers, resnet, None, add_downsample)


class SimpleCrossAttnDownBlock2D(_DownBlock):
    """Resnet + added-KV attention pairs; downsampling by a resnet with average pooling inside."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        layers: int,
        resnet: ResnetSettings,
        attn: AttentionSettings,
        add_downsample: bool,
    ):
        super().__init__(in_ch, out_ch, layers, resnet, attn, add_downsample)


class _UpBlock(nn.Module):
    """``layers`` resnets on [h, skip] concatenations, each optionally followed by attention, then an
    optional doubling resnet. Consumes exactly ``num_skips`` skips, the last one first."""

    def __init__(
        self,
        in_ch: int,
        prev_ch: int,
        out_ch: int,
        layers: int,
        resnet: ResnetSettings,
        attn: AttentionSettings | None,
        add_upsample: bool,
    ):
        super().__init__()
        self.attentions = nn.ModuleList(attn.make(out_ch) for _ in range(layers)) if attn else None
        self.resnets = nn.ModuleList(
            resnet.make(_up_resnet_in(i, layers, in_ch, prev_ch, out_ch), out_ch) for i in range(layers)
        )
        self.upsamplers = nn.ModuleList([resnet.make(out_ch, out_ch, up=True)]) if add_upsample else None

    @property
    def num_skips(self) -> int:
        return len(self.resnets)

    def forward(
        self,
        h: torch.Tensor,
        skips: tuple[torch.Tensor, ...] | list[torch.Tensor],
        temb: torch.Tensor,
        context: torch.Tensor,
    ) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            h = resnet(torch.cat([h, skips[-1 - i]], dim=1), temb)
            if self.attentions is not None:
                h = self.attentions[i](h, context)
        if self.upsamplers is not None:
            h = self.upsamplers[0](h, temb)
        return h


def _up_resnet_in(i: int, layers: int, in_ch: int, prev_ch: int, out_ch: int) -> int:
    """Input width of up-resnet i: its own stream plus the skip it concatenates.

    The first resnet continues the previous (deeper) block; the last one takes the skip that entered the
    matching down block, which has that block's input width.
    """
    stream = prev_ch if i == 0 else out_ch
    skip = in_ch if i == layers - 1 else out_ch
    return stream + skip


class ResnetUpsampleBlock2D(_UpBlock):
    """Resnets only; upsampling by a resnet with nearest x2 inside."""

    def __init__(self, in_ch: int, prev_ch: int, out_ch: int, layers: int, resnet: ResnetSettings, add_upsample: bool):
        super().__init__(in_ch, prev_ch, out_ch, layers, resnet, None, add_upsample)


class SimpleCrossAttnUpBlock2D(_UpBlock):
    """Resnet + added-KV attention pairs; upsampling by a resnet with nearest x2 inside."""

    def __init__(
        self,
        in_ch: int,
        prev_ch: int,
        out_ch: int,
        layers: int,
        resnet: ResnetSettings,
        attn: AttentionSettings,
        add_upsample: bool,
    ):
        super().__init__(in_ch, prev_ch, out_ch, layers, resnet, attn, add_upsample)


class UNetMidBlock2DSimpleCrossAttn(nn.Module):
    """resnet, then ``layers`` (attention, resnet) pairs, at the lowest resolution."""

    def __init__(self, channels: int, resnet: ResnetSettings, attn: AttentionSettings, layers: int = 1):
        super().__init__()
        self.attentions = nn.ModuleList(attn.make(channels) for _ in range(layers))
        self.resnets = nn.ModuleList(resnet.make(channels, channels) for _ in range(layers + 1))

    def forward(self, h: torch.Tensor, temb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = self.resnets[0](h, temb)
        for i, attn in enumerate(self.attentions):
            h = self.resnets[i + 1](attn(h, context), temb)
        return h
