"""Torch-backend settings for the U-Nets on a GPU: precision, memory format, torch.compile.

Defaults (none of them measured yet on a GPU in this project; ``benchmarks/gpu_runtime_check.py
--sweep`` measures each against the others and is how they should be re-decided):

* dtype: the cascade's (float16 or bfloat16 both work; T5 always runs bf16/fp32 and the VAE fp32 under
  float16, see stage.components). float16 is the default on GPUs because IF's weights ship in it.
* attention: ``F.scaled_dot_product_attention`` everywhere already (flash / memory-efficient kernels;
  head dims 64 and 128 are supported by both), so there is no switch here.
* channels_last: OFF by default. It pays for convolution-heavy nets on tensor cores, but the IF U-Nets
  spend much of their time in GroupNorm and attention, whose reshapes assume NCHW; without a
  measurement the layout change is a risk, not a win.
* compile: OFF by default. Inductor's fused kernels help most where launches dominate, and CUDA
  graphs already remove launch overhead; compile costs minutes per shape. Mode
  ``max-autotune-no-cudagraphs`` because this runtime captures its own graphs around the whole step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TorchBackendOptions:
    channels_last: bool = False
    compile: bool = False
    compile_mode: str | None = "max-autotune-no-cudagraphs"
    compile_backend: str = "inductor"  # "eager" only traces with dynamo (used by the CPU tests)


class UNetBackend:
    """Applies the options to U-Nets once and hands out the module each step should call."""

    def __init__(self, options: TorchBackendOptions = TorchBackendOptions()):
        self.options = options
        self._compiled: dict[int, nn.Module] = {}

    def prepare(self, unet: nn.Module) -> None:
        """Memory-format changes rewrite the weights, so they must happen before weights are placed."""
        if self.options.channels_last:
            unet.to(memory_format=torch.channels_last)

    def unet_for(self, unet: nn.Module) -> nn.Module:
        """The callable the step uses: the U-Net itself, or its compiled wrapper (built once)."""
        if not self.options.compile:
            return unet
        compiled = self._compiled.get(id(unet))
        if compiled is None:
            log.info(
                "compiling %s (mode %s); the first steps of each new shape are slow",
                type(unet).__name__,
                self.options.compile_mode,
            )
            # fullgraph: a graph break would put Python between kernels and break capture; static shapes:
            # one compilation per captured shape is what the graph cache wants anyway
            mode = self.options.compile_mode if self.options.compile_backend == "inductor" else None
            compiled = torch.compile(
                unet, backend=self.options.compile_backend, mode=mode, fullgraph=True, dynamic=False
            )
            self._compiled[id(unet)] = compiled
        return compiled
