"""Loading Inductor packages: every cache check first, ``aoti_load_package`` only after they all pass.

Order per package, as for TensorRT engines: this machine's folder exists (``EngineMissing``; packages for
other devices or torch versions only: ``EngineForeign``), the manifest records this target
(``EngineForeign``), it was compiled from the ifengine graph code installed now and, where its stage's
checkpoint is given, from that checkpoint's current weights and configs (``EngineStale``), and the
package file is complete and intact (``EngineCorrupt``). Only then is anything loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...engines.cache import INDEX, engine_manifests, manifest_for, read_json, verify_package
from ...engines.errors import EngineCorrupt, EngineForeign, EngineMissing, EngineStale
from ...engines.inductor_plan import graph_code_sha256
from ...engines.inductor_target import InductorTarget, is_inductor
from ...engines.io_plan import IOPlan
from ...facts import ALL_COMPONENTS
from .network import InductorNetwork, InductorPackage
from ...export.hashing import HashCache
from ...export.sources import plan_sources

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifiedPackage:
    component: str
    manifest: dict
    manifest_path: Path
    package: Path


def inductor_folders(out: Path) -> list[Path]:
    """The target folders under ``out`` whose index was written by an Inductor build."""
    found = []
    for index in sorted(Path(out).glob(f"*/{INDEX}")):
        try:
            if is_inductor(read_json(index, "engine index").get("target", {})):
                found.append(index.parent)
        except Exception:  # noqa: BLE001 - an unreadable index is reported when its folder is used
            continue
    return found


def verify_inductor(
    out: Path,
    target: InductorTarget,
    components: Sequence[str] | None = None,
    checkpoints: Mapping[int, Any] | None = None,
    checksum: bool = True,
) -> list[VerifiedPackage]:
    """Every package of ``components`` (default: all built here) proven usable; nothing is loaded."""
    folder = Path(out) / target.slug
    if not (folder / INDEX).is_file():
        others = [p.name for p in inductor_folders(out)]
        if others:
            raise EngineForeign(
                f"{out} has Inductor engines only for {', '.join(others)}, not for this machine ({target.slug}); "
                f"packages do not move between devices or torch versions: rebuild them here "
                f"(`ifengine build RECIPE --compiler inductor --out {out}`)"
            )
        raise EngineMissing(
            f"no Inductor engines in {out}: run `ifengine build RECIPE --compiler inductor --out {out}`"
        )
    index = read_json(folder / INDEX, "engine index")
    built = [c for c in ALL_COMPONENTS if index.get("engines", {}).get(c)]
    code, hashes = graph_code_sha256(), None
    verified = []
    for component in (c for c in built if components is None or c in components):
        for path in engine_manifests(out, target, component):
            manifest, rebuild = manifest_for(path, target)
            if manifest.get("graph_code_sha256") != code:
                raise EngineStale(f"{path.name} was compiled from other ifengine model or step code: run `{rebuild}`")
            ckpt = (checkpoints or {}).get(manifest.get("stage"))
            if ckpt is not None:
                hashes = hashes or _hash_cache()
                _check_weights(path, manifest, ckpt, hashes, rebuild)
            package = path.with_name(str(manifest.get("engine", "")))
            verify_package(package, manifest, rebuild, checksum)
            _check_assets(path, manifest, rebuild)
            verified.append(VerifiedPackage(component, manifest, path, package))
    return verified


def _check_assets(path: Path, manifest: dict, rebuild: str) -> None:
    """The folders the manifest names (a text encoder's tokenizer) are there."""
    for name, rel in manifest.get("assets", {}).items():
        if not (path.parent / rel).is_dir():
            raise EngineCorrupt(
                f"{path.name} needs its {name} folder {path.parent / rel}, which is missing: run `{rebuild}`"
            )


def _hash_cache():

    return HashCache()


def _check_weights(path: Path, manifest: dict, ckpt, hashes, rebuild: str) -> None:
    """The package was compiled from the given checkpoint's current files (weights, configs)."""

    (source,) = plan_sources({ckpt.stage: ckpt}, [manifest["component"]])
    now = hashes.files(source.files, source.checkpoint.root)
    if now != manifest.get("source_sha256"):
        raise EngineStale(
            f"{path.name} was compiled from other weights or configs than {ckpt.root} has now "
            f"(built {str(manifest.get('source_sha256'))[:12]}..., now {now[:12]}...): run `{rebuild}`"
        )


def open_inductor(verified: Sequence[VerifiedPackage], device: str = "cpu") -> dict[str, InductorNetwork]:
    """Load verified packages, one ``InductorNetwork`` per component."""
    import torch

    dev = torch.device(device)
    groups: dict[str, list[VerifiedPackage]] = {}
    for v in verified:
        groups.setdefault(v.component, []).append(v)
    networks = {}
    for component, entries in groups.items():
        packages = [InductorPackage(IOPlan.from_manifest(v.manifest), _load(v.package, dev), dev) for v in entries]
        networks[component] = InductorNetwork(packages, entries[0].manifest, entries[0].manifest_path)
    log.info("Inductor: %d package(s) for %s on %s", len(verified), ", ".join(sorted(networks)), dev)
    return networks


def _load(package: Path, device) -> Any:
    import torch

    if device.type == "cuda":  # no runner locking: the whole step may be captured in a CUDA graph
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch._inductor.aoti_load_package(str(package), run_single_threaded=True, device_index=index)
    return torch._inductor.aoti_load_package(str(package))
