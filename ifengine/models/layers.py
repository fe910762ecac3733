"""Building blocks shared by every U-Net and the VAE decoder.

Module and parameter names mirror the diffusers checkpoint layout (``conv1``, ``time_emb_proj``,
``downsamplers.0.conv`` ...) so that a diffusers state dict loads into these modules key for key.
Everything here has static control flow: branches depend only on construction-time settings, never on
tensor values, so the modules trace, export to ONNX and capture in CUDA graphs unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def activation(name: str) -> nn.Module:
    """The activation a diffusers config names ("silu"/"swish", "gelu", "mish")."""
    table = {"silu": nn.SiLU, "swish": nn.SiLU, "gelu": nn.GELU, "mish": nn.Mish}
    if name not in table:
        raise ValueError(f"unsupported activation {name!r}; supported: {sorted(table)}")
    return table[name]()


def sinusoidal_embedding(
    timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool, freq_shift: float, max_period: int = 10000
) -> torch.Tensor:
    """DDPM sinusoidal features of a 1-D tensor of timesteps, computed in float32 as the checkpoints expect."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    args = timesteps[:, None].float() * freqs[None, :]
    sin, cos = torch.sin(args), torch.cos(args)
    emb = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


class Timesteps(nn.Module):
    """Parameter-free sinusoidal projection of timesteps (diffusers' ``time_proj``)."""

    def __init__(self, dim: int, flip_sin_to_cos: bool, freq_shift: float):
        super().__init__()
        self.dim, self.flip_sin_to_cos, self.freq_shift = dim, flip_sin_to_cos, freq_shift

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return sinusoidal_embedding(timesteps, self.dim, self.flip_sin_to_cos, self.freq_shift)


class TimestepEmbedding(nn.Module):
    """Two-layer MLP on the sinusoidal features (``linear_1`` / ``linear_2``)."""

    def __init__(
        self, in_dim: int, dim: int, act: str = "silu", out_dim: int | None = None, post_act: str | None = None
    ):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.act = activation(act)
        self.linear_2 = nn.Linear(dim, out_dim or dim)
        self.post_act = activation(post_act) if post_act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post_act(self.linear_2(self.act(self.linear_1(x))))


class Downsample2D(nn.Module):
    """Halve H and W: strided 3x3 conv, or 2x2 average pooling when there is no conv."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None, padding: int = 1):
        super().__init__()
        out_channels = out_channels or channels
        self.pad_right = use_conv and padding == 0
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels, 3, stride=2, padding=padding)
        else:
            self.conv = nn.AvgPool2d(2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_right:
            # padding=0 checkpoints (the VAE encoder family) pad only right/bottom to keep H/2 exact
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample2D(nn.Module):
    """Double H and W with nearest-neighbour interpolation, then an optional 3x3 conv."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # sizes are validated up front to divide by the total downsampling, so x2 is always exact
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x if self.conv is None else self.conv(x)


class ResnetBlock2D(nn.Module):
    """GroupNorm-act-conv residual block conditioned on a time embedding.

    ``time_norm`` "default" adds the projected embedding; "scale_shift" modulates the second norm
    (IF U-Nets). ``up``/``down`` resample inside the block (the Resnet{Up,Down}sample blocks of IF).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int | None = None,
        *,
        temb_ch: int | None = 512,
        groups: int = 32,
        groups_out: int | None = None,
        eps: float = 1e-6,
        act: str = "silu",
        time_norm: str = "default",
        skip_time_act: bool = False,
        output_scale: float = 1.0,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        out_ch = out_ch or in_ch
        if time_norm not in ("default", "scale_shift"):
            raise ValueError(f"unsupported resnet_time_scale_shift {time_norm!r}; use 'default' or 'scale_shift'")
        self.time_norm, self.skip_time_act, self.output_scale = time_norm, skip_time_act, output_scale
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        proj_out = 2 * out_ch if time_norm == "scale_shift" else out_ch
        self.time_emb_proj = nn.Linear(temb_ch, proj_out) if temb_ch is not None else None
        self.norm2 = nn.GroupNorm(groups_out or groups, out_ch, eps=eps)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nonlinearity = activation(act)
        self.resample = _block_resampler(in_ch, up, down)
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        h = self.nonlinearity(self.norm1(x))
        if self.resample is not None:
            x, h = self.resample(x), self.resample(h)
        h = self.conv1(h)
        h = self._condition(h, temb)
        h = self.conv2(self.nonlinearity(h))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return (x + h) / self.output_scale

    def _condition(self, h: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        if self.time_emb_proj is None or temb is None:
            return self.norm2(h)
        if not self.skip_time_act:
            temb = self.nonlinearity(temb)
        temb = self.time_emb_proj(temb)[:, :, None, None]
        if self.time_norm == "default":
            return self.norm2(h + temb)
        scale, shift = temb.chunk(2, dim=1)
        return self.norm2(h) * (1 + scale) + shift


@dataclass(frozen=True)
class ResnetSettings:
    """How one U-Net builds its ResnetBlock2Ds: the same for every block but the mid block's scale.

    Serves both U-Net families; the defaults are ResnetBlock2D's, which the x4 upscaler always keeps for
    ``skip_time_act`` and ``output_scale`` while the IF U-Nets set them from their config.
    """

    temb_ch: int
    groups: int
    eps: float
    act: str
    time_norm: str = "default"
    skip_time_act: bool = False
    output_scale: float = 1.0

    def make(self, in_ch: int, out_ch: int, *, up: bool = False, down: bool = False) -> ResnetBlock2D:
        return ResnetBlock2D(
            in_ch,
            out_ch,
            temb_ch=self.temb_ch,
            groups=self.groups,
            eps=self.eps,
            act=self.act,
            time_norm=self.time_norm,
            skip_time_act=self.skip_time_act,
            output_scale=self.output_scale,
            up=up,
            down=down,
        )

    def with_scale(self, output_scale: float) -> ResnetSettings:
        return dataclasses.replace(self, output_scale=output_scale)


def _block_resampler(channels: int, up: bool, down: bool) -> nn.Module | None:
    if up:
        return Upsample2D(channels, use_conv=False)
    if down:
        return Downsample2D(channels, use_conv=False)
    return None
