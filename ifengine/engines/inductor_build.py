"""Compile an Inductor plan into the engine cache: ``torch.export`` + AOTInductor, one package per job.

Each job loads its component's export wrapper (``export.sources``) in the job's dtype on the target
device, exports it with ``torch.export.export`` at example inputs from its I/O spec (``export.inputs``)
with a ``torch.export.Dim`` for every dim the profile leaves a range, and compiles the program with
``torch._inductor.aoti_compile_and_package`` into a ``.pt2`` file next to its final place; the cache
(``cache.build_once``) hashes it, renames it into place and writes the manifest last, exactly as it
stores a TensorRT engine. One progress bar runs over the engines and one per engine over its phases.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any
from collections.abc import Mapping

from tqdm.auto import tqdm

from .. import __version__
from ..atomic import replacing_folder
from ..export.inputs import random_inputs
from ..export.spec import ComponentSpec, DimRange
from .builder import BuildResult  # one result type for both compilers
from .cache import build_once, cache_key, engine_paths, update_index
from .inductor_plan import InductorJob, InductorPlan
from .inductor_target import InductorTarget
from .specs import spec_to_dict

log = logging.getLogger(__name__)
SUFFIX = ".pt2"
_PHASES = ("load", "export", "compile")
# the generated host wrapper only launches kernels: compiled at -O0 it builds ~2x faster on 2 cores
QUICK = MappingProxyType({"aot_inductor.compile_wrapper_opt_level": "O0"})


def build_inductor(
    plan: InductorPlan, target: InductorTarget, progress: bool = True, configs: dict | None = None
) -> list[BuildResult]:
    """Compile (or find fresh) every package of ``plan`` for ``target``; the index lists them.
    ``configs``: Inductor options for ``aoti_compile_and_package`` (part of every cache key), e.g.
    ``QUICK`` where compile time matters more than the host wrapper's optimisation."""
    results, seen = [], set()
    bar = tqdm(plan.jobs, desc="engines", unit="engine", disable=not progress)
    for job in bar:
        bar.set_postfix_str(job.name)
        results.append(_build_job(job, plan, target, progress, dict(configs or {}), first=job.component not in seen))
        seen.add(job.component)
    bar.close()
    return results


def _build_job(job: InductorJob, plan: InductorPlan, target: InductorTarget, progress: bool, configs, first: bool):
    key = cache_key({**job.key_fields(), "inductor_configs": configs}, target)
    paths = engine_paths(plan.out, target, job.name, key, SUFFIX)
    assets = copy_assets(job, paths.engine.parent)  # before the manifest that names them is written
    built, manifest = build_once(
        paths,
        key,
        lambda: compile_package(job, plan.device, paths.engine.parent, progress, configs),
        lambda: {**package_manifest(job, target, plan), "inductor_configs": configs, "assets": assets},
    )
    seconds = manifest["build_seconds"] if built else 0.0
    log.info("%s %s", job.name, f"compiled in {seconds:.1f} s" if built else "is up to date")
    update_index(paths.engine.parent, manifest, plan.build_command, replace=first)
    return BuildResult(job=job.name, engine=paths.engine, built=built, seconds=seconds)


def copy_assets(job: InductorJob, folder: Path) -> dict[str, str]:
    """The job's asset folders (a text encoder's tokenizer) copied under ``folder``; name -> path relative to
    it. The copy is named by the source digest (which covers the tokenizer files), so one copy serves every
    package of that source and a changed tokenizer gets a new one; each is published atomically."""
    out = {}
    for name, src in job.source.assets.items():
        rel = Path("assets") / f"{job.component}-{job.source_sha256[:16]}" / name
        dest = folder / rel
        if not dest.is_dir():
            with replacing_folder(dest, done=lambda p: p.is_dir()) as tmp:
                shutil.copytree(src, tmp, dirs_exist_ok=True)
        out[name] = rel.as_posix()
    return out


def compile_package(
    job: InductorJob, device: str, folder: Path, progress: bool = True, configs: dict | None = None
) -> Path:
    """Export and compile one job; the package is written in ``folder`` under a temporary name."""
    import torch

    bar = tqdm(total=len(_PHASES), desc=job.name, unit="phase", leave=False, disable=not progress)
    bar.set_postfix_str(_PHASES[0])
    module = job.source.load(getattr(torch, job.weights))
    fd, name = tempfile.mkstemp(prefix=f".{job.name}.", suffix=SUFFIX, dir=folder)
    os.close(fd)
    compile_module(module, job.spec, job.profile.dims, job.source.config, Path(name), device, configs, bar)
    bar.close()
    return Path(name)


def compile_module(
    module, spec: ComponentSpec, dims: Mapping[str, DimRange], config, path: Path, device: str, configs=None, bar=None
) -> dict[str, float]:
    """``torch.export`` + AOTInductor of ``module`` (inputs as ``spec`` lists them, each dim in its
    ``dims`` range: a ``Dim`` where the range is open) into the package ``path``; phase seconds."""
    import torch

    module = module.to(device)
    args = example_inputs(spec, dims, config, device)
    times = {}
    start = time.perf_counter()
    _phase(bar, 1)
    with torch.no_grad():
        program = torch.export.export(module, args, dynamic_shapes=dynamic_shapes(spec, dims), strict=False)
    times["export_s"] = time.perf_counter() - start
    del module
    _phase(bar, 2)
    start = time.perf_counter()
    # a copy: aoti_compile_and_package writes into the dict it is given (and configs are part of cache keys)
    options = dict(configs) if configs else None
    torch._inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs=options)
    times["compile_s"] = time.perf_counter() - start
    _phase(bar, 3)
    log.debug("%s: export %.1f s, AOTInductor %.1f s", spec.name, times["export_s"], times["compile_s"])
    return times


def _phase(bar, done: int) -> None:
    if bar is not None:
        bar.update(done - bar.n)
        if done < len(_PHASES):
            bar.set_postfix_str(_PHASES[done])


def dynamic_dim_names(spec: ComponentSpec, dims: Mapping[str, DimRange]) -> tuple[str, ...]:
    """Dims the package takes at run time (a range); every other dim is compiled in."""
    return tuple(sorted(n for n, r in dims.items() if r.min != r.max and n not in spec.derived))


def example_dims(spec: ComponentSpec, dims: Mapping[str, DimRange]) -> dict[str, int]:
    """A value per dim inside its range; a dynamic dim avoids 1, which torch.export would specialise."""
    out = {}
    for name, r in dims.items():
        if name in spec.derived:
            continue
        out[name] = r.opt if r.opt >= 2 or r.min == r.max else min(r.max, max(2, r.min))
    return out


def example_inputs(spec: ComponentSpec, dims: Mapping[str, DimRange], config, device: str) -> tuple:
    import torch

    values = random_inputs(spec, example_dims(spec, dims), config, torch.Generator().manual_seed(0))
    return tuple(v.to(device) for v in values.values())


def dynamic_shapes(spec: ComponentSpec, dims: Mapping[str, DimRange]) -> tuple:
    """``torch.export`` dynamic shapes per input (spec order): a Dim per dynamic dim (a multiple of the
    dim's step where the spec asks one; derived dims as factor x base), None for fully static inputs."""
    import torch

    found: dict[str, Any] = {}
    for name in dynamic_dim_names(spec, dims):
        r = dims[name]
        m = r.multiple
        base = torch.export.Dim(f"{name}_div{m}" if m > 1 else name, min=r.min // m, max=r.max // m)
        found[name] = base * m if m > 1 else base
    for name, (base, factor) in spec.derived.items():
        if base in found:
            found[name] = found[base] * factor
    out = []
    for t in spec.inputs:
        axes = {i: found[d] for i, d in enumerate(t.dims) if isinstance(d, str) and d in found}
        out.append(axes or None)
    return tuple(out)


def package_manifest(job: InductorJob, target: InductorTarget, plan: InductorPlan) -> dict:
    """Everything the loader checks (target, staleness) and assembles from (config, checkpoint digest)."""
    import torch

    dtypes = {t.name: t.dtype for t in job.spec.inputs + job.spec.outputs}
    return {
        "compiler": "inductor",
        "name": job.name,
        "component": job.component,
        "stage": job.source.stage,
        "precision": job.precision,
        "weights": job.weights,
        "profile": job.profile.to_json(),
        "dynamic_dims": list(job.dynamic_dims),
        "spec": spec_to_dict(job.spec),
        "io_dtypes": dtypes,
        "job": job.key_fields(),
        "config": job.source.config,
        "source": str(job.source.checkpoint.root),
        "source_sha256": job.source_sha256,
        "checkpoint_sha256": job.checkpoint_sha256,
        "graph_code_sha256": job.code_sha256,
        "target": target.to_json(),
        "torch_version": torch.__version__,
        "recipe": plan.recipe.name,
        "build_command": plan.build_command,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "ifengine_version": __version__,
    }
