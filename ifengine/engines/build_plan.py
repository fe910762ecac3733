"""The resolved build plan: every engine a recipe asks for, with its graph, profile and builder flags.

The plan is plain data (JSON via ``to_json``): ``ifengine build --dry-run`` prints it, the builder executes
it, and each engine's manifest records the job it came from. Nothing here needs TensorRT.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..dtypes import ONNX_NAMES, PRECISION_DTYPES
from ..export.spec import MODEL, ComponentSpec
from ..memory.sizes import GiB as GIB
from .exports import ExportRecord
from .profiles import Profile, make_profiles
from .recipe import RECIPE_DIR, ComponentRecipe, Recipe
from .specs import planned_spec, spec_to_dict

log = logging.getLogger(__name__)
# The dtype "model" tensors have in each precision variant before a graph exists (int8 graphs are the fp32
# graph with Q/DQ nodes). Once exported, the graph's own I/O dtypes are used: the exporter may deviate
# (its fp16 VAE decoder computes, and takes its I/O, in fp32).


@dataclass(frozen=True)
class BuildFlags:
    optimization_level: int = 3
    workspace_bytes: int | None = None
    weight_streaming: bool = False
    refittable: bool = False

    def to_json(self) -> dict:
        return {
            "strongly_typed": True,
            "optimization_level": self.optimization_level,
            "workspace_bytes": self.workspace_bytes,
            "weight_streaming": self.weight_streaming,
            "refittable": self.refittable,
        }


@dataclass(frozen=True)
class EngineJob:
    component: str
    precision: str
    profile: Profile
    flags: BuildFlags
    spec: ComponentSpec
    io_dtypes: Mapping[str, str | None]
    stream_budget: str | float | None = None  # runtime default for weight-streaming engines
    export: ExportRecord | None = None

    @property
    def name(self) -> str:
        suffix = "" if self.profile.label == "dynamic" else f"-{self.profile.label}"
        return f"{self.component}-{self.precision}{suffix}"

    def key_fields(self) -> dict[str, Any]:
        """Everything about the job that changes the engine (the target GPU/TensorRT is added by the cache)."""
        return {
            "component": self.component,
            "precision": self.precision,
            "export_fingerprint": self.export.fingerprint if self.export else None,
            "profile": self.profile.to_json()["inputs"],
            "flags": self.flags.to_json(),
        }

    def to_json(self) -> dict[str, Any]:
        inputs = self.profile.to_json()["inputs"]
        for name, entry in inputs.items():
            entry["dtype"] = self.io_dtypes.get(name)
        return {
            "name": self.name,
            "component": self.component,
            "precision": self.precision,
            "profile": self.profile.label,
            "static": self.profile.static,
            "inputs": inputs,
            "outputs": {t.name: {"dtype": self.io_dtypes.get(t.name), "dims": list(t.dims)} for t in self.spec.outputs},
            "flags": self.flags.to_json(),
            "stream_budget": self.stream_budget,
            "export": self.export.to_json() if self.export else None,
            "spec": spec_to_dict(self.spec),
        }


@dataclass(frozen=True)
class BuildPlan:
    recipe: Recipe
    jobs: tuple[EngineJob, ...]
    artifacts: str
    out: str

    @property
    def build_command(self) -> str:
        path = Path(self.recipe.path)
        shipped = path.parent == RECIPE_DIR and path.is_file()  # a shipped recipe is named, not pathed
        recipe = path.stem if shipped else self.recipe.path
        return (
            f"ifengine build {shlex.quote(recipe)} --artifacts {shlex.quote(self.artifacts)} "
            f"--out {shlex.quote(self.out)}"
        )

    def missing_exports(self) -> list[tuple[str, str]]:
        return list(dict.fromkeys((j.component, j.precision) for j in self.jobs if j.export is None))

    def to_json(self) -> dict[str, Any]:
        r = self.recipe
        return {
            "recipe": r.name,
            "recipe_path": r.path,
            "description": r.description,
            "artifacts": self.artifacts,
            "out": self.out,
            "build_command": self.build_command,
            "batch": {"min": r.batch.min, "opt": r.batch.opt, "max": r.batch.max},
            "stage1_sizes": [f"{w}x{h}" for h, w in r.shapes.stage1_sizes()],
            "timing_cache": r.build.timing_cache,
            "missing_exports": [list(p) for p in self.missing_exports()],
            "engines": [j.to_json() for j in self.jobs],
        }


def make_plan(
    recipe: Recipe,
    artifacts: str | Path,
    out: str | Path,
    exports: Mapping[tuple[str, str], ExportRecord] | None = None,
    checkpoints: Mapping[int, Any] | None = None,
    components: tuple[str, ...] | None = None,
) -> BuildPlan:
    """Resolve every engine of ``recipe``: exported specs where they exist, planned specs otherwise."""
    chosen = recipe.chosen(components)
    jobs: list[EngineJob] = []
    for part in chosen:
        export = (exports or {}).get((part.name, part.precision))
        jobs.extend(_jobs(recipe, part, export, checkpoints))
    return BuildPlan(recipe=recipe, jobs=tuple(jobs), artifacts=str(artifacts), out=str(out))


def _jobs(recipe: Recipe, part: ComponentRecipe, export: ExportRecord | None, checkpoints) -> list[EngineJob]:
    spec = export.spec if export else planned_spec(part.name, recipe.models, checkpoints)
    profiles = make_profiles(part.name, spec, recipe.batch, recipe.shapes.stage1_sizes(), recipe.build.static_shapes)
    workspace = recipe.build.workspace_gib
    flags = BuildFlags(
        optimization_level=recipe.build.optimization_level,
        workspace_bytes=None if workspace is None else int(workspace * GIB),
        weight_streaming=part.weight_streaming,
        refittable=recipe.refittable(part),
    )
    dtypes = io_dtypes(spec, part.precision, export)
    return [
        EngineJob(
            component=part.name,
            precision=part.precision,
            profile=p,
            flags=flags,
            spec=spec,
            io_dtypes=dtypes,
            stream_budget=part.stream_budget,
            export=export,
        )
        for p in profiles
    ]


def io_dtypes(spec: ComponentSpec, precision: str, export: ExportRecord | None) -> dict[str, str | None]:
    """Every I/O tensor's dtype: an exported spec states them; an older one leaves it to the graph itself;
    before export, the precision decides."""
    tensors = spec.inputs + spec.outputs
    if export is not None and all(t.dtype != MODEL for t in tensors):
        return {t.name: t.dtype for t in tensors}
    if export is not None and export.graph.is_file():
        graph = graph_io_dtypes(export.graph)
        if graph:
            return graph
    model = PRECISION_DTYPES[precision]
    return {t.name: model if t.dtype == MODEL else t.dtype for t in tensors}


def graph_io_dtypes(path: Path) -> dict[str, str]:
    """Input/output element types of an ONNX graph (weights stay on disk); {} without the onnx package."""
    try:
        import onnx
    except ModuleNotFoundError:
        log.debug("onnx is not installed; taking I/O dtypes from the spec")
        return {}
    model = onnx.load(str(path), load_external_data=False)
    tensors = list(model.graph.input) + list(model.graph.output)
    initializers = {i.name for i in model.graph.initializer}
    names = onnx.TensorProto.DataType.Name
    return {
        t.name: ONNX_NAMES.get(names(t.type.tensor_type.elem_type), names(t.type.tensor_type.elem_type).lower())
        for t in tensors
        if t.name not in initializers
    }
