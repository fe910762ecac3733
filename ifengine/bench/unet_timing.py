"""Time one U-Net call on the CFG batch, eager and replayed from a CUDA graph, with its MFU.

The U-Net call is the step's work (the scheduler update around it is a few elementwise kernels). The
weights are random and built on the device (``fullsize.randomize``): timing does not depend on values.
"""

from __future__ import annotations

import time

import torch

from ..models.presets import unet_preset
from .flops import if_unet_flops, x4_unet_flops
from .timing import synchronize
from ..facts import TEXT_TOKENS
from ..facts import DEFAULT_NOISE_LEVEL
from ..models.if_unet import IFUNet
from ..models.x4_unet import X4UNet
from .fullsize import randomize

X4_UNETS = ("x4-upscaler", "tiny-x4")  # the SD x4 upscaler's U-Net presets (all others are IF U-Nets)


def unet_inputs(preset: str, batch: int, device, dtype, size: int | None = None) -> tuple:
    """(U-Net args, FLOPs) for ``batch`` images at the size the cascade runs ``preset`` at (CFG: 2x)."""
    config, rows = unet_preset(preset), 2 * batch  # unet_preset refuses an unknown name
    side = _side(preset, size)
    text_dim = config.encoder_hid_dim or config.cross_attention_dim[0]
    x = torch.randn(rows, config.in_channels, side, side, device=device, dtype=dtype)
    t = torch.full((rows,), 500, device=device, dtype=torch.long)
    text = torch.randn(rows, TEXT_TOKENS, text_dim, device=device, dtype=dtype)
    stage2, stage3 = DEFAULT_NOISE_LEVEL
    if preset in X4_UNETS:
        level = torch.full((rows,), stage3, device=device, dtype=torch.long)
        return (x, t, text, level), x4_unet_flops(config, rows, side, side)
    level = torch.full((rows,), stage2, device=device, dtype=torch.long) if config.class_embed_type else None
    return (x, t, text, level), if_unet_flops(config, rows, side, side, text_dim)


def _side(preset: str, size: int | None) -> int:
    # stage I at its own size; stage II and the x4 latent at the stage II image size (4x stage I)
    stage1 = size or unet_preset("tiny-I" if preset.startswith("tiny") else "IF-I-XL").sample_size
    return stage1 if "-I-" in preset or preset == "tiny-I" else 4 * stage1


def build_unet(preset: str, device, dtype):

    cls = X4UNet if preset in X4_UNETS else IFUNet
    with torch.device("meta"):
        meta = cls(unet_preset(preset)).to(dtype)
    return randomize(meta, torch.Generator(device=device).manual_seed(0), device)


@torch.no_grad()
def time_unet(
    preset: str, batch: int, device: torch.device, dtype, repeats: int, peak_flops: float, size: int | None = None
) -> dict:
    unet = build_unet(preset, device, dtype)
    args, flops = unet_inputs(preset, batch, device, dtype, size)
    call = lambda: unet(*args)  # noqa: E731
    row = {"unet": preset, "batch": batch, "cfg_rows": 2 * batch, "flops": flops}
    row["eager_ms"] = 1e3 * _seconds(call, device, repeats)
    if device.type == "cuda":
        graph = _capture(call)
        row["graph_ms"] = 1e3 * _seconds(graph.replay, device, repeats)
    for kind in ("eager", "graph"):
        ms = row.get(f"{kind}_ms")
        row[f"mfu_{kind}"] = None if ms is None else flops / (ms / 1e3) / peak_flops
    return row  # the U-Net and its graph go with this frame; the caller empties the cache


def _seconds(fn, device, repeats: int) -> float:
    for _ in range(2):  # warm-up: kernel selection, cuDNN/cuBLAS initialisation
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def _capture(call):
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        call()  # warm-up on the capture stream
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        call()
    return graph
