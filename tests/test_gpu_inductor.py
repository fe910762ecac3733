"""The GPU check's Inductor section, smoke-run on the CPU with the tiny stage I preset."""

import pytest

from ifengine.bench.gpu_inductor import inductor_section


@pytest.mark.slow  # the default suite runs this section inside the whole GPU check's CPU run
@pytest.mark.usefixtures("one_thread")
def test_the_inductor_section_measures_a_compiled_step_on_the_cpu():
    row = inductor_section("cpu", quick=True, seconds=600)
    assert row["preset"] == "tiny-I" and row["dtype"] == "float32"
    assert row["eager_ms"] > 0 and row["inductor_ms"] > 0 and "inductor_graph_ms" not in row  # no graph on CPU
    assert row["compile_s"] > 0 and row["export_s"] > 0 and row["load_s"] >= 0
    assert row["max_abs_vs_eager"] <= 1e-4  # the compiled step is the eager step
    assert row["mfu_inductor"] > 0 and row["mfu_inductor_graph"] is None
    assert "only stage I" in row["note"]
