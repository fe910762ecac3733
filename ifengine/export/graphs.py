"""Fixed-signature torch modules that the exporter traces, one per component.

Each wrapper's ``forward`` takes exactly its spec's inputs, in order, and returns its single output, so
the traced graph's inputs and outputs are the spec's. ``pretransposed_linears`` swaps every
``nn.Linear`` for a view that multiplies by the transposed weight: the exporter then writes the weight
as an (in, out) initializer directly instead of constant-folding a Transpose into a second copy, which
keeps a full-size export within one copy of the weights in memory.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn

log = logging.getLogger(__name__)


class TextEncoderGraph(nn.Module):
    """transformers T5/CLIP text encoder -> last hidden state."""

    def __init__(self, model: nn.Module, use_mask: bool):
        super().__init__()
        self.model, self.use_mask = model, use_mask

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids, attention_mask=attention_mask if self.use_mask else None)[0]


class UNetGraph(nn.Module):
    """IF or x4 U-Net with the spec's positional inputs (class_labels only where the U-Net takes it)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states, class_labels)


class VAEDecoderGraph(nn.Module):
    """Latents as the U-Net loop leaves them -> image: the division by scaling_factor is in the graph."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents)


class PretransposedLinear(nn.Module):
    """``nn.Linear`` computed as ``x @ W_t``, where ``W_t`` is a transposed *view* of the weight (no copy).

    The traced graph then holds the (in, out) weight as an initializer of a MatMul. The view also keeps
    the fast GEMM path: CPU fp16 matmul with a contiguous (in, out) right-hand side runs ~200x slower.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight_t = nn.Parameter(linear.weight.detach().t(), requires_grad=False)
        self.bias = linear.bias

    @property
    def weight(self) -> torch.Tensor:
        # transformers' T5 reads ``wo.weight.dtype``; a view keeps the original layout and dtype
        return self.weight_t.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.matmul(x, self.weight_t)
        return out if self.bias is None else out + self.bias


@contextlib.contextmanager
def pretransposed_linears(module: nn.Module) -> Iterator[nn.Module]:
    """Within the block every ``nn.Linear`` of ``module`` is a ``PretransposedLinear``; restored after."""
    swapped: list[tuple[nn.Module, str, nn.Linear]] = []
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                swapped.append((parent, name, child))
                setattr(parent, name, PretransposedLinear(child))
    log.debug("pre-transposed %d linear layers for export", len(swapped))
    try:
        yield module
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)
