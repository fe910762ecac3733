"""`ifengine bench --quick`: the standard set on a CPU machine (FLOP counts + host overhead), once.

The FLOP counter must reproduce if-facts.md's per-call figures for the full-size models (meta device).
"""

import json

import pytest
import torch

from ifengine.bench.flops import IF_FACTS
from ifengine.cli import main

FLOP_TOLERANCE = 0.02  # "within a few %": the counter and the recorded table are the same method


@pytest.fixture(scope="module")
def standard_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    before = torch.get_num_threads()
    try:
        assert main(["bench", "--quick", "--no-gpu", "--quiet", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(before)
    return out


def test_standard_set_writes_every_result(standard_run, capsys):
    for name, files in {"work": ("json", "md"), "host_overhead": ("json", "md", "png")}.items():
        for ext in files:
            assert (standard_run / f"{name}.{ext}").is_file(), f"{name}.{ext} missing"
    assert not list(standard_run.glob(".*"))  # atomic writes leave no temporary files behind


@pytest.mark.parametrize("key", list(IF_FACTS))
def test_flop_counts_reproduce_if_facts(standard_run, key):
    component = json.loads((standard_run / "work.json").read_text())["components"][key]
    assert abs(component["rel_diff"]) <= FLOP_TOLERANCE, component
    assert component["if_facts"] == IF_FACTS[key][1]


def test_work_table_states_the_floor(standard_run):
    table = (standard_run / "work.md").read_text()
    assert "| component | counted / call |" in table and "floor" in table
    payload = json.loads((standard_run / "work.json").read_text())
    assert 1.5e15 < payload["total_flops"] < 1.65e15  # ~1.58 PFLOP per 1024px image
