"""``Cascade.from_artifacts``: the exported graphs of a folder on ONNX Runtime, through the GPU runner.

Each graph becomes an ``OrtNetwork`` (IO binding to static buffers); ``backends.assemble`` gives them
the torch parts' call signatures, and the cascade is attached to the same runtime (``GraphRunner``:
static buffers, one upload per stage) that runs torch checkpoints, with CUDA graphs off because ORT
calls are ``Capture.NEVER``. Providers are given by short name ("cpu", "cuda", "tensorrt") or as ORT's
own provider names / (name, options) pairs.
"""

from __future__ import annotations

import dataclasses

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...dtypes import torch_dtype
from ...facts import ALL_COMPONENTS
from ...export.manifest import MANIFEST_NAME, ArtifactError, read_manifest, recorded_defaults
from ...export.precision import supports
from ...stage.components import CascadeParts
from ...models.config import UNetConfig
from ..assemble import assemble
from .network import OrtNetwork
from ...stage.options import run_defaults
from .session import CPU, OrtGraph, binding_device, check_providers

log = logging.getLogger(__name__)
PROVIDERS = {"cpu": CPU, "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def provider_list(providers: Sequence[Any] | str | None) -> list[Any]:
    """ORT providers from short names ("cpu", "cuda", "tensorrt"; a comma list) or ORT's own names."""
    if providers is None:
        return [CPU]
    if isinstance(providers, str):
        providers = [p.strip() for p in providers.split(",") if p.strip()]
    out = []
    for p in providers:
        if isinstance(p, str) and p.lower() in PROVIDERS:
            out.append(PROVIDERS[p.lower()])
        elif isinstance(p, (tuple, list)) or (isinstance(p, str) and p.endswith("ExecutionProvider")):
            out.append(p)
        else:
            raise ValueError(f"unknown provider {p!r}; use {', '.join(PROVIDERS)} or an ORT provider name")
    if "TensorrtExecutionProvider" in out and "CUDAExecutionProvider" not in out:
        out.append("CUDAExecutionProvider")  # TensorRT EP falls back to CUDA for what it does not take
    return out


def load_onnx_parts(
    artifacts: Path,
    providers: Sequence[Any] | str | None = None,
    precision: str | Mapping[str, str] | None = None,
    use_step_graphs: bool = True,
    verify: str = "hash",
) -> CascadeParts:
    """The cascade's parts running the graphs under ``artifacts`` on ``providers`` (default: CPU).

    ``precision`` picks the artifacts: one name for all, or a dict per component with an optional
    "default" (e.g. {"default": "fp16", "t5": "int8"}); "int8" means fp32 for the CLIP text encoder and
    the VAE decoder, which have no int8 graphs. None (the default): the precision that was exported
    (``exported_precision``). ``verify``: "hash" (default) checks every file's sha256 (digests cached by
    size and mtime), "full" re-hashes without the cache, "size" compares sizes only. The cascade's run
    defaults (steps, guidance, noise levels) are those the source checkpoints recorded, as the manifests
    carry them.
    """
    artifacts, providers = Path(artifacts), provider_list(providers)
    check_providers(providers)  # before a single graph is opened
    if precision is None:
        precision = exported_precision(artifacts, binding_device(providers).type == "cuda")
    networks = open_networks(artifacts, providers, precision, verify)
    dtype = torch_dtype(chooser(precision)("unet1"))
    parts = assemble(networks, binding_device(providers), dtype, use_step_graphs)
    log.info("ONNX Runtime cascade from %s: %s on %s", artifacts, ", ".join(sorted(networks)), providers)
    defaults = run_defaults(recorded_defaults(n.manifest for n in networks.values()))
    return dataclasses.replace(parts, sources=graph_sources(networks), defaults=defaults)


# When several precisions were exported: the one each kind of device runs natively first
PREFERENCE = {False: ("fp32", "fp16", "int8", "bf16"), True: ("fp16", "bf16", "fp32", "int8")}


def check_folder(artifacts: Path) -> None:
    if not Path(artifacts).is_dir():
        raise ArtifactError(f"{artifacts} is not a folder of exported graphs: run `ifengine export --out {artifacts}`")


def exported_precision(artifacts: Path, gpu: bool = False) -> str:
    """The precision the graphs under ``artifacts`` were exported in (of several: fp32 on a CPU, fp16 on a GPU,
    else the first of ``PREFERENCE`` present)."""
    check_folder(artifacts)
    found = {p.parent.name for p in Path(artifacts).glob(f"*/*/{MANIFEST_NAME}")}
    for precision in PREFERENCE[gpu]:
        if precision in found:
            return precision
    raise ArtifactError(f"no exported graphs under {artifacts}: run `ifengine export --out {artifacts}`")


def open_networks(
    artifacts: Path, providers: Sequence[Any], precision: str | Mapping[str, str], verify: str = "hash", skip=()
) -> dict[str, OrtNetwork]:
    """An OrtNetwork per component exported under ``artifacts`` at the chosen precision (not ``skip``)."""
    check_folder(artifacts)
    choose = chooser(precision)
    paths = {c: artifacts / c / choose(c) / MANIFEST_NAME for c in ALL_COMPONENTS if c not in skip}
    networks = {c: OrtNetwork(OrtGraph(p, providers, verify)) for c, p in paths.items() if p.is_file()}
    if not networks and not skip:
        raise ArtifactError(f"no exported graphs for precision {precision!r} under {artifacts}: run `ifengine export`")
    return networks


def chooser(precision: str | Mapping[str, str]):
    """component -> precision; int8 falls back to fp32 where no int8 graph exists (CLIP, VAE)."""
    table = {"default": precision} if isinstance(precision, str) else dict(precision)

    def choose(component: str) -> str:
        chosen = table.get(component, table.get("default", "fp32"))
        return chosen if supports(component, chosen) else "fp32"

    return choose


_STAGE_GRAPHS = {1: ("unet1", "step1"), 2: ("unet2", "step2"), 3: ("x4_unet", "step3")}


def graph_sources(networks: Mapping[str, OrtNetwork]) -> dict[int, str]:
    """Stage -> the checkpoint its graphs were exported from (as the manifests record it): image metadata
    names the same models whether a picture came from the checkpoints or from their graphs."""
    out = {}
    for n, names in _STAGE_GRAPHS.items():
        source = next((networks[c].manifest.get("source") for c in names if c in networks), None)
        if source:
            out[n] = source
    return out


def graph_run_defaults(artifacts: Path) -> dict[int, dict]:
    """Stage -> the run defaults the exported graphs' manifests record (any precision; see
    ``export.manifest.recorded_defaults``): what a caller checks a request against before loading."""
    manifests = [read_manifest(p) for p in sorted(Path(artifacts).glob(f"*/*/{MANIFEST_NAME}"))]
    return recorded_defaults(manifests)


def graph_unet_configs(artifacts: Path) -> dict[int, UNetConfig]:
    """Stage -> U-Net config from the manifests of the exported U-Net graphs (any precision): what a caller
    checks a request against before opening a single graph."""
    out = {}
    for n, component in ((1, "unet1"), (2, "unet2"), (3, "x4_unet")):
        found = sorted((Path(artifacts) / component).glob(f"*/{MANIFEST_NAME}"))
        if found:
            out[n] = UNetConfig.from_dict(read_manifest(found[0])["config"]["unet"])
    return out
