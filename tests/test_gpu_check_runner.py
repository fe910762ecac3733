"""The GPU check's parent: a crashing or hanging section costs only itself, and the report is on disk
after every section (the sections here are tiny functions in a module written by the test)."""

import json
import time

import pytest

from ifengine.bench.gpu_check import CheckConfig, Section, run_check
from ifengine.bench.gpu_check.registry import DEFAULT_SECONDS

PROBES = """
import json, os, time

def fine(cfg, save):
    return {"device": cfg.device}

def crash(cfg, save):
    save({"got": "this far"})
    raise KeyError("x4")

def hang(cfg, save):
    save({"rows": [1]})
    time.sleep(600)

def report_so_far(cfg, save):
    return json.load(open(os.path.join(OUT, "gpu_check.json")))["sections"]
"""


@pytest.fixture
def probes(tmp_path):
    (tmp_path / "gpu_probes.py").write_text(f"OUT = {str(tmp_path / 'out')!r}\n" + PROBES)
    import importlib
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module("gpu_probes")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("gpu_probes", None)


def test_a_crash_and_a_hang_cost_only_their_sections(probes, tmp_path):
    cfg = CheckConfig(device="cpu", preset="tiny", seconds=DEFAULT_SECONDS)
    sections = (
        Section("first", probes.fine, 30),
        Section("crash", probes.crash, 30),
        Section("hang", probes.hang, 15),  # killed from outside after 15 s, though it sleeps 600
        Section("after", probes.report_so_far, 30),
    )
    started = time.monotonic()
    report = run_check(cfg, tmp_path / "out", sections=sections)
    assert time.monotonic() - started < 90
    got = report["sections"]
    assert got["first"] == {**got["first"], "status": "ok", "result": {"device": "cpu"}}
    assert got["crash"]["status"] == "error" and "KeyError" in got["crash"]["error"]
    assert got["crash"]["result"] == {"got": "this far"}  # what it saved before failing is kept
    assert got["hang"]["status"] == "timeout" and got["hang"]["result"] == {"rows": [1]}
    assert 15 <= got["hang"]["seconds"] < 40
    # the last section read the report from disk: the three before it were already written there
    seen = got["after"]["result"]
    assert [seen[n]["status"] for n in ("first", "crash", "hang", "after")] == ["ok", "error", "timeout", "pending"]
    on_disk = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert on_disk["sections"]["after"]["status"] == "ok"
    assert "## hang: timeout" in (tmp_path / "out" / "gpu_check.md").read_text()


def test_sections_past_the_whole_budget_are_recorded_as_not_started(probes, tmp_path):
    cfg = CheckConfig(device="cpu", preset="tiny", seconds=10.0)
    sections = (Section("hang", probes.hang, DEFAULT_SECONDS), Section("next", probes.fine, 1))
    report = run_check(cfg, tmp_path / "out", sections=sections)
    assert report["sections"]["hang"]["status"] == "timeout"
    assert report["sections"]["next"]["status"] == "not started"
    assert report["total_seconds"] < 40 and report["startup_seconds"] >= 0


def test_config_survives_the_trip_to_the_child():
    cfg = CheckConfig(device="cpu", preset="tiny", steps=(1, 2, 3), batches=(1, 4), size=8)
    assert CheckConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="preset must be one of"):
        CheckConfig(preset="x4")


def test_the_full_presets_exist_and_take_their_own_inputs():
    """The CPU run uses the tiny presets: the full ones are checked here, on meta tensors (the review
    found "x4", which is no U-Net preset, three minutes into a GPU run)."""
    import torch

    from ifengine.bench.gpu_check import PRESETS
    from ifengine.bench.unet_timing import X4_UNETS, unet_inputs
    from ifengine.models.presets import unet_preset

    for preset in PRESETS["full"]["unets"]:
        args, flops = unet_inputs(preset, 1, "meta", torch.float16)
        assert flops > 0 and args[0].shape[1] == unet_preset(preset).in_channels
        assert (preset in X4_UNETS) == (args[0].shape[1] == 7)  # the x4 U-Net takes latents + low-res image
    assert "x4-upscaler" in PRESETS["full"]["unets"]
