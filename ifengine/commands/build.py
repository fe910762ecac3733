"""`ifengine build`: compiled engines from a recipe (build/*.toml): TensorRT engines from exported graphs
(missing ones exported first), or with ``--compiler inductor`` AOTInductor packages from the checkpoints."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("ifengine.cli")


def register(sub) -> None:
    p = sub.add_parser(
        "build",
        help="build compiled engines (TensorRT or Inductor) from a recipe",
        description="Build TensorRT engines (with --compiler inductor: AOTInductor packages) as a recipe says "
        "(components, precisions, batch range, image sizes, builder options). TensorRT: graphs missing under "
        "--artifacts are exported first from --stage1/2/3. Inductor compiles from the checkpoints themselves. "
        "Engines land in --out, one folder per device and compiler version; fresh ones are reused. "
        "--dry-run prints the resolved plan as JSON and compiles nothing.",
    )
    p.add_argument("recipe", help="a recipe .toml file or a shipped recipe name (24gb, 16gb, 8-12gb, datacenter, demo)")
    p.add_argument(
        "--compiler",
        choices=("tensorrt", "inductor"),
        default="tensorrt",
        help="tensorrt (default): TensorRT engines from exported ONNX graphs; inductor: torch.export + "
        "AOTInductor packages compiled from the checkpoints (C++/OpenMP on the CPU, Triton on a GPU)",
    )
    p.add_argument("--device", default="cpu", help="with --compiler inductor: cpu (default), cuda or cuda:N")
    p.add_argument("--stage1", help="stage I checkpoint (folder or Hub id) to export T5 / U-Net I from")
    p.add_argument("--stage2", help="stage II checkpoint to export U-Net II from")
    p.add_argument("--stage3", help="stage III (x4 upscaler) checkpoint to export its U-Net, VAE and CLIP from")
    p.add_argument("--variant", default=None, help="weight variant to read, e.g. fp16")
    p.add_argument(
        "--artifacts",
        type=Path,
        default=Path("artifacts"),
        help="exported graphs: reused when present, written when missing (default: artifacts)",
    )
    p.add_argument("--out", type=Path, default=Path("engines"), help="engine cache folder (default: engines)")
    p.add_argument("--components", default=None, help="only these of the recipe's components, e.g. unet1,unet2")
    p.add_argument("--dry-run", action="store_true", help="print the plan as JSON; build nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..engines.errors import TensorRTError, TensorRTUnavailable
    from ..engines.exports import find_exports
    from ..engines.build_plan import make_plan
    from ..engines.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    given = any(getattr(args, f"stage{n}") for n in (1, 2, 3))
    _demo_defaults(recipe, args)
    args.stage_flags = given or recipe.models.checkpoints != "demo"
    checkpoints = _checkpoints(args)
    components = tuple(c.strip() for c in args.components.split(",") if c.strip()) if args.components else None
    if args.compiler == "inductor":
        return _inductor(recipe, args, checkpoints, components)
    plan = make_plan(
        recipe,
        args.artifacts,
        args.out,
        exports=find_exports(args.artifacts),
        checkpoints=checkpoints,
        components=components,
    )
    if args.dry_run:
        payload = {**plan.to_json(), "generate_command": generate_command(plan, args)}
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return 0
    try:
        return _build(plan, args, checkpoints, components)
    except TensorRTUnavailable as err:  # no traceback: the message is the install instructions
        sys.stderr.write(f"ifengine: error: {err}\n")
        return 2
    except TensorRTError as err:
        log.debug("details", exc_info=True)
        sys.stderr.write(f"ifengine: error: {err}\n")
        return 1


def _build(plan, args, checkpoints, components) -> int:
    from ..engines.builder import build_plan, complete_exports
    from ..engines.trt_build import build_serialized
    from ..engines.trt_runtime import current_target

    target = current_target()  # before any export: without TensorRT, fail in a second, not after minutes
    stages = {n: src for n, src in ((1, args.stage1), (2, args.stage2), (3, args.stage3)) if src}
    plan = complete_exports(plan, stages, checkpoints, components, progress=not args.quiet)
    log.info("building %d engine(s) for %s into %s", len(plan.jobs), target.slug, args.out)
    results = build_plan(plan, target, build_serialized, progress=not args.quiet)
    for result in results:
        state = f"built in {result.seconds:.1f} s" if result.built else "up to date"
        sys.stdout.write(f"{result.engine}\t{state}\n")
    sys.stdout.write(f"generate with them:\n  {generate_command(plan, args)}\n")
    return 0


def _demo_defaults(recipe, args) -> None:
    """A recipe with ``[models] checkpoints = "demo"`` builds the tiny demo checkpoints unless told otherwise."""
    if recipe.models.checkpoints != "demo":
        return
    from ..demo import demo_checkpoints

    paths = demo_checkpoints()
    for n in (1, 2, 3):
        if getattr(args, f"stage{n}") is None:
            setattr(args, f"stage{n}", str(paths[f"stage{n}"]))


def _inductor(recipe, args, checkpoints, components) -> int:
    import time

    from ..engines.inductor_build import build_inductor
    from ..engines.inductor_plan import make_inductor_plan
    from ..engines.inductor_target import current_inductor_target

    if not checkpoints:
        raise ValueError("--compiler inductor compiles from checkpoints: pass --stage1/--stage2/--stage3")
    target = current_inductor_target(args.device)  # before any work: an unusable device fails at once
    plan = make_inductor_plan(recipe, checkpoints, args.out, args.device, components, args.stage_flags)
    if args.dry_run:
        sys.stdout.write(json.dumps({**plan.to_json(), "generate_command": inductor_generate(plan)}, indent=2) + "\n")
        return 0
    log.info("compiling %d package(s) for %s into %s", len(plan.jobs), target.slug, args.out)
    start = time.perf_counter()
    results = build_inductor(plan, target, progress=not args.quiet)
    for result in results:
        state = f"built in {result.seconds:.1f} s" if result.built else "up to date"
        sys.stdout.write(f"{result.engine}\t{state}\n")
    built = sum(r.built for r in results)
    sys.stdout.write(
        f"{len(results)} engine(s), {built} built, in {time.perf_counter() - start:.1f} s "
        f"(compile {sum(r.seconds for r in results):.1f} s)\n"
    )
    sys.stdout.write(f"generate with them:\n  {inductor_generate(plan)}\n")
    return 0


def inductor_generate(plan) -> str:
    """The `ifengine generate` call for an Inductor build: every stage's checkpoint is named, since the
    text encoders (and whatever the recipe does not compile) run on torch from it."""
    import shlex

    words = ["ifengine", "generate", "a photo of a red panda", "--engines", plan.out]
    for n, folder in sorted(plan.stages.items()):
        words += [f"--stage{n}", folder]
    if plan.device != "cpu":
        words += ["--device", plan.device]
    return shlex.join([*words, "--out", "image.png"])


def generate_command(plan, args) -> str:
    """The `ifengine generate` call that runs what this build makes; stages with components the recipe
    builds no engine for name their checkpoint (torch runs those parts)."""
    import shlex

    from ..facts import STAGE_COMPONENTS

    built = {j.component for j in plan.jobs}
    words = ["ifengine", "generate", "a photo of a red panda", "--engines", plan.out, "--artifacts", plan.artifacts]
    for n, source in ((1, args.stage1), (2, args.stage2), (3, args.stage3)):
        networks = {c for c in STAGE_COMPONENTS[n] if not c.startswith("step")}
        if source and not networks <= built:
            words += [f"--stage{n}", str(source)]
    return shlex.join([*words, "--out", "image.png"])


def _checkpoints(args) -> dict:
    """Checkpoints given on the command line, resolved once: their configs fix the planned I/O shapes."""
    from ..models.checkpoint import resolve

    given = ((1, args.stage1), (2, args.stage2), (3, args.stage3))
    return {n: resolve(src, n, args.variant) for n, src in given if src}
