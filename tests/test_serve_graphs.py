"""`ifengine serve --artifacts/--engines`: exported graphs served in either layout, from the same loader
as `ifengine generate --artifacts`; checked without starting Ray (tests/test_serve.py runs a real Ray Serve)."""

import pytest
import torch

import ifengine
from ifengine.cli import main
from ifengine.serve import ModelSource, ServeConfig
from ifengine.serve.models import load_whole, model_info

pytest.importorskip("ray.serve")


def test_graphs_serve_in_the_split_layout_too(exports, tmp_path):
    import yaml

    out = tmp_path / "serve.yaml"
    assert main(["serve", "--artifacts", str(exports.get("fp32")), "--print-config", str(out)]) == 0
    (app,) = yaml.safe_load(out.read_text())["applications"]
    assert {d["name"] for d in app["deployments"]} >= {"text", "stage1", "stage2", "stage3"}
    assert ServeConfig(source=ModelSource(engines="engines")).layout == "split"


def test_print_config_carries_the_artifacts(exports, tmp_path):
    import yaml

    out = tmp_path / "serve.yaml"
    argv = ["serve", "--artifacts", str(exports.get("fp32")), "--layout", "single", "--print-config", str(out)]
    assert main(argv) == 0
    (app,) = yaml.safe_load(out.read_text())["applications"]
    rebuilt = ServeConfig.from_dict(app["args"])
    assert rebuilt.layout == "single" and rebuilt.source.artifacts == str(exports.get("fp32"))
    assert not rebuilt.source.is_demo


def test_model_facts_from_graph_manifests_equal_the_checkpoints(exports, stage1_dir, stage2_dir, stage3_dir):
    from_graphs = model_info(ModelSource(artifacts=str(exports.get("fp32")), device="cpu"))
    from_ckpts = model_info(ModelSource(str(stage1_dir), str(stage2_dir), str(stage3_dir), device="cpu"))
    assert from_graphs.stages == from_ckpts.stages == (1, 2, 3)
    assert from_graphs.sample_size == from_ckpts.sample_size
    assert from_graphs.downsample == from_ckpts.downsample


def test_a_graph_replica_computes_what_torch_does(exports, stage1_dir, stage2_dir, stage3_dir):
    served = load_whole(ModelSource(artifacts=str(exports.get("fp32")), device="cpu", dtype="float32"))
    torch_pipe = ifengine.Cascade.from_pretrained(stage1_dir, safety=False)
    kwargs = dict(steps=(3, 2, 2), seed=5, last_stage=1, output_type="pt")
    got = served("a red cat", **kwargs).stages[0]
    want = torch_pipe("a red cat", **kwargs).stages[0]
    assert torch.allclose(got, want, atol=1e-4)
