"""Property-based tests of `ifengine generate`'s parser and pre-load checks, in-process, on the demo's
checkpoint folders: a case either passes every check (nothing loaded, nothing written) or ends with exit
status 2 and one line naming the flag. Each case takes working flags and replaces one with a bad value."""

import io
import time
from collections import Counter
from contextlib import redirect_stderr

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import demo_support
from ifengine.cli import build_parser
from ifengine.commands.generate import prepare

SECONDS = 20.0
OUTCOMES: Counter = Counter()
_QUIET = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))
FAST = settings(max_examples=90, derandomize=True, **_QUIET)
SLOW = settings(max_examples=400, **_QUIET)

# flag -> words its error message may use for it
NAMES = {
    "--height": ("height",),
    "--width": ("width",),
    "--steps": ("steps",),
    "--guidance": ("guidance",),
    "--noise-level": ("noise_level", "noise-level"),
    "--timesteps": ("timestep",),
    "--num-images": ("num_images", "num-images"),
    "--last-stage": ("last-stage", "last_stage"),
    "--out": ("--out",),
    "--image": ("image",),
    "--mask": ("mask",),
    "--strength": ("strength",),
    "--aspect": ("aspect",),
    "--vram": ("vram", "memory size", "size unit"),
    "--seed": ("seed",),
    "--dtype": ("dtype",),
    "--device": ("device",),
    "--mixer": ("mixer",),
    "--batch-size": ("batch-size", "batch_size"),
    "--prompts-file": ("prompts-file",),
}
nums = st.one_of(st.integers(-3, 3), st.integers(-(10**12), 10**12)).map(str)
words = st.text(alphabet="abc,.:-1x ", max_size=6)
BAD = {
    "--height": st.one_of(st.sampled_from(["63", "0", "-8", "2147483648", "1e3", "abc"]), nums, words),
    "--width": st.one_of(st.sampled_from(["18", "0", "x"]), nums, words),
    "--steps": st.one_of(st.sampled_from(["0", "-1", "a", "1,2,3,4", ",,"]), nums, words),
    "--guidance": st.one_of(st.sampled_from(["nan", "inf", "-1", "1,2,3,4", "x"]), words),
    "--noise-level": st.one_of(st.sampled_from(["5000", "-1", "1.5", "400,400"]), nums, words),
    "--timesteps": st.one_of(st.sampled_from(["nope", "smart27,fast99", "smart27,smart27,smart27"]), words),
    "--num-images": st.one_of(st.sampled_from(["0", "-1", "1000000000", "x"]), nums),
    "--last-stage": st.sampled_from(["4", "0", "x", "-1"]),
    "--out": st.sampled_from(["a.txt", "FILE/a.png", "DOTDIR.png", "FILE", "DIR/a.jpeg"]),
    "--image": st.sampled_from(["/no/such.png", "FILE", "DIR"]),
    "--mask": st.sampled_from(["/no/such.png", "WIDE", "BLACK", "FILE"]),
    "--strength": st.one_of(st.sampled_from(["0", "1.5", "-1", "a", "0.5,0.5,0.5"]), words),
    "--aspect": st.one_of(st.sampled_from(["16:0", "x", "-1:2", "0:0", "1:1:1", "inf:1"]), words),
    "--vram": st.one_of(st.sampled_from(["8 gigs", "-1GiB", "0", "1PB1"]), words),
    "--seed": st.one_of(st.sampled_from(["x", "-1", "99999999999999999999999"]), words),
    "--dtype": st.sampled_from(["float64", "int8", ""]),
    "--device": st.sampled_from(["tpu", "cuda:99", "", "cpu:x"]),
    "--mixer": st.sampled_from(["nan", "x", "2"]),
    "--batch-size": st.sampled_from(["0", "-2", "x", "3"]),
    "--prompts-file": st.sampled_from(["/no/such.txt", "EMPTY", "DIR"]),
}
VALID = dict(
    steps=st.sampled_from(["1", "2", "1,1,1", "2,,1"]),
    last_stage=st.sampled_from(["1", "2", "3"]),
    size=st.sampled_from([[], ["--height", "8"], ["--width", "4", "--height", "12"], ["--aspect", "2:1"]]),
    guidance=st.sampled_from([[], ["--guidance", "5,1,2"], ["--guidance", "0"]]),
    edit=st.sampled_from([[], ["--image", "SRC"], ["--image", "SRC", "--mask", "MASK"], ["--image", "SRC", "--style"]]),
)


@pytest.fixture(scope="module")
def demo_env(tmp_path_factory):
    yield from demo_support.demo_env(tmp_path_factory)


@pytest.fixture(scope="module")
def files(demo_env, tmp_path_factory):
    """Paths the placeholders stand for: a plain file, a folder, images, an empty prompts file."""
    from ifengine.demo import demo_checkpoints

    demo_checkpoints()
    root = tmp_path_factory.mktemp("fuzz_cli")
    (root / "file").write_text("not an image")
    (root / "dir").mkdir()
    (root / "dotdir.png").mkdir()
    (root / "empty.txt").write_text("# only a comment\n")
    Image.new("RGB", (32, 24), (1, 2, 3)).save(root / "src.png")
    mask = Image.new("L", (32, 24), 0)
    mask.paste(255, (0, 0, 16, 12))
    mask.save(root / "mask.png")
    Image.new("L", (96, 16), 255).save(root / "wide.png")
    Image.new("L", (32, 24), 0).save(root / "black.png")
    (root / "out").mkdir()
    names = {"FILE": "file", "DIR": "dir", "DOTDIR.png": "dotdir.png", "EMPTY": "empty.txt", "SRC": "src.png"}
    names.update(MASK="mask.png", WIDE="wide.png", BLACK="black.png")
    return root, names


def _placeholders(value: str, files) -> str:
    root, names = files
    head, sep, tail = value.partition("/")
    if head in names:
        return str(root / names[head]) + (sep + tail if sep else "")
    return value


@st.composite
def argvs(draw):
    flags = ["generate", "a cat", "--quiet", "--steps", draw(VALID["steps"]), "--last-stage", draw(VALID["last_stage"])]
    flags += draw(VALID["size"]) + draw(VALID["guidance"]) + draw(VALID["edit"])
    broken = draw(st.sampled_from([None, None, *sorted(BAD)]))
    if broken is not None:
        flags += [broken, draw(BAD[broken])]
        if broken in ("--batch-size", "--prompts-file"):
            flags[1:2] = [] if broken == "--prompts-file" else flags[1:2]
    if broken != "--out":
        flags += ["--out", "out/run.png" if broken != "--num-images" else "out"]
    return broken, flags


def check_case(broken, argv, files) -> str:
    root, _ = files
    argv = [_placeholders(a, files) if i and argv[i - 1] != "generate" else a for i, a in enumerate(argv)]
    argv = [str(root / a) if a.startswith("out") and argv[i - 1] == "--out" else a for i, a in enumerate(argv)]
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    started, stderr = time.perf_counter(), io.StringIO()
    try:
        with redirect_stderr(stderr):
            args = build_parser().parse_args(argv)
        prepare(args)
        result = "passed every check"
    except SystemExit as done:
        assert done.code == 2, argv
        result = _one_line(stderr.getvalue(), broken, argv, "usage")
    except (ValueError, OSError) as err:  # what cli.main turns into one line and exit status 2
        result = _one_line(f"ifengine: error: {err}\n", broken, argv, "checks")
    assert time.perf_counter() - started < SECONDS
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before, "a check wrote a file"
    OUTCOMES[result] += 1
    return result


def _one_line(text: str, broken, argv, where: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ifengine: error:"), (argv, text)
    named = broken is None or any(word in lines[0] for word in NAMES[broken])
    assert named, f"the error for a bad {broken} does not name it: {lines[0]} ({argv})"
    return f"refused ({where})"


@FAST
@given(case=argvs())
def _fast(files, case):
    check_case(*case, files)


@SLOW
@given(case=argvs())
def _slow(files, case):
    check_case(*case, files)


def test_fuzz_cli(files):
    _fast(files)
    assert OUTCOMES["passed every check"] >= 5 and sum(OUTCOMES.values()) >= 90


@pytest.mark.slow
def test_fuzz_cli_slow(files, capsys):
    OUTCOMES.clear()
    _slow(files)
    with capsys.disabled():
        print(f"\nfuzz cli: {dict(OUTCOMES)}")
