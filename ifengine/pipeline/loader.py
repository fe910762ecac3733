"""The one loader: a ``ModelSource`` (demo, checkpoints, exported graphs, engines, or a mix) -> the parts of a
cascade, with the device and precision defaults every entry point shares.

``pipeline.cascade.open_cascade`` turns the parts into a ``Cascade``; ``Cascade.from_pretrained`` /
``from_artifacts`` / ``from_engines``, ``ifengine generate``, ``ifengine serve`` and ``ifengine bench`` all
come through here, so a choice made for one (which backend runs what, the defaults) holds for all.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..dtypes import PRECISION_DTYPES, dtype_name
from ..models.checkpoint import read_run_defaults, resolve, source_name
from ..stage import components
from ..stage.components import CascadeParts
from ..stage.options import RunDefaults, checkpoint_defaults, run_defaults
from . import limits
from .source import ModelSource
from .safety import load_safety
from ..demo import demo_checkpoints
from ..backends.tensorrt.load import load_engine_parts

log = logging.getLogger(__name__)


def placement(device=None, dtype=None) -> tuple[torch.device, torch.dtype]:
    """The device (cuda when one is visible, else cpu) and dtype (float16 on cuda, float32 elsewhere) of a
    load, each checked; names ("cuda:1", "bfloat16") and torch objects alike."""
    device = limits.check_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if isinstance(dtype, str):
        dtype = _dtype_named(dtype)
    dtype = dtype if dtype is not None else (torch.float16 if device.type == "cuda" else torch.float32)
    return device, limits.check_dtype(dtype)


def _dtype_named(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}; use float32, float16 or bfloat16")
    return dtype


def load_parts(
    source: ModelSource,
    device: torch.device,
    dtype: torch.dtype,
    *,
    safety: bool = True,
    text_encoder: str | None = "auto",
    text_dtype: torch.dtype | None = None,
    host_first: bool = False,
    **backend_options: Any,
) -> CascadeParts:
    """The parts ``source`` names, on ``device`` in ``dtype`` (None for graphs and engines: the precision
    they were exported or built in). ``host_first`` loads checkpoints on the CPU (the memory planner places
    them later); ``backend_options`` go to the graph or engine loader."""
    if source.kind == "engines":
        return _engine_parts(source, device, dtype, **backend_options)
    if source.kind == "artifacts":
        return _graph_parts(source, device, dtype, **backend_options)
    if backend_options:
        raise TypeError(f"unexpected options for checkpoints: {', '.join(sorted(backend_options))}")
    load_on = torch.device("cpu") if host_first else device
    return checkpoint_parts(
        checkpoints_of(source), source.variant, device, dtype, load_on, text_encoder, text_dtype, safety
    )


def checkpoint_parts(
    checkpoints: dict[int, Any],
    variant: str | None,
    device: torch.device,
    dtype: torch.dtype,
    load_on: torch.device,
    text_encoder: str | None = "auto",
    text_dtype: torch.dtype | None = None,
    safety: bool = True,
) -> CascadeParts:
    """Torch parts of the checkpoints (stage -> folder or Hub id), loaded onto ``load_on``."""
    ckpts = {n: resolve(src, n, variant) for n, src in checkpoints.items()}
    text = _load_text(ckpts, dtype, load_on, variant, text_dtype) if text_encoder else None
    ifs = {n: components.load_if_stage(ckpts[n], dtype, load_on, variant) for n in (1, 2) if n in ckpts}
    x4 = components.load_x4_stage(ckpts[3], dtype, load_on, variant) if 3 in ckpts else None
    checker = _load_safety(ckpts[1], device) if safety and 1 in ckpts else None
    sources = {n: source_name(src) for n, src in checkpoints.items()}
    defaults = checkpoint_defaults({n: c.root for n, c in ckpts.items()})  # what they record
    return CascadeParts(
        text, ifs.get(1), ifs.get(2), x4, device, dtype, safety=checker, defaults=defaults, sources=sources
    )


def _load_text(ckpts, dtype, device, variant, text_dtype):
    for n in (1, 2):
        if n in ckpts and ckpts[n].has("text_encoder"):
            return components.load_t5(ckpts[n], dtype, device, variant, text_dtype)
    if 1 in ckpts or 2 in ckpts:
        raise ValueError("no T5 text encoder found: the stage I checkpoint should ship text_encoder/")
    return None


def _load_safety(ckpt, device):

    return load_safety(ckpt, device)


def checkpoints_of(source: ModelSource) -> dict[int, Any]:
    """Stage -> checkpoint of a checkpoint or demo source (the demo's are written on first use)."""
    if not source.is_demo:
        return source.checkpoints

    paths = demo_checkpoints(Path(source.demo_root) if source.demo_root else None)
    return {1: paths["stage1"], 2: paths["stage2"], 3: paths["stage3"]}


def defaults_of(source: ModelSource) -> RunDefaults:
    """The run defaults (steps, guidance, noise levels) a source records: its checkpoints' (the demo's
    too) over its exported graphs'; IF's own for whatever none records."""
    recorded = {}
    if source.artifacts:
        from ..backends.onnxruntime.load import graph_run_defaults  # graphs need the export extra anyway

        recorded = graph_run_defaults(Path(source.artifacts))
    for n, ckpt in checkpoints_of(source).items():
        recorded[n] = read_run_defaults(resolve(ckpt, n, source.variant).root)
    return run_defaults(recorded)


def _graph_parts(source: ModelSource, device: torch.device, dtype: torch.dtype | None, **options) -> CascadeParts:
    # onnxruntime is an optional dependency (the export extra): imported only for graph sources
    from ..backends.onnxruntime.load import load_onnx_parts

    # the providers asked for, else the device's own: CUDA's for a CUDA device
    providers = options.pop("providers", None) or source.providers or ("cuda" if device.type == "cuda" else "cpu")
    if dtype is not None:  # asked for: the graphs exported in that dtype (else what was exported)
        options.setdefault("precision", precision_of(dtype))
    return load_onnx_parts(Path(source.artifacts), providers=providers, **options)


def precision_of(dtype: torch.dtype) -> str:
    """The export precision ("fp16") whose graphs compute in ``dtype``."""
    name = dtype_name(dtype)
    return next(p for p, n in PRECISION_DTYPES.items() if n == name and p != "int8")


def _engine_parts(source: ModelSource, device: torch.device, dtype: torch.dtype | None, **options) -> CascadeParts:
    # TensorRT is optional (the gpu extra): imported only for engine sources

    if source.providers and "providers" not in options:
        options["providers"] = source.providers
    stages = {f"stage{n}": s for n, s in source.checkpoints.items()}
    artifacts = Path(source.artifacts) if source.artifacts else None
    return load_engine_parts(
        Path(source.engines),
        artifacts,
        device=device.index or 0,
        dtype=dtype,
        variant=source.variant,
        **stages,
        **options,
    )
