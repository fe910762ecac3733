"""Engine build recipes: declarative TOML files (``build/*.toml``) parsed into frozen dataclasses.

A recipe says which components to build, in which precision, for which batch range and image sizes, and
with which builder options. Parsing is strict: an unknown key or a bad value is an error that names the
file, the table and the key, because a typo in a recipe would otherwise cost a multi-minute engine build.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..facts import ALL_COMPONENTS, INT8_COMPONENTS, PRECISIONS
from ..stage.sizes import aspect_size
from .errors import RecipeError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

log = logging.getLogger(__name__)

COMPONENTS = ALL_COMPONENTS
# the shipped recipes: package data in an installed wheel (ifengine/recipes), build/ in a checkout
_PACKAGED, _CHECKOUT = Path(__file__).resolve().parents[1] / "recipes", Path(__file__).resolve().parents[2] / "build"
RECIPE_DIR = _PACKAGED if _PACKAGED.is_dir() else _CHECKOUT
# int8 (Q/DQ) graphs exist for INT8_COMPONENTS only. fp16 is always available: the exporter keeps T5's
# FFN output and the x4 VAE in fp32 inside fp16 graphs, where they would overflow.


@dataclass(frozen=True)
class BatchRange:
    """Images per run. Components that see the classifier-free-guidance batch get twice this."""

    min: int = 1
    opt: int = 1
    max: int = 1


@dataclass(frozen=True)
class ShapeSet:
    """Stage I image sizes to cover, as aspect ratios of a base short side and/or explicit sizes."""

    base: int = 64
    aspects: tuple[str, ...] = ("1:1",)
    sizes: tuple[str, ...] = ()  # "WxH" in stage I pixels (the final image is 16x larger)
    opt: str | None = None  # one of aspects/sizes; default: the first listed

    def stage1_sizes(self) -> tuple[tuple[int, int], ...]:
        """Distinct (height, width) pairs at stage I, the opt size first."""
        named = {label: _size_of(label, self.base) for label in self.aspects + self.sizes}
        first = named[self.opt or next(iter(named))]
        return tuple(dict.fromkeys([first, *named.values()]))


@dataclass(frozen=True)
class BuildOptions:
    optimization_level: int = 3  # TensorRT's builder_optimization_level 0..5; NVIDIA's diffusion demo uses 3
    workspace_gib: float | None = None  # MemoryPoolType.WORKSPACE limit; None = TensorRT's default
    timing_cache: bool = True  # one timing cache per GPU + TensorRT version, shared by all builds
    static_shapes: bool = False  # one engine per size with min = opt = max (for CUDA graphs)
    refittable: bool = False  # BuilderFlag.REFIT: weights can be swapped without a rebuild


@dataclass(frozen=True)
class ComponentRecipe:
    name: str
    precision: str
    weight_streaming: bool = False  # BuilderFlag.WEIGHT_STREAMING: weights may live in host memory
    stream_budget: str | float | None = None  # runtime default: "auto" or GiB of weights kept on the GPU
    refittable: bool | None = None  # None: the [build] default


@dataclass(frozen=True)
class ModelChoice:
    """Presets that fix the I/O shapes for planning when no checkpoint is given on the command line."""

    stage1: str = "IF-I-XL"
    stage2: str = "IF-II-L"
    stage3: str = "x4-upscaler"
    t5: str = "t5-v1_1-xxl"
    clip: str = "clip-vit-h-text"
    vae: str = "x4-vae"
    # "demo": the built-in tiny demo checkpoints are the default --stage1/2/3 (``ifengine build demo``)
    checkpoints: str = ""


@dataclass(frozen=True)
class Recipe:
    name: str
    path: str
    description: str = ""
    models: ModelChoice = ModelChoice()
    build: BuildOptions = BuildOptions()
    batch: BatchRange = BatchRange()
    shapes: ShapeSet = ShapeSet()
    components: tuple[ComponentRecipe, ...] = field(default=())

    def refittable(self, component: ComponentRecipe) -> bool:
        return self.build.refittable if component.refittable is None else component.refittable

    def chosen(self, components: tuple[str, ...] | None = None) -> list:
        """The recipe's components named in ``components`` (None: all); a name it does not build is an error."""
        unknown = sorted(set(components or ()) - {c.name for c in self.components})
        if unknown:
            raise ValueError(
                f"{self.path} builds no {', '.join(unknown)}; it builds {', '.join(c.name for c in self.components)}"
            )
        return [c for c in self.components if components is None or c.name in components]


def find_recipe(name_or_path: str | Path) -> Path:
    """A recipe file path, or the name of a shipped recipe (``24gb`` -> RECIPE_DIR/24gb.toml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = RECIPE_DIR / f"{name_or_path}.toml"
    if shipped.is_file():
        return shipped
    known = ", ".join(p.stem for p in shipped_recipes()) or "none found"
    raise RecipeError(f"no recipe {str(name_or_path)!r}: give a .toml file or a shipped recipe name ({known})")


def shipped_recipes() -> list[Path]:
    return sorted(RECIPE_DIR.glob("*.toml")) if RECIPE_DIR.is_dir() else []


def load_recipe(name_or_path: str | Path) -> Recipe:
    path = find_recipe(name_or_path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"{path}: not valid TOML: {err}") from None
    return parse_recipe(raw, str(path))


def parse_recipe(raw: dict[str, Any], where: str = "<recipe>") -> Recipe:
    _keys(raw, where, "the top level", ("name", "description", "models", "build", "batch", "shapes", "components"))
    recipe = Recipe(
        name=_typed(raw, "name", str, where, "the top level", default=Path(where).stem),
        description=_typed(raw, "description", str, where, "the top level", default=""),
        path=where,
        models=_models(_table(raw, "models", where), where),
        build=_build(_table(raw, "build", where), where),
        batch=_batch(_table(raw, "batch", where), where),
        shapes=_shapes(_table(raw, "shapes", where), where),
        components=_components(_table(raw, "components", where), where),
    )
    log.debug("recipe %s: %d components", recipe.name, len(recipe.components))
    return recipe


def _models(raw: dict, where: str) -> ModelChoice:
    names = tuple(ModelChoice.__dataclass_fields__)
    _keys(raw, where, "[models]", names)
    choice = ModelChoice(**{k: _typed(raw, k, str, where, "[models]") for k in names if k in raw})
    _check(choice.checkpoints in ("", "demo"), where, "[models]", "checkpoints", choice.checkpoints, '"demo"')
    return choice


def _build(raw: dict, where: str) -> BuildOptions:
    at = "[build]"
    _keys(raw, where, at, tuple(BuildOptions.__dataclass_fields__))
    level = _typed(raw, "optimization_level", int, where, at, default=3)
    _check(0 <= level <= 5, where, at, "optimization_level", level, "an integer 0..5")
    workspace = _typed(raw, "workspace_gib", (int, float), where, at, default=None)
    _check(workspace is None or workspace > 0, where, at, "workspace_gib", workspace, "a positive number of GiB")
    flags = {k: _typed(raw, k, bool, where, at, default=False) for k in ("static_shapes", "refittable")}
    return BuildOptions(
        optimization_level=level,
        workspace_gib=None if workspace is None else float(workspace),
        timing_cache=_typed(raw, "timing_cache", bool, where, at, default=True),
        **flags,
    )


def _batch(raw: dict, where: str) -> BatchRange:
    _keys(raw, where, "[batch]", ("min", "opt", "max"))
    values = {k: _typed(raw, k, int, where, "[batch]", default=1) for k in ("min", "opt", "max")}
    ok = 1 <= values["min"] <= values["opt"] <= values["max"]
    _check(ok, where, "[batch]", "min/opt/max", values, "whole numbers with 1 <= min <= opt <= max")
    return BatchRange(**values)


def _shapes(raw: dict, where: str) -> ShapeSet:
    at = "[shapes]"
    _keys(raw, where, at, ("base", "aspects", "sizes", "opt"))
    base = _typed(raw, "base", int, where, at, default=64)
    _check(base >= 8 and base % 8 == 0, where, at, "base", base, "a multiple of 8 pixels")
    aspects = tuple(_typed(raw, "aspects", list, where, at, default=["1:1"] if "sizes" not in raw else []))
    sizes = tuple(_typed(raw, "sizes", list, where, at, default=[]))
    _check(bool(aspects or sizes), where, at, "aspects/sizes", [], "at least one aspect ratio or size")
    for key, values in (("aspects", aspects), ("sizes", sizes)):
        for label in values:
            try:
                _size_of(label, base)
            except (ValueError, TypeError) as err:
                raise RecipeError(f"{where}: {at} {key} entry {label!r} is not usable: {err}") from None
    opt = _typed(raw, "opt", str, where, at, default=None)
    _check(opt is None or opt in aspects + sizes, where, at, "opt", opt, "one of the listed aspects or sizes")
    return ShapeSet(base=base, aspects=aspects, sizes=sizes, opt=opt)


def _components(raw: dict, where: str) -> tuple[ComponentRecipe, ...]:
    _check(bool(raw), where, "[components]", "components", {}, f"at least one of {', '.join(COMPONENTS)}")
    return tuple(_component(name, body, where) for name, body in raw.items())


def _component(name: str, raw: Any, where: str) -> ComponentRecipe:
    at = f"[components.{name}]"
    _check(name in COMPONENTS, where, "[components]", "component", name, f"one of {', '.join(COMPONENTS)}")
    if isinstance(raw, str):  # shorthand: unet1 = "fp16"
        raw = {"precision": raw}
    _check(isinstance(raw, dict), where, at, name, raw, 'a table like { precision = "fp16" }')
    _keys(raw, where, at, ("precision", "weight_streaming", "stream_budget", "refittable"))
    precision = _typed(raw, "precision", str, where, at)
    _check(precision in PRECISIONS, where, at, "precision", precision, f"one of {', '.join(PRECISIONS)}")
    if precision == "int8" and name not in INT8_COMPONENTS:
        raise RecipeError(
            f"{where}: {at} precision = 'int8' is not exported for {name}: int8 graphs exist for "
            f"{', '.join(INT8_COMPONENTS)}; use fp16, bf16 or fp32"
        )
    streaming = _typed(raw, "weight_streaming", bool, where, at, default=False)
    budget = _typed(raw, "stream_budget", (str, int, float), where, at, default=None)
    _check(
        budget is None or budget == "auto" or (not isinstance(budget, str) and budget > 0),
        where,
        at,
        "stream_budget",
        budget,
        '"auto" or a positive number of GiB',
    )
    _check(budget is None or streaming, where, at, "stream_budget", budget, "set only with weight_streaming = true")
    if isinstance(budget, int):
        budget = float(budget)  # GiB: the runtime reads an int budget as bytes
    return ComponentRecipe(
        name=name,
        precision=precision,
        weight_streaming=streaming,
        stream_budget=budget,
        refittable=_typed(raw, "refittable", bool, where, at, default=None),
    )


_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def _size_of(label: str, base: int) -> tuple[int, int]:
    """'W:H' aspect ratio (short side = base) or explicit 'WxH' -> (height, width) at stage I."""
    match = _SIZE.match(label)
    if match:
        width, height = int(match[1]), int(match[2])
        if width < 1 or height < 1:
            raise ValueError("sizes must be positive")
        return height, width
    if ":" not in label:
        raise ValueError("expected an aspect ratio 'W:H' or a size 'WxH'")
    return aspect_size(label, base)


def _table(raw: dict, key: str, where: str) -> dict:
    value = raw.get(key, {})
    _check(isinstance(value, dict), where, "the top level", key, value, f"a [{key}] table")
    return value


def _keys(raw: dict, where: str, at: str, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise RecipeError(f"{where}: {at} has unknown key {unknown[0]!r} (known keys: {', '.join(allowed)})")


_MISSING = object()


def _typed(raw: dict, key: str, kind, where: str, at: str, default: Any = _MISSING) -> Any:
    if key not in raw:
        if default is _MISSING:
            raise RecipeError(f"{where}: {at} needs {key!r}")
        return default
    value = raw[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # TOML booleans are ints to isinstance(); a flag written as 1 or a count written as true is a mistake
    if isinstance(value, bool) != (bool in kinds) or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise RecipeError(f"{where}: {at} {key} = {value!r} should be {names}")
    return value


def _check(ok: bool, where: str, at: str, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise RecipeError(f"{where}: {at} {key} = {value!r} is invalid: expected {expected}")
