"""The Inductor build plan: every package a recipe asks for, from the checkpoints' own torch modules.

TensorRT builds from exported ONNX graphs; Inductor compiles the torch modules export already defines
(``export.sources``: the U-Net, VAE decoder and whole-step wrappers, with the same declared I/O spec), so
a plan needs the checkpoints, not artifacts. Each job is one package: one ``Profile`` of the recipe
(``profiles.make_profiles``), compiled with ``torch.export.Dim`` for every dim the profile leaves a
range (``dynamic_dims``) and static everywhere else. Its cache key covers what changes the package:
the weights and configs (``source_sha256``), the code the graph is traced from (``graph_code_sha256``),
precision, profile, and (added by the cache) the torch version and device.
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Mapping

from ..export.spec import ComponentSpec
from ..facts import ALL_COMPONENTS
from .errors import RecipeError
from .profiles import Profile, make_profiles
from .recipe import RECIPE_DIR, Recipe
from .specs import spec_to_dict
from ..export.hashing import HashCache
from ..export.sources import plan_sources
from ..export.precision import variant

# What Inductor compiles: the image networks, the whole steps and the text encoders (whose tokenizer is
# copied next to the package: `backends.assemble` builds the prompt encoder from it, as for ONNX graphs).
COMPILABLE = ALL_COMPONENTS
DEVICE_PRECISIONS = {"cpu": ("fp32", "bf16"), "cuda": ("fp16", "bf16", "fp32")}
# the modules a package's graph is traced from: a change to any of them makes every package stale
_GRAPH_CODE = ("models", "schedule", "stage/steps.py", "export/graphs.py", "export/step_graphs.py")


@dataclass(frozen=True)
class InductorJob:
    component: str
    precision: str
    profile: Profile
    spec: ComponentSpec  # concrete: the precision's I/O dtypes
    weights: str  # dtype the module is loaded in ("float16", ...)
    source: Any  # export.sources.ComponentSource
    source_sha256: str
    checkpoint_sha256: str
    code_sha256: str

    @property
    def name(self) -> str:
        suffix = "" if self.profile.label == "dynamic" else f"-{self.profile.label}"
        return f"{self.component}-{self.precision}{suffix}"

    @property
    def dynamic_dims(self) -> tuple[str, ...]:
        """Dims the package takes at run time (a range in the profile); every other dim is compiled in."""
        from .inductor_build import dynamic_dim_names  # imported here: inductor_build imports this module

        return dynamic_dim_names(self.spec, self.profile.dims)

    def key_fields(self) -> dict[str, Any]:
        return {
            "compiler": "inductor",
            "component": self.component,
            "precision": self.precision,
            "profile": self.profile.to_json()["inputs"],
            "source_sha256": self.source_sha256,
            "graph_code_sha256": self.code_sha256,
        }


@dataclass(frozen=True)
class InductorPlan:
    recipe: Recipe
    jobs: tuple[InductorJob, ...]
    out: str
    device: str
    stages: Mapping[int, str]  # the checkpoint folders given (stage -> path), for the commands printed
    stage_flags: bool = True  # False: the recipe's own default checkpoints (the demo's) need no --stageN

    @property
    def build_command(self) -> str:
        path = Path(self.recipe.path)
        recipe = path.stem if path.parent == RECIPE_DIR and path.is_file() else self.recipe.path
        words = ["ifengine", "build", recipe, "--compiler", "inductor", "--out", self.out]
        if self.device != "cpu":
            words += ["--device", self.device]
        if self.stage_flags:
            for n, folder in sorted(self.stages.items()):
                words += [f"--stage{n}", folder]
        return shlex.join(words)

    def to_json(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe.name,
            "compiler": "inductor",
            "device": self.device,
            "out": self.out,
            "build_command": self.build_command,
            "engines": [
                {
                    "name": j.name,
                    "component": j.component,
                    "precision": j.precision,
                    "profile": j.profile.to_json(),
                    "dynamic_dims": list(j.dynamic_dims),
                    "spec": spec_to_dict(j.spec),
                }
                for j in self.jobs
            ],
        }


def make_inductor_plan(
    recipe: Recipe,
    checkpoints: Mapping[int, Any],
    out: str | Path,
    device: str = "cpu",
    components: tuple[str, ...] | None = None,
    stage_flags: bool = True,
) -> InductorPlan:
    """One job per (component, profile) of ``recipe``, from the given checkpoints (stage -> Checkpoint)."""

    chosen = recipe.chosen(components)
    kind = device.split(":")[0]
    for part in chosen:
        _check_part(recipe, part.name, part.precision, kind)
    hashes, code = HashCache(), graph_code_sha256()
    every = plan_sources(checkpoints)
    digests = {n: _stage_digest(ck, [s for s in every if s.stage == n], hashes) for n, ck in checkpoints.items()}
    sources = {s.name: s for s in plan_sources(checkpoints, [p.name for p in chosen])}
    jobs = []
    for part in chosen:
        source = sources[part.name]
        weights, io = _dtypes(source, part.precision)
        spec = source.spec.with_dtype(io)
        for profile in make_profiles(
            part.name, spec, recipe.batch, recipe.shapes.stage1_sizes(), recipe.build.static_shapes, each_batch=True
        ):
            jobs.append(
                InductorJob(
                    component=part.name,
                    precision=part.precision,
                    profile=profile,
                    spec=spec,
                    weights=weights,
                    source=source,
                    source_sha256=hashes.files(source.files, source.checkpoint.root),
                    checkpoint_sha256=digests[source.stage],
                    code_sha256=code,
                )
            )
    stages = {n: str(ck.root) for n, ck in checkpoints.items()}
    return InductorPlan(recipe, tuple(jobs), str(out), device, stages, stage_flags)


def _check_part(recipe: Recipe, name: str, precision: str, kind: str) -> None:
    allowed = DEVICE_PRECISIONS[kind]
    if precision not in allowed:
        raise RecipeError(
            f"{recipe.path}: {name} precision {precision!r} is not compiled by Inductor on {kind}; "
            f"use {' or '.join(allowed)}"
        )


def _dtypes(source, precision: str) -> tuple[str, str]:
    """(weights dtype, I/O dtype): the exporter's rules (the fp16 x4 VAE decoder computes in fp32)."""

    v = variant(source, precision)
    return str(v.weights).removeprefix("torch."), v.io_dtype


def _stage_digest(ckpt, sources, hashes) -> str:
    """The checkpoint's digest as ``ifengine export`` records it (networks of one stage must share it)."""
    files = {f for s in sources for f in s.files} | {ckpt.root / "model_index.json"}
    return hashes.files(files, ckpt.root)


def graph_code_sha256() -> str:
    """sha256 over the ifengine source files a package's graph is traced from."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for entry in _GRAPH_CODE:
        paths = sorted((root / entry).rglob("*.py")) if (root / entry).is_dir() else [root / entry]
        for path in paths:
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()
