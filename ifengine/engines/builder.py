"""Execute a build plan: export what is missing, then build every engine once, into the engine cache.

The TensorRT call is injected (``build_fn``), so the orchestration (cache keys, locking, atomic writes,
manifests, the index, progress, timings) is tested on machines without TensorRT.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Callable, Mapping

from tqdm.auto import tqdm

from .. import __version__
from .cache import Target, build_once, cache_key, engine_paths, update_index
from .errors import RecipeError
from .exports import ensure_exports, find_exports
from .build_plan import BuildPlan, EngineJob, make_plan
from .specs import spec_to_dict

log = logging.getLogger(__name__)
TIMING_CACHE = "timing.cache"
BuildFn = Callable[[EngineJob, "Path | None", bool], Any]


@dataclass(frozen=True)
class BuildResult:
    job: str
    engine: Path
    built: bool  # False: a fresh engine was already in the cache
    seconds: float

    def to_json(self) -> dict:
        return {"job": self.job, "engine": str(self.engine), "built": self.built, "seconds": round(self.seconds, 2)}


def complete_exports(
    plan: BuildPlan,
    stages: Mapping[int, Any],
    checkpoints: Mapping[int, Any] | None,
    components: tuple[str, ...] | None,
    progress: bool = True,
) -> BuildPlan:
    """Export what the plan lacks or what changed (reusing current artifacts) and re-plan on the real specs."""
    pairs = list(dict.fromkeys((j.component, j.precision) for j in plan.jobs))
    ensure_exports(pairs, stages, Path(plan.artifacts), progress=progress)
    return make_plan(
        plan.recipe,
        plan.artifacts,
        plan.out,
        exports=find_exports(plan.artifacts),
        checkpoints=checkpoints,
        components=components,
    )


def build_plan(plan: BuildPlan, target: Target, build_fn: BuildFn, progress: bool = True) -> list[BuildResult]:
    """Build (or reuse) every engine of ``plan`` for ``target``; one progress bar over the engines."""
    if plan.missing_exports():
        raise RecipeError(f"cannot build before exporting {plan.missing_exports()}")
    target_dir = Path(plan.out) / target.slug
    cache = target_dir / TIMING_CACHE if plan.recipe.build.timing_cache else None
    results, seen = [], set()
    bar = tqdm(plan.jobs, desc="engines", unit="engine", disable=not progress)
    for job in bar:
        bar.set_postfix_str(job.name)
        results.append(build_job(job, plan, target, build_fn, cache, progress, first=job.component not in seen))
        seen.add(job.component)
    bar.close()
    return results


def build_job(
    job: EngineJob,
    plan: BuildPlan,
    target: Target,
    build_fn: BuildFn,
    timing_cache: Path | None,
    progress: bool = True,
    first: bool = True,
) -> BuildResult:
    """Build one engine (or find it fresh) and list it in the index; ``first`` job of its component in this
    build replaces the component's earlier index entries."""
    key = cache_key(job.key_fields(), target)
    paths = engine_paths(plan.out, target, job.name, key)
    built, manifest = build_once(
        paths, key, lambda: build_fn(job, timing_cache, progress), lambda: engine_manifest(job, target, plan)
    )
    seconds = manifest["build_seconds"] if built else 0.0
    if built:
        log.info("built %s in %.1f s -> %s", job.name, seconds, paths.engine)
    else:
        log.info("%s is up to date (%s)", job.name, paths.engine.name)
    update_index(paths.engine.parent, manifest, plan.build_command, replace=first)
    return BuildResult(job=job.name, engine=paths.engine, built=built, seconds=seconds)


def engine_manifest(job: EngineJob, target: Target, plan: BuildPlan) -> dict:
    """Everything the runtime and a reader need to trust (or reject) the engine, minus hash and size."""
    export = job.export
    return {
        "name": job.name,
        "component": job.component,
        "precision": job.precision,
        "profile": job.profile.to_json(),
        "flags": job.flags.to_json(),
        "stream_budget": job.stream_budget,
        "spec": spec_to_dict(job.spec),
        "io_dtypes": dict(job.io_dtypes),
        "job": job.key_fields(),
        "graph": str(export.graph),
        "graph_sha256": export.graph_sha256,
        "export_fingerprint": export.fingerprint,
        "source_sha256": export.source_sha256,
        "export_manifest": str(export.manifest),
        # the checkpoint's run defaults, carried from the export: generate --engines uses them
        "stage": export.stage,
        "run_defaults": export.run_defaults,
        "target": target.to_json(),
        "recipe": plan.recipe.name,
        "build_command": plan.build_command,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "ifengine_version": __version__,
    }
