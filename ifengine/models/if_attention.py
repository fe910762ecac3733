"""Attention pieces of the IF U-Nets: added-KV attention and the attention-pooled text embedding.

Parameter names follow diffusers (``to_q``, ``add_k_proj``, ``to_out.0``, ``pool.positional_embedding`` ...)
so a diffusers ``UNet2DConditionModel`` state dict loads key for key. Every attention goes through
``F.scaled_dot_product_attention``: one fused kernel on GPU (softmax accumulated in float32 there, which
is the upcast diffusers asks for), and a single op that exports to ONNX and captures in CUDA graphs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# diffusers' Attention always builds its encoder-state GroupNorm with 32 groups, whatever the U-Net uses
CROSS_NORM_GROUPS = 32


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, heads * d) -> (B, heads, L, d)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, L, d) -> (B, L, heads * d)."""
    return x.transpose(1, 2).flatten(2)


class AddedKVAttention(nn.Module):
    """Self-attention over image tokens whose keys/values also include the projected text tokens.

    The SimpleCrossAttn blocks of IF (diffusers ``Attention`` run by ``AttnAddedKVProcessor``): the image is
    group-normed, the text states optionally group-normed, and the query attends over
    ``[text tokens, image tokens]`` (text only when ``only_cross``). The output is added to the input.
    """

    def __init__(
        self,
        channels: int,
        head_dim: int,
        context_dim: int,
        groups: int,
        cross_norm: str | None = None,
        only_cross: bool = False,
        eps: float = 1e-5,
    ):
        super().__init__()
        if channels % head_dim:
            raise ValueError(f"attention_head_dim {head_dim} does not divide the block's {channels} channels")
        if cross_norm not in (None, "group_norm"):
            raise ValueError(f"unsupported cross_attention_norm {cross_norm!r}; use 'group_norm' or none")
        self.heads, self.only_cross = channels // head_dim, only_cross
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps)
        self.norm_cross = nn.GroupNorm(CROSS_NORM_GROUPS, context_dim, eps=1e-5) if cross_norm else None
        self.to_q = nn.Linear(channels, channels)
        if not only_cross:
            self.to_k = nn.Linear(channels, channels)
            self.to_v = nn.Linear(channels, channels)
        self.add_k_proj = nn.Linear(context_dim, channels)
        self.add_v_proj = nn.Linear(context_dim, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])  # diffusers' to_out.1 is a Dropout

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) image features; context: (B, L, context_dim) text states."""
        tokens = self.group_norm(x).flatten(2).transpose(1, 2)  # (B, H*W, C)
        if self.norm_cross is not None:
            # GroupNorm wants channels second: normalise the feature axis of every text token
            context = self.norm_cross(context.transpose(1, 2)).transpose(1, 2)
        keys, values = self.add_k_proj(context), self.add_v_proj(context)
        if not self.only_cross:
            keys = torch.cat([keys, self.to_k(tokens)], dim=1)
            values = torch.cat([values, self.to_v(tokens)], dim=1)
        q, k, v = (split_heads(t, self.heads) for t in (self.to_q(tokens), keys, values))
        out = self.to_out[0](merge_heads(F.scaled_dot_product_attention(q, k, v)))
        return out.transpose(1, 2).reshape(x.shape) + x


class AttentionPooling(nn.Module):
    """Pool a token sequence into one vector: a mean "class token" attends over itself and the tokens."""

    def __init__(self, heads: int, dim: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"addition_embed_type_num_heads {heads} does not divide the text width {dim}")
        self.heads = heads
        self.positional_embedding = nn.Parameter(torch.randn(1, dim) / dim**0.5)
        self.k_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, dim) -> (B, dim)."""
        cls = x.mean(dim=1, keepdim=True) + self.positional_embedding.to(x.dtype)
        seq = torch.cat([cls, x], dim=1)
        q = split_heads(self.q_proj(cls), self.heads)
        k, v = split_heads(self.k_proj(seq), self.heads), split_heads(self.v_proj(seq), self.heads)
        return merge_heads(F.scaled_dot_product_attention(q, k, v))[:, 0]


class TextTimeEmbedding(nn.Module):
    """The "text" addition embedding: LayerNorm, attention pooling, projection, LayerNorm."""

    def __init__(self, text_dim: int, time_embed_dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(text_dim)
        self.pool = AttentionPooling(heads, text_dim)
        self.proj = nn.Linear(text_dim, time_embed_dim)
        self.norm2 = nn.LayerNorm(time_embed_dim)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.proj(self.pool(self.norm1(text))))
