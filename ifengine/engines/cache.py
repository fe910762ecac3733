"""The engine cache: where engines live, what their manifests record, and why a loaded engine is trusted.

Layout: ``OUT/<target>/`` per GPU + TensorRT version (``sm89-nvidia-geforce-rtx-4090-trt10.13.0``), holding
``<job>-<key>.engine`` + ``<job>-<key>.json`` (manifest) per engine, ``index.json`` (component -> engines)
and the target's timing cache. The key hashes everything that changes an engine: graph sha256, precision,
profile, builder flags, TensorRT version and GPU. Engines are written atomically (temporary file, fsync,
rename; the manifest last, so a manifest always describes a complete engine), and a file lock per engine
makes a second concurrent build of the same engine wait and then reuse the first one's result.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from collections.abc import Callable

from filelock import FileLock, Timeout

from ..atomic import replacing, write_json_atomic as _write_json
from .errors import EngineCorrupt, EngineForeign, EngineMissing, EngineStale

log = logging.getLogger(__name__)
FORMAT = 1
INDEX = "index.json"
CHUNK = 64 * 2**20


@dataclass(frozen=True)
class Target:
    """The GPU and TensorRT an engine is built for; engines do not move between targets."""

    gpu: str
    compute_capability: str  # "8.9"
    tensorrt: str  # "10.13.0.35"

    @property
    def slug(self) -> str:
        gpu = re.sub(r"[^a-z0-9]+", "-", self.gpu.lower()).strip("-")
        return f"sm{self.compute_capability.replace('.', '')}-{gpu}-trt{self.tensorrt}"

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EnginePaths:
    engine: Path
    manifest: Path
    lock: Path


def cache_key(fields: dict[str, Any], target: Target) -> str:
    canonical = json.dumps({"job": fields, "target": target.to_json()}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def engine_paths(out: str | Path, target: Target, job_name: str, key: str, suffix: str = ".engine") -> EnginePaths:
    """``suffix``: ".engine" (TensorRT) or ".pt2" (an Inductor package); ``target`` is either compiler's."""
    stem = Path(out) / target.slug / f"{job_name}-{key}"
    return EnginePaths(stem.with_suffix(suffix), stem.with_suffix(".json"), stem.with_suffix(".lock"))


def write_atomic(path: Path, data) -> tuple[str, int]:
    """Write a bytes-like object (buffer protocol; no copy) atomically; return its sha256 and size."""
    view = memoryview(data).cast("B")
    digest = hashlib.sha256()
    with replacing(path) as tmp, open(tmp, "wb") as f:
        for start in range(0, len(view), CHUNK):
            chunk = view[start : start + CHUNK]
            digest.update(chunk)
            f.write(chunk)
    return digest.hexdigest(), len(view)


def move_atomic(path: Path, source: Path) -> tuple[str, int]:
    """Publish a finished file written elsewhere in ``path``'s folder (an Inductor package): hashed while
    read, fsynced, renamed over ``path``; return its sha256 and size."""
    digest, size = sha256_of(source)
    with replacing(path) as tmp:
        os.replace(source, tmp)
    return digest, size


def sha256_of(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def write_json_atomic(path: Path, obj: Any) -> None:
    _write_json(path, obj, sort_keys=True)


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (ValueError, OSError) as err:
        raise EngineCorrupt(f"{what} {path} is unreadable ({err})") from None


def is_fresh(paths: EnginePaths, key: str) -> bool:
    """A complete engine for this key exists (cheap check: manifest key and file size; load verifies the hash)."""
    try:
        manifest = json.loads(paths.manifest.read_text())
        return manifest.get("key") == key and paths.engine.stat().st_size == manifest.get("engine_bytes")
    except (OSError, ValueError):
        return False


def build_once(
    paths: EnginePaths, key: str, build: Callable[[], Any], describe: Callable[[], dict]
) -> tuple[bool, dict]:
    """Build and store an engine unless a fresh one exists; (built, manifest). Concurrent callers wait."""
    paths.engine.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(paths.lock))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("another build of %s is running; waiting for it", paths.engine.name)
        lock.acquire()
    try:
        if is_fresh(paths, key):
            return False, json.loads(paths.manifest.read_text())
        start = time.perf_counter()
        data = build()
        seconds = time.perf_counter() - start
        # TensorRT hands back bytes; Inductor writes its package to a file of its own, moved into place
        sha256, size = move_atomic(paths.engine, data) if isinstance(data, Path) else write_atomic(paths.engine, data)
        del data  # engines are GBs: do not hold the host copy while writing the manifest
        manifest = {
            **describe(),
            "format": FORMAT,
            "key": key,
            "engine": paths.engine.name,
            "engine_sha256": sha256,
            "engine_bytes": size,
            "build_seconds": round(seconds, 2),
        }
        write_json_atomic(paths.manifest, manifest)  # last: a manifest always describes a complete engine
        return True, manifest
    finally:
        lock.release()


def update_index(target_dir: Path, manifest: dict, build_command: str, replace: bool = False) -> None:
    """Record an engine under its component in the target's index (locked read-modify-write).

    ``replace`` drops the component's other entries: a build defines the engine set of every component it
    builds (another precision or profile built earlier must not be loaded next to it)."""
    path = target_dir / INDEX
    with FileLock(str(path.with_suffix(".lock"))):
        index = json.loads(path.read_text()) if path.is_file() else {"format": FORMAT, "engines": {}}
        if replace:
            index["engines"].pop(manifest["component"], None)
        entries = index["engines"].setdefault(manifest["component"], {})
        entries[manifest["name"]] = {
            "manifest": Path(manifest["engine"]).with_suffix(".json").name,
            "profile": manifest["profile"],
            "precision": manifest["precision"],
        }
        index.update(target=manifest["target"], build_command=build_command, updated=time.time())
        write_json_atomic(path, index)


def rebuild_command(recorded: str | None, out: str | Path, artifacts: str | Path | None = None) -> str:
    """The build command for the folders in use now: the recipe of the command recorded at build time (a
    user may have moved or renamed the folders since), with today's ``--artifacts`` and ``--out``."""
    try:
        recipe = shlex.split(recorded)[2] if recorded else "RECIPE"
    except (ValueError, IndexError):
        recipe = "RECIPE"
    where = f" --artifacts {shlex.quote(str(artifacts))}" if artifacts is not None else ""
    return f"ifengine build {shlex.quote(recipe)}{where} --out {shlex.quote(str(out))}"


def target_index(out: str | Path, target: Target, artifacts: str | Path | None = None) -> dict:
    """The index of the engines built into ``out`` for ``target``; errors say which build command makes them."""
    out = Path(out)
    index_path = out / target.slug / INDEX
    if not index_path.is_file():
        others = sorted(p.parent.name for p in out.glob(f"*/{INDEX}"))
        if others:
            raise EngineForeign(
                f"{out} has engines only for {', '.join(others)}, not for this machine "
                f"({target.slug}); engines do not move between GPUs or TensorRT versions: run "
                f"`{rebuild_command(None, out, artifacts)}` here"
            )
        raise EngineMissing(f"no TensorRT engines in {out}: run `{rebuild_command(None, out, artifacts)}` first")
    try:
        index = read_json(index_path, "engine index")
    except EngineCorrupt as err:
        raise EngineCorrupt(
            f"{err}: run `{rebuild_command(None, out, artifacts)}` to build and index them again"
        ) from None
    if not isinstance(index, dict) or not isinstance(index.get("engines", {}), dict):
        raise EngineCorrupt(
            f"engine index {index_path} is not an ifengine index: run `{rebuild_command(None, out, artifacts)}`"
        )
    return index


def engine_manifests(
    out: str | Path, target: Target, component: str, artifacts: str | Path | None = None
) -> list[Path]:
    """The manifests the index lists for ``component``; errors say which build command makes them."""
    out = Path(out)
    index_path = out / target.slug / INDEX
    index = target_index(out, target, artifacts)
    entries = index.get("engines", {}).get(component)
    if not entries:
        raise EngineMissing(
            f"{index_path} has no {component} engine: run "
            f"`{rebuild_command(index.get('build_command'), out, artifacts)}` with a recipe that builds {component}"
        )
    try:
        return [index_path.parent / e["manifest"] for e in entries.values()]
    except (AttributeError, KeyError, TypeError):
        raise EngineCorrupt(
            f"engine index {index_path} lists {component} without manifests: run "
            f"`{rebuild_command(index.get('build_command'), out, artifacts)}`"
        ) from None


def load_verified(
    manifest_path: Path,
    target: Target,
    export_fingerprint: str | None = None,
    checksum: bool = True,
    artifacts: str | Path | None = None,
) -> tuple[dict, bytes]:
    """Read an engine and prove it usable here: complete, intact, built for this target, and (given the
    current export's fingerprint) built from the graph that is exported now. Errors name the build command
    for the folders in use now (``artifacts``, the engines folder), not those recorded at build time."""
    manifest, rebuild = manifest_for(manifest_path, target, artifacts)
    built_from = str(manifest.get("export_fingerprint"))
    if export_fingerprint is not None and built_from != export_fingerprint:
        raise EngineStale(
            f"{manifest_path.name} was built from a graph that has since been re-exported "
            f"(export {built_from[:12]}..., now {export_fingerprint[:12]}...): run `{rebuild}`"
        )
    engine_path = manifest_path.with_name(str(manifest.get("engine", "")))
    data = _read_engine(engine_path, manifest, rebuild, checksum)
    return manifest, data


def manifest_for(manifest_path: Path, target: Target, artifacts: str | Path | None = None) -> tuple[dict, str]:
    """An engine manifest that is readable and records this target; (manifest, its rebuild command for the
    folders in use now: ``artifacts`` and the engines folder, not those recorded at build time)."""
    out = manifest_path.parent.parent
    generic = rebuild_command(None, out, artifacts)
    try:
        manifest = read_json(manifest_path, "engine manifest")
    except FileNotFoundError:
        raise EngineMissing(f"engine manifest {manifest_path} is missing: run `{generic}`") from None
    except EngineCorrupt as err:
        raise EngineCorrupt(f"{err}: run `{generic}`") from None
    recorded = manifest.get("build_command")
    # an Inductor build names its checkpoints and compiler: its recorded command is the one to rerun
    inductor = hasattr(target, "foreign") and recorded
    rebuild = recorded if inductor else rebuild_command(recorded, out, artifacts)
    check_target(manifest, target, manifest_path, rebuild)
    return manifest, rebuild


def check_target(manifest: dict, target: Target, where: Path, rebuild: str) -> None:
    built = manifest.get("target") or {}
    if hasattr(target, "foreign"):  # an Inductor target states its own rule
        why = target.foreign(built)
        if why:
            raise EngineForeign(f"{where.name} {why}: run `{rebuild}` on this machine")
        return
    for field, what in (("tensorrt", "TensorRT"), ("compute_capability", "GPU compute capability")):
        if built.get(field) != getattr(target, field):
            raise EngineForeign(
                f"{where.name} was built for {what} {built.get(field)}, this machine has "
                f"{getattr(target, field)}: run `{rebuild}` on this machine"
            )
    if built.get("gpu") != target.gpu:
        # same architecture, different board: TensorRT accepts it, but tactics were timed elsewhere
        log.warning(
            "%s was built on a %s and runs on a %s (same compute capability)", where.name, built.get("gpu"), target.gpu
        )


def verify_package(path: Path, manifest: dict, rebuild: str, checksum: bool = True) -> None:
    """An engine file that is loaded from disk (an Inductor package) is complete and intact, streamed."""
    if not path.name or not path.is_file():
        raise EngineCorrupt(f"engine file {path} listed by its manifest is missing: run `{rebuild}`")
    size = path.stat().st_size
    if size != manifest.get("engine_bytes"):
        raise EngineCorrupt(
            f"{path.name} has {size} bytes, its manifest says {manifest.get('engine_bytes')} "
            f"(truncated or replaced): run `{rebuild}`"
        )
    if checksum and sha256_of(path)[0] != manifest.get("engine_sha256"):
        raise EngineCorrupt(f"{path.name} does not match its manifest's sha256 (corrupt): run `{rebuild}`")


def _read_engine(path: Path, manifest: dict, rebuild: str, checksum: bool) -> bytes:
    if not path.name or not path.is_file():
        raise EngineCorrupt(f"engine file {path} listed by its manifest is missing: run `{rebuild}`")
    data = path.read_bytes()
    if len(data) != manifest.get("engine_bytes"):
        raise EngineCorrupt(
            f"{path.name} has {len(data)} bytes, its manifest says {manifest.get('engine_bytes')} "
            f"(truncated or replaced): run `{rebuild}`"
        )
    if checksum and hashlib.sha256(data).hexdigest() != manifest.get("engine_sha256"):
        raise EngineCorrupt(f"{path.name} does not match its manifest's sha256 (corrupt): run `{rebuild}`")
    return data
