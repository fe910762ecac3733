"""One list of runtime switches: RuntimeOptions, read by Cascade.from_pretrained, runtime.configure and the
CLI; a bad value fails when the options are made, before any checkpoint is read."""

import inspect

import pytest

import ifengine
from ifengine.cli import build_parser
from ifengine.commands.generate import _runtime
from ifengine.memory.sizes import GiB
from ifengine.runtime.api import configure
from ifengine.runtime.options import DEFAULTS, RuntimeOptions

# from_pretrained's runtime keywords: RuntimeOptions fields, plus throughput for mode="throughput"
RUNTIME_KEYWORDS = ("vram_budget", "cuda_graphs", "compile", "channels_last", "weights", "max_batch", "max_size")


def test_from_pretrained_keywords_are_the_options_fields_with_their_defaults():
    params = inspect.signature(ifengine.Cascade.from_pretrained).parameters
    assert set(RUNTIME_KEYWORDS) <= set(DEFAULTS) and "runtime" in params
    given = {name: params[name].default for name in (*RUNTIME_KEYWORDS, "throughput")}
    assert RuntimeOptions.of(**given) == RuntimeOptions()  # no default restated differently


def test_keywords_override_a_base_and_throughput_is_a_mode():
    base = RuntimeOptions(cuda_graphs=False, max_batch=4)
    both = RuntimeOptions.of(base, vram_budget="2GiB", throughput=True)
    assert (both.cuda_graphs, both.max_batch, both.vram_budget, both.mode) == (False, 4, 2 * GiB, "throughput")
    with pytest.raises(TypeError, match="unknown runtime option"):
        RuntimeOptions.of(vram="2GiB")


@pytest.mark.parametrize(
    "keywords, message",
    [
        (dict(weights="fp4"), "weights must be one of"),
        (dict(vram_budget="lots"), "lots"),
        (dict(max_batch=0), "max_batch must be a whole number >= 1"),
        (dict(max_size=(64, 0)), "max_size must be a whole number >= 1"),
        (dict(max_size=1.0), r"max_size must be None or a \(height, width\) pair"),
    ],
)
def test_bad_options_fail_before_loading(tmp_path, keywords, message):
    missing = tmp_path / "no-such-checkpoint"  # loading it would fail differently
    with pytest.raises(ValueError, match=message):
        ifengine.Cascade.from_pretrained(missing, **keywords)


def test_the_runtime_is_wanted_where_from_pretrained_builds_it():
    assert RuntimeOptions().wanted_on("cuda") and not RuntimeOptions().wanted_on("cpu")
    for asked in (dict(vram_budget="1GiB"), dict(cuda_graphs=True), dict(weights="int8"), dict(throughput=True)):
        assert RuntimeOptions.of(**asked).wanted_on("cpu"), asked


def test_configure_reads_the_same_options(stage1_dir):
    cascade = ifengine.Cascade.from_pretrained(stage1_dir, safety=False)
    assert cascade.runtime is None
    runtime = configure(cascade, RuntimeOptions(max_batch=2), channels_last=True)
    assert cascade.runtime is runtime
    # cuda_graphs decided for the CPU; the keyword applied over the given options
    assert runtime.options == RuntimeOptions(max_batch=2, channels_last=True, cuda_graphs=False)
    runtime.close()
    assert cascade.runtime is None


def test_the_cli_flags_become_the_same_options():
    args = build_parser().parse_args(
        [
            "generate",
            "a cat",
            "--out",
            "x.png",
            "--vram",
            "8GiB",
            "--no-cuda-graphs",
            "--throughput",
            "--num-images",
            "3",
        ]
    )
    expected = RuntimeOptions(vram_budget=8 * GiB, cuda_graphs=False, mode="throughput", max_batch=3)
    assert _runtime(args) == expected


def test_a_listed_command_without_its_module_is_an_error(monkeypatch):
    monkeypatch.setattr("ifengine.cli.COMMANDS", ("generate", "no_such_command"))
    with pytest.raises(ModuleNotFoundError, match="no_such_command"):
        build_parser()
