"""CI-sized run of benchmarks/export_full_size.py: the same code path as the full-size figures, tiny models."""

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "export_full_size.py"


def test_full_size_export_benchmark_runs_on_the_tiny_preset(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("export_full_size", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = tmp_path / "results"
    assert (
        bench.main(
            [
                "export",
                "--preset",
                "tiny",
                "--components",
                "t5,unet1",
                "--work",
                str(tmp_path / "work"),
                "--results",
                str(results),
            ]
        )
        == 0
    )
    data = json.loads((results / "export_full_size.json").read_text())["export"]["tiny"]
    for component in ("t5", "unet1"):
        run = data["components"][component]
        assert 0 < run["peak_rss_gib"] < 4 and run["wall_s"] > 0 and run["opset"] == 19
    assert "| unet1 | tiny-I |" in (results / "export_full_size.md").read_text()
    assert not (tmp_path / "work" / "artifacts").exists()  # big files are removed unless --keep
