"""Transformer and U-Net blocks of the Stable Diffusion x4 upscaler (stage III).

Module and parameter names follow diffusers' ``Transformer2DModel``, ``BasicTransformerBlock`` and the
``CrossAttn{Down,Up}Block2D`` / ``{Down,Up}Block2D`` / ``UNetMidBlock2DCrossAttn`` blocks, so the
checkpoint's state dict loads key for key. Control flow depends only on construction settings; attention
runs through ``scaled_dot_product_attention`` so export and CUDA-graph capture see one fused op.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Downsample2D, ResnetSettings, Upsample2D


@dataclass(frozen=True)
class AttnSettings:
    """The Transformer2DModel of one block."""

    heads: int
    cross_dim: int
    groups: int
    layers: int = 1
    linear_proj: bool = True
    only_cross: bool = False
    upcast: bool = False


class Attention(nn.Module):
    """Multi-head attention on (batch, tokens, dim); keys/values from ``context`` when given."""

    def __init__(
        self,
        query_dim: int,
        heads: int,
        dim_head: int,
        context_dim: int | None = None,
        bias: bool = False,
        upcast: bool = False,
    ):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.upcast = heads, upcast
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=bias)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=bias)
        # a list so the key is "to_out.0" as in diffusers (index 1 there is a parameter-free dropout)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = self._split(self.to_q(x)), self._split(self.to_k(context)), self._split(self.to_v(context))
        if self.upcast:
            # upcast_attention checkpoints overflow in half precision inside QK^T
            q, k, v = q.float(), k.float(), v.float()
        out = F.scaled_dot_product_attention(q, k, v).to(x.dtype)
        out = out.transpose(1, 2).flatten(2)
        return self.to_out[0](out)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        """(B, N, H*D) -> (B, H, N, D)."""
        return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)


class GEGLU(nn.Module):
    """Gated GELU: one projection to twice the width, the second half gates the first."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU MLP; ``net.1`` is diffusers' dropout slot, kept so ``net.2`` keeps its key."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Pre-norm attention, cross-attention and feed-forward, each residual.

    With ``only_cross`` the first attention also reads the text states (the x4 upscaler's top levels),
    so no self-attention runs over the large latent token sets.
    """

    def __init__(self, dim: int, s: AttnSettings):
        super().__init__()
        dim_head = dim // s.heads
        self.only_cross = s.only_cross
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, s.heads, dim_head, s.cross_dim if s.only_cross else None, upcast=s.upcast)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, s.heads, dim_head, s.cross_dim, upcast=s.upcast)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x), context if self.only_cross else None)
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class Transformer2DModel(nn.Module):
    """GroupNorm, project to tokens, transformer layers, project back, add the input."""

    def __init__(self, channels: int, s: AttnSettings):
        super().__init__()
        if channels % s.heads:
            raise ValueError(f"{channels} channels do not split into {s.heads} attention heads")
        self.linear_proj = s.linear_proj
        self.norm = nn.GroupNorm(s.groups, channels, eps=1e-6)
        self.proj_in = _projection(channels, s.linear_proj)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(channels, s) for _ in range(s.layers)])
        self.proj_out = _projection(channels, s.linear_proj)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        if not self.linear_proj:
            h = self.proj_in(h)
        tokens = h.flatten(2).transpose(1, 2)  # (B, H*W, C)
        if self.linear_proj:
            tokens = self.proj_in(tokens)
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        if self.linear_proj:
            tokens = self.proj_out(tokens)
        h = tokens.transpose(1, 2).reshape(x.shape)
        if not self.linear_proj:
            h = self.proj_out(h)
        return h + x


def _projection(channels: int, linear: bool) -> nn.Module:
    """Channel mixing in or out of token space: Linear on tokens (SD 2.x / x4) or a 1x1 conv (SD 1.x)."""
    return nn.Linear(channels, channels) if linear else nn.Conv2d(channels, channels, 1)


class DownBlock2D(nn.Module):
    """Resnets, then an optional strided-conv downsample; returns every intermediate as a skip."""

    def __init__(
        self, in_ch: int, out_ch: int, layers: int, rs: ResnetSettings, add_downsample: bool, padding: int = 1
    ):
        super().__init__()
        self.resnets = nn.ModuleList([rs.make(in_ch if i == 0 else out_ch, out_ch) for i in range(layers)])
        self.downsamplers = (
            nn.ModuleList([Downsample2D(out_ch, True, out_ch, padding=padding)]) if add_downsample else None
        )

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i in range(len(self.resnets)):
            x = self._layer(i, x, temb, context)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips

    def _layer(self, i: int, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.resnets[i](x, temb)


class CrossAttnDownBlock2D(DownBlock2D):
    """DownBlock2D with a Transformer2DModel after every resnet."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        layers: int,
        rs: ResnetSettings,
        attn: AttnSettings,
        add_downsample: bool,
        padding: int = 1,
    ):
        super().__init__(in_ch, out_ch, layers, rs, add_downsample, padding)
        self.attentions = nn.ModuleList([Transformer2DModel(out_ch, attn) for _ in range(layers)])

    def _layer(self, i: int, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.attentions[i](self.resnets[i](x, temb), context)


class UpBlock2D(nn.Module):
    """Concatenate a skip, run a resnet, repeat; then an optional nearest-x2 + conv upsample."""

    def __init__(self, in_ch: int, prev_ch: int, out_ch: int, layers: int, rs: ResnetSettings, add_upsample: bool):
        super().__init__()
        # the last resnet takes the skip that entered the matching down block, hence in_ch
        widths = [(prev_ch if i == 0 else out_ch) + (in_ch if i == layers - 1 else out_ch) for i in range(layers)]
        self.resnets = nn.ModuleList([rs.make(w, out_ch) for w in widths])
        self.upsamplers = nn.ModuleList([Upsample2D(out_ch, True, out_ch)]) if add_upsample else None

    def forward(
        self, x: torch.Tensor, skips: list[torch.Tensor], temb: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        """``skips`` are this block's skips in the order the down path made them (consumed last first)."""
        for i, skip in enumerate(reversed(skips)):
            x = self._layer(i, torch.cat([x, skip], dim=1), temb, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x

    def _layer(self, i: int, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.resnets[i](x, temb)


class CrossAttnUpBlock2D(UpBlock2D):
    """UpBlock2D with a Transformer2DModel after every resnet."""

    def __init__(
        self,
        in_ch: int,
        prev_ch: int,
        out_ch: int,
        layers: int,
        rs: ResnetSettings,
        attn: AttnSettings,
        add_upsample: bool,
    ):
        super().__init__(in_ch, prev_ch, out_ch, layers, rs, add_upsample)
        self.attentions = nn.ModuleList([Transformer2DModel(out_ch, attn) for _ in range(layers)])

    def _layer(self, i: int, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.attentions[i](self.resnets[i](x, temb), context)


class UNetMidBlock2DCrossAttn(nn.Module):
    """resnet, then (transformer, resnet) pairs at the lowest resolution."""

    def __init__(self, channels: int, rs: ResnetSettings, attn: AttnSettings, layers: int = 1):
        super().__init__()
        self.resnets = nn.ModuleList([rs.make(channels, channels) for _ in range(layers + 1)])
        self.attentions = nn.ModuleList([Transformer2DModel(channels, attn) for _ in range(layers)])

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:], strict=True):
            x = resnet(attn(x, context), temb)
        return x
