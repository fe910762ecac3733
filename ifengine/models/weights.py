"""Load diffusers-layout safetensors weights into our modules, strictly.

A component folder holds ``<stem>.safetensors``, its ``fp16`` variant ``<stem>.fp16.safetensors``, or
shards listed by ``<stem>.safetensors.index[.fp16].json``. Modules are built on the ``meta`` device and
the tensors are assigned straight from the memory-mapped files in the target dtype, so loading a 4.3 B
parameter U-Net never materialises an fp32 copy next to the fp16 one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..errors import IFEngineError, DamagedFileError

log = logging.getLogger(__name__)

DIFFUSERS_STEM = "diffusion_pytorch_model"
TRANSFORMERS_STEM = "model"


class WeightsError(IFEngineError, ValueError):
    """A weight folder is missing, incomplete or does not fit the module it is loaded into."""


def _with_variant(name: str, variant: str | None) -> str:
    if not variant:
        return name
    head, ext = name.rsplit(".", 1)
    return f"{head}.{variant}.{ext}"


def weight_files(folder: Path, stem: str = DIFFUSERS_STEM, variant: str | None = None) -> list[Path]:
    """The safetensors files of one component, preferring ``variant`` and falling back to the default."""
    folder = Path(folder)
    for var in [variant, None] if variant else [None]:
        single = folder / _with_variant(f"{stem}.safetensors", var)
        if single.is_file():
            return [single]
        index = folder / _with_variant(f"{stem}.safetensors.index.json", var)
        if index.is_file():
            return _shards(index)
    present = sorted(p.name for p in folder.glob("*")) if folder.is_dir() else []
    raise WeightsError(
        f"no {stem}.safetensors weights in {folder} (variant {variant or 'default'}); "
        f"files there: {present or 'none'}. Only safetensors checkpoints are supported."
    )


def _shards(index: Path) -> list[Path]:
    try:
        mapping = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError) as err:
        raise WeightsError(f"{index} is not a valid safetensors index: {err}") from err
    files = [index.parent / name for name in sorted(set(mapping.values()))]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise WeightsError(f"{index} lists shards that are missing: {missing}")
    return files


def read_state_dict(
    files: list[Path], dtype: torch.dtype | None = None, keep=lambda key: True
) -> dict[str, torch.Tensor]:
    """Every tensor of the files (those ``keep`` accepts), cast to ``dtype`` when given."""
    state: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 - a safe_open handle is not a mapping: no __iter__
                    if keep(key):
                        tensor = handle.get_tensor(key)
                        state[key] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
        except (SafetensorError, OSError) as err:
            raise DamagedFileError(path, err) from None
    return state


def check_readable(path: Path) -> None:
    """Open a safetensors file's header (cheap): a truncated or corrupt file fails here, naming itself."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError) as err:
        raise DamagedFileError(path, err) from None


def check_state_dict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise a WeightsError naming the first missing/unexpected keys and shape mismatches."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {expected[k]}"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:8])}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:8])}")
    if wrong:
        problems.append(f"shape mismatches ({len(wrong)}): {'; '.join(wrong[:8])}")
    if problems:
        raise WeightsError(f"weights in {source} do not fit {type(module).__name__}: " + " | ".join(problems))


def load_into(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Strictly load ``state`` into ``module`` (which may live on the meta device)."""
    check_state_dict(module, state, source)
    module.load_state_dict(state, strict=True, assign=True)
    return module


def build_on_meta(factory) -> nn.Module:
    """Construct a module without allocating its parameters (they are assigned at load)."""
    with torch.device("meta"):
        return factory()


def load_component(
    factory,
    folder: Path,
    dtype: torch.dtype,
    variant: str | None = None,
    stem: str = DIFFUSERS_STEM,
    keep=lambda key: True,
    meta: bool = True,
) -> nn.Module:
    """Build ``factory()`` (on meta unless it has computed buffers), load ``folder``'s weights in ``dtype``."""
    files = weight_files(folder, stem, variant)
    log.debug("loading %s from %s", getattr(factory, "__name__", "module"), [f.name for f in files])
    module = build_on_meta(factory) if meta else factory()
    state = read_state_dict(files, dtype, keep)
    load_into(module, state, str(folder))
    _materialise_buffers(module)
    return module.eval().requires_grad_(False)


def _materialise_buffers(module: nn.Module) -> None:
    """Non-persistent buffers are not in checkpoints; a meta-built module must not keep them on meta."""
    for name, buf in list(module.named_buffers()):
        if buf.is_meta:
            raise WeightsError(f"buffer {name} of {type(module).__name__} was not provided by the checkpoint")
