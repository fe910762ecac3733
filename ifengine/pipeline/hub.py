"""diffusers' ``from_pretrained`` loading arguments, taken where a diffusers script passes them.

A Hub id is downloaded here with ``huggingface_hub.snapshot_download`` and the caller's ``revision``,
``token``, ``cache_dir``, ``local_files_only``, ``force_download`` and ``proxies``; the loader then reads
the local snapshot. A local folder ignores them, as diffusers does. ``use_safetensors`` and
``device_map`` are checked against what ifengine can do (it reads safetensors only and runs one device).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..models.checkpoint import GATED_HINT, CheckpointError, _hub_patterns
from ..stage.options import RequestError

HUB_ARGUMENTS = ("revision", "token", "cache_dir", "local_files_only", "force_download", "proxies")
# accepted and ignored: they tune how diffusers builds its modules, which ifengine does its own way
IGNORED = ("low_cpu_mem_usage", "use_onnx", "offload_folder", "offload_state_dict")


@dataclass(frozen=True)
class LoadArguments:
    """The Hub and placement arguments of one ``from_pretrained`` call."""

    hub: tuple[tuple[str, Any], ...] = ()
    device: str | None = None

    @classmethod
    def of(cls, keywords: dict[str, Any]) -> LoadArguments:
        """Take the Hub and placement keywords out of ``keywords``; anything left is a TypeError."""
        hub = tuple((k, keywords.pop(k)) for k in HUB_ARGUMENTS if keywords.get(k) is not None)
        for name in HUB_ARGUMENTS + IGNORED:
            keywords.pop(name, None)
        check_safetensors(keywords.pop("use_safetensors", None))
        device = device_of(keywords.pop("device_map", None))
        if keywords:
            raise TypeError(
                f"from_pretrained got unexpected keyword(s) {', '.join(sorted(keywords))}; it takes torch_dtype, "
                f"variant, text_encoder, safety_checker, watermarker, feature_extractor, use_safetensors, "
                f"device_map and the Hub arguments {', '.join(HUB_ARGUMENTS)}"
            )
        return cls(hub, device)


def check_safetensors(use_safetensors) -> None:
    if use_safetensors is False:
        raise RequestError(
            "use_safetensors=False: ifengine reads .safetensors weight files only (they load without running "
            "pickled code); the DeepFloyd IF and x4 upscaler repositories ship them"
        )


def device_of(device_map) -> str | None:
    """diffusers' pipeline-level ``device_map``: a single device name is where everything loads."""
    if device_map is None:
        return None
    if isinstance(device_map, str) and device_map.split(":")[0] in ("cpu", "cuda"):
        return device_map
    raise RequestError(
        f"device_map={device_map!r}: ifengine runs a pipeline on one device, so it takes a device name "
        "('cpu', 'cuda', 'cuda:1'); to fit a smaller GPU use enable_model_cpu_offload() or vram_budget="
    )


def local_path(source: str | Path, variant: str | None, args: LoadArguments) -> Path:
    """A local folder as it is; a Hub id downloaded with the caller's Hub arguments."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download  # imported here: only Hub ids need it

    try:
        return Path(snapshot_download(str(source), allow_patterns=_hub_patterns(variant), **dict(args.hub)))
    except Exception as err:  # the Hub raises many types (gated, offline, 404); all mean the same to a user
        raise CheckpointError(
            f"could not download {str(source)!r} ({type(err).__name__}: {err}). {GATED_HINT}"
        ) from err
