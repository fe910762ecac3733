"""The thin layer of TensorRT builder calls: one strongly typed ONNX graph -> one serialized engine.

Strongly typed networks take their precision from the graph's own dtypes (fp16/bf16 graphs, int8 via
Q/DQ nodes), so no precision flags are set: TensorRT 11 removed them and 10.12+ deprecates them. The
STRONGLY_TYPED creation flag is required on 10.x and accepted (ignored) on 11.x, so one code path serves
both. Decisions (which flags, which shapes) are made by tested pure functions; the TensorRT calls below
have NOT been run against a real TensorRT on our machines (docs/tensorrt.md).
"""

from __future__ import annotations

import logging
from pathlib import Path
from collections.abc import Iterable

from filelock import FileLock
from tqdm.auto import tqdm

from .cache import write_atomic
from .errors import TensorRTError
from .build_plan import BuildFlags, EngineJob
from .profiles import Profile
from .trt_runtime import logger, require_tensorrt

log = logging.getLogger(__name__)


def builder_settings(flags: BuildFlags) -> dict:
    """What to set on the builder config, as data: BuilderFlag names, optimisation level, workspace."""
    names = [name for name, on in (("WEIGHT_STREAMING", flags.weight_streaming), ("REFIT", flags.refittable)) if on]
    return {"flags": names, "optimization_level": flags.optimization_level, "workspace": flags.workspace_bytes}


def check_profile_inputs(network_inputs: Iterable[str], profile: Profile) -> None:
    """The graph's inputs and the profile's must be the same set, or TensorRT fails late and obscurely."""
    graph, planned = set(network_inputs), set(profile.shapes)
    if graph != planned:
        raise TensorRTError(
            f"the graph's inputs {sorted(graph)} differ from the planned profile's "
            f"{sorted(planned)}: the export and its manifest's spec disagree; re-export"
        )


def build_serialized(job: EngineJob, timing_cache: Path | None = None, progress: bool = True):
    """Parse ``job.export.graph`` and build it; returns TensorRT's IHostMemory (buffer protocol)."""
    trt = require_tensorrt()
    log_ = logger(trt)
    builder = trt.Builder(log_)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, log_)
    # parse_from_file, not parse(bytes): graphs over 2 GB keep their weights in external files
    if not parser.parse_from_file(str(job.export.graph)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTError(f"TensorRT could not parse {job.export.graph}: {errors}")
    check_profile_inputs((network.get_input(i).name for i in range(network.num_inputs)), job.profile)
    config = builder.create_builder_config()
    _configure(trt, builder, config, job)
    if timing_cache is not None:
        config.set_timing_cache(config.create_timing_cache(_read_cache(timing_cache)), False)
    if progress:
        config.progress_monitor = progress_monitor(trt, job.name)
    data = builder.build_serialized_network(network, config)
    if data is None:
        raise TensorRTError(f"TensorRT could not build {job.name} (see TensorRT's log above)")
    if timing_cache is not None:
        _save_cache(config, timing_cache)
    return data


def _configure(trt, builder, config, job: EngineJob) -> None:
    settings = builder_settings(job.flags)
    config.builder_optimization_level = settings["optimization_level"]
    if settings["workspace"] is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings["workspace"])
    for name in settings["flags"]:
        config.set_flag(getattr(trt.BuilderFlag, name))
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in job.profile.shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)


def _read_cache(path: Path) -> bytes:
    with FileLock(str(path) + ".lock"):
        return path.read_bytes() if path.is_file() else b""


def _save_cache(config, path: Path) -> None:
    """Merge this build's timings into the shared cache file (another build may have added some)."""
    cache = config.get_timing_cache()
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            cache.combine(config.create_timing_cache(path.read_bytes()), True)
        write_atomic(path, cache.serialize())


class PhaseBars:
    """Progress bars for TensorRT's build phases (plain Python; the TensorRT monitor forwards to it)."""

    def __init__(self, label: str, disable: bool = False):
        self.label, self.disable, self.bars = label, disable, {}

    def start(self, phase: str, parent: str | None, steps: int) -> None:
        if parent is None:  # nested phases would flood the terminal; top-level ones show the pace
            self.bars[phase] = tqdm(
                total=max(steps, 1), desc=f"{self.label}: {phase}", leave=False, disable=self.disable
            )

    def step(self, phase: str, step: int) -> bool:
        bar = self.bars.get(phase)
        if bar is not None:
            bar.update(max(0, min(step + 1, bar.total) - bar.n))
        return True  # False would cancel the build

    def finish(self, phase: str) -> None:
        bar = self.bars.pop(phase, None)
        if bar is not None:
            bar.close()


def progress_monitor(trt, label: str):
    """A trt.IProgressMonitor that forwards to PhaseBars (the class needs tensorrt to exist)."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.bars = PhaseBars(label)

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.bars.start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name, step):
            return self.bars.step(phase_name, step)

        def phase_finish(self, phase_name):
            self.bars.finish(phase_name)

    return Monitor()
