"""Property-based tests of the Python API on the tiny demo cascade: every call either runs (with the
images it promised) or raises ValueError/TypeError whose message names the argument, within a time bound.

Each case draws every argument from values that work, then (in most cases) replaces one with a value drawn
from values that may not; an error must then name that argument. The default suite runs ~150 cases with a
fixed seed (failures reproduce); ``-m slow`` runs 1,000+ fresh ones. Working values use 1-2 steps at tiny
sizes, so a case that runs takes ~0.1-1 s on a CPU.
"""

import time
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ifengine import Cascade

pytestmark = pytest.mark.usefixtures("one_thread")

SECONDS = 60.0  # per case: catches a hang; a busy 2-core machine once took 34 s for 20 default steps
OUTCOMES: Counter = Counter()
# how a message may name an argument besides its own name
SYNONYMS = {
    "last_stage": ("last_stage", "stage"),
    "stage1": ("stage1", "stage I", "checkpoint"),
    "vram_budget": ("vram_budget", "memory size", "size unit"),
    "timesteps": ("timestep", "step"),  # a short list can leave a strength no step to keep, and says so
}  # (test, outcome) -> cases, reported by the slow run
_QUIET = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))
# cases per test (default run, slow run): loading and whole-cascade batches cost more than single calls
EXAMPLES = {"call": (35, 350), "edit": (35, 350), "generate_many": (20, 150), "from_pretrained": (10, 60)}


junk = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=4),
    st.floats(allow_nan=True),
    st.just([]),
    st.just({}),
    st.just(object()),
)
valid_prompts = st.one_of(st.text(max_size=30), st.lists(st.text(max_size=8), min_size=1, max_size=2))


def _image(w, h):
    return Image.new("RGB", (w, h), (90, 20, 200))


def _half_mask(w=32, h=32):
    m = Image.new("L", (w, h), 0)
    m.paste(255, (0, 0, w // 2, h // 2))
    return m


bad_images = st.one_of(
    st.sampled_from(["/no/such.png", np.zeros((2, 2, 7)), torch.zeros(2, 3, 8, 8), np.full((4, 4), 2.0)]),
    st.builds(lambda w, h: np.zeros((h, w, 3), np.uint8), st.integers(0, 3), st.integers(0, 3)),
    junk,
)
COMMON_VALID = dict(
    negative_prompt=st.one_of(st.none(), st.text(max_size=8)),
    num_images_per_prompt=st.sampled_from([1, 1, 2]),
    seed=st.one_of(st.none(), st.integers(0, 2**32)),
    steps=st.one_of(st.integers(1, 2), st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 2))),
    guidance=st.one_of(st.none(), st.floats(0, 12)),
    noise_level=st.one_of(st.none(), st.tuples(st.integers(0, 999), st.integers(0, 350))),
    timesteps=st.one_of(st.none(), st.just((None, None, None))),
    last_stage=st.sampled_from([1, 1, 1, 1, 2, 3]),  # mostly stage I: a whole cascade costs ~1 s a case
    output_type=st.sampled_from(["pil", "np", "pt"]),
    clean_caption=st.booleans(),
)
COMMON_BAD = dict(
    negative_prompt=st.one_of(st.lists(st.text(max_size=3), min_size=2, max_size=3), junk),
    num_images_per_prompt=st.one_of(st.integers(-2, 0), st.just(10**9), junk),
    seed=st.one_of(st.integers(-3, -1), st.just(2**70), junk),
    steps=st.one_of(st.integers(-2, 0), st.just((1, 1, 1, 1)), junk),
    guidance=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-5, -0.1), junk),
    noise_level=st.one_of(st.integers(-5, 2000), st.tuples(st.integers(-5, 2000), st.integers(-5, 2000)), junk),
    timesteps=st.one_of(st.sampled_from(["nope", "smart0"]), st.lists(st.integers(-5, 1100), max_size=3), junk),
    last_stage=st.one_of(st.integers(-1, 5), junk),
    output_type=st.one_of(st.sampled_from(["latent", "PIL"]), junk),
    clean_caption=junk,
)
SIZES_VALID = dict(height=st.sampled_from([None, 4, 8, 12]), width=st.sampled_from([None, 4, 8]))
SIZES_BAD = dict.fromkeys(("height", "width"), st.one_of(st.integers(-4, 40), st.sampled_from([2**31, 10**12]), junk))


@st.composite
def cases(draw, valid: dict, bad: dict):
    """(the argument replaced by a possibly bad value or None, every argument)."""
    args = {name: draw(strategy) for name, strategy in valid.items()}
    broken = draw(st.sampled_from([None, None, None, *sorted(bad)]))
    if broken is not None:
        args[broken] = draw(bad[broken])
    return broken, args


def outcome(test: str, broken: str | None, call) -> str:
    """Run ``call``: it runs, or raises ValueError/TypeError naming ``broken``; nothing else, in time."""
    started = time.perf_counter()
    try:
        out = call()
    except (ValueError, TypeError) as err:
        message = str(err)
        named = broken is None or any(word in message for word in SYNONYMS.get(broken, (broken,)))
        assert named, f"{type(err).__name__} for a bad {broken} does not name it: {message}"
        assert "\n" not in message.strip() and "Traceback" not in message, message
        result = "refused" if broken else "refused (all valid)"
    else:
        assert len(out.images) >= 1
        result = "ran"
    assert time.perf_counter() - started < SECONDS
    OUTCOMES[test, result] += 1
    return result


EDIT_VALID = dict(
    mode=st.sampled_from(["img2img", "inpaint", "style"]),
    image=st.builds(_image, st.integers(8, 24), st.integers(8, 24)),
    prompt=valid_prompts,
    strength=st.one_of(st.none(), st.floats(0.5, 1.0), st.tuples(st.floats(0.5, 1), st.floats(0.5, 1))),
    mixer=st.one_of(st.none(), st.floats(0, 1)),
    positive_prompt=st.one_of(st.none(), st.text(max_size=6)),
    **{k: v for k, v in COMMON_VALID.items() if k != "steps"},
    # 2 steps: a strength >= 0.5 keeps at least one (1 step and strength 0.7 keep none, and say so)
    steps=st.one_of(st.just(2), st.just((2, 2, 1))),
)
EDIT_BAD = dict(
    image=bad_images,
    prompt=junk,
    strength=st.one_of(st.floats(-1, 0), st.floats(1.01, 3), st.tuples(st.floats(-1, 2)), junk),
    mixer=st.one_of(st.floats(allow_nan=True), junk),
    positive_prompt=st.one_of(st.lists(st.text(), min_size=3, max_size=3), junk),
    mask=st.one_of(st.just(Image.new("L", (32, 32), 0)), st.just(Image.new("L", (8, 40), 255)), bad_images),
    **COMMON_BAD,
)
MANY_VALID = dict(
    prompts=st.lists(st.text(max_size=6), min_size=1, max_size=3),
    batch_size=st.integers(1, 2),
    seed=st.one_of(st.none(), st.integers(0, 2**32)),
    **{k: COMMON_VALID[k] for k in ("steps", "guidance", "noise_level", "output_type")},
    **SIZES_VALID,
)
MANY_BAD = dict(
    prompts=st.one_of(st.just([]), junk),
    batch_size=st.one_of(st.integers(-1, 0), junk),
    **{k: COMMON_BAD[k] for k in ("seed", "steps", "guidance", "noise_level", "output_type")},
    **SIZES_BAD,
)
CALL_VALID = dict(prompt=valid_prompts, **SIZES_VALID, **COMMON_VALID)
CALL_BAD = dict(
    prompt=st.one_of(st.just([]), st.lists(st.integers(), min_size=1, max_size=2), junk), **SIZES_BAD, **COMMON_BAD
)


def _call(pipe, broken, args):
    prompt = args.pop("prompt")
    return outcome("__call__", broken, lambda: pipe(prompt, progress=False, **args))


def _edit(pipe, broken, args):
    mode, image, prompt = args.pop("mode"), args.pop("image"), args.pop("prompt")
    if mode == "inpaint":
        mask = args.pop("mask", None)
        args["mask"] = _half_mask(image.width, image.height) if mask is None and hasattr(image, "width") else mask
    else:
        args.pop("mask", None)
    if mode != "style":
        args.pop("mixer"), args.pop("positive_prompt")
    fn = {"img2img": pipe.img2img, "inpaint": pipe.inpaint, "style": pipe.style_transfer}[mode]
    if mode == "inpaint":
        mask = args.pop("mask")
        return outcome(mode, broken, lambda: fn(image, mask, prompt, progress=False, **args))
    return outcome(mode, broken, lambda: fn(image, prompt, progress=False, **args))


def _many(pipe, broken, args):
    prompts = args.pop("prompts")
    return outcome("generate_many", broken, lambda: pipe.generate_many(prompts, **args))


def _load_case(demo_dirs, broken, args):
    sources = {
        "demo": demo_dirs["stage1"],
        "stage2-as-1": demo_dirs["stage2"],
        "file": demo_dirs["stage1"] / "model_index.json",
    }
    stage1 = sources.get(args.pop("stage1"), "no/such-id/here")
    return outcome("from_pretrained", broken, lambda: _Loaded(Cascade.from_pretrained(stage1, safety=False, **args)))


class _Loaded:
    def __init__(self, pipe):
        self.images = [pipe]  # outcome() counts what a call made


LOAD_VALID = dict(
    stage1=st.just("demo"),
    device=st.sampled_from(["cpu", torch.device("cpu")]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    variant=st.sampled_from([None, "fp16"]),
    max_batch=st.integers(1, 4),
)
LOAD_BAD = dict(
    stage1=st.sampled_from(["stage2-as-1", "file", "missing"]),
    device=st.one_of(st.sampled_from(["tpu", "cuda:7", ""]), junk),
    dtype=st.one_of(st.sampled_from([torch.int8, "float32"]), junk),
    variant=junk,
    vram_budget=st.one_of(st.sampled_from(["8 gigs", "-1GiB", 0, "1KiB"]), junk),
    weights=st.one_of(st.sampled_from(["int4", "INT8"]), junk),
    max_batch=st.one_of(st.integers(-2, 0), junk),
    max_size=st.one_of(st.tuples(st.integers(-2, 0), st.integers(-2, 0)), junk),
)


def _suite(slow: bool):
    def cfg(name):
        return settings(max_examples=EXAMPLES[name][slow], derandomize=not slow, **_QUIET)

    @cfg("call")
    @given(case=cases(CALL_VALID, CALL_BAD))
    def call(pipe, case):
        _call(pipe, case[0], dict(case[1]))

    @cfg("edit")
    @given(case=cases(EDIT_VALID, EDIT_BAD))
    def edit(pipe, case):
        _edit(pipe, case[0], dict(case[1]))

    @cfg("generate_many")
    @given(case=cases(MANY_VALID, MANY_BAD))
    def many(pipe, case):
        _many(pipe, case[0], dict(case[1]))

    @cfg("from_pretrained")
    @given(case=cases(LOAD_VALID, LOAD_BAD))
    def load(pipe, case):
        from ifengine.demo import demo_checkpoints

        _load_case(demo_checkpoints(), case[0], dict(case[1]))

    return {"call": call, "edit": edit, "generate_many": many, "from_pretrained": load}


DEFAULT, SLOW_RUN = _suite(False), _suite(True)


@pytest.mark.parametrize("which", list(DEFAULT))
def test_fuzz_api(demo_pipe, which):
    DEFAULT[which](demo_pipe)
    assert sum(OUTCOMES.values()) > 0


@pytest.mark.slow
@pytest.mark.parametrize("which", list(SLOW_RUN))
def test_fuzz_api_slow(demo_pipe, which, capsys):
    SLOW_RUN[which](demo_pipe)
    with capsys.disabled():
        print(f"\nfuzz {which}: {sorted(OUTCOMES.items())}")
