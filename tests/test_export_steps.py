"""The step graphs equal the torch steps (``stage.steps.if_step`` / ``x4_step``) on ONNX Runtime, at
every kind of step (first, middle, last with t = 0), batch sizes, square and non-square images, and
schedules of different lengths fed through the same graph."""

import onnx
import pytest
import torch
from export_support import relative_error

from ifengine.export.step_graphs import pack_ddim, pack_ddpm, quantile_dynamic
from ifengine.export.verify import run_onnx, session
from ifengine.stage.components import load_if_stage, load_x4_stage
from ifengine.stage.steps import if_step, x4_step
from ifengine.models.checkpoint import resolve
from ifengine.schedule import ddim_tables, ddpm_tables, quantile_last_dim

TOL = 1e-4  # the fp32 bar; measured <= 1e-5 (x0 at t ~ 990 amplifies the U-Net's float noise)


def test_shape_following_quantile_equals_the_torch_one():
    x = torch.randn(3, 3 * 24 * 16, generator=torch.Generator().manual_seed(0)).abs()
    for q in (0.95, 0.5, 0.3):
        assert torch.equal(quantile_dynamic(x, q), quantile_last_dim(x, q))
        assert torch.allclose(quantile_dynamic(x, q), torch.quantile(x, q, dim=-1))


@pytest.mark.parametrize("stage", [1, 2])
def test_if_step_graph_equals_torch_step(exports, stage1_dir, stage2_dir, stage):
    ckpt = resolve(stage1_dir if stage == 1 else stage2_dir, stage)
    loaded = load_if_stage(ckpt, torch.float32, "cpu", None)
    sess = session(exports.graph(f"step{stage}", "fp32"))
    gen = torch.Generator().manual_seed(stage)
    base = 16 if stage == 1 else 64
    for batch, (h, w), steps in ((1, (base, base), 10), (3, (base + base // 2, base), 27)):
        tables = ddpm_tables(loaded.scheduler, num_inference_steps=steps)
        x, noise = torch.randn((batch, 3, h, w), generator=gen), torch.randn((batch, 3, h, w), generator=gen)
        embeds, guidance = torch.randn((2 * batch, 77, 32), generator=gen), torch.tensor(7.0)
        extra = {}
        if stage == 2:
            level = torch.full((2 * batch,), 250)
            extra = {"upscaled": torch.randn((batch, 3, h, w), generator=gen), "noise_level": level}
        for i in (0, steps // 2, steps - 1):
            ref = if_step(loaded.unet, tables, torch.tensor(i), x, embeds, noise, guidance, True, **extra).numpy()
            feeds = {
                "sample": x,
                "step": torch.tensor([i]),
                "schedule": pack_ddpm(tables),
                "text_embeds": embeds,
                "noise": noise,
                "guidance": guidance.reshape(1),
                **extra,
            }
            out = run_onnx(sess, {k: v.numpy() for k, v in feeds.items()})[0]
            assert relative_error(out, ref) <= TOL, f"step {i} of {steps} at {batch}x{h}x{w}"


def test_x4_step_graph_equals_torch_step(exports, stage3_dir):
    loaded = load_x4_stage(resolve(stage3_dir, 3), torch.float32, "cpu", None)
    sess = session(exports.graph("step3", "fp32"))
    gen = torch.Generator().manual_seed(3)
    for batch, (h, w), steps in ((1, (64, 64), 5), (2, (32, 64), 12)):
        tables = ddim_tables(loaded.scheduler, steps)
        latents = torch.randn((batch, 4, h, w), generator=gen)
        image = torch.randn((2 * batch, 3, h, w), generator=gen)
        embeds, level = torch.randn((2 * batch, 77, 32), generator=gen), torch.full((2 * batch,), 20)
        for i in (0, steps - 1):
            ref = x4_step(loaded.unet, tables, torch.tensor(i), latents, image, embeds, level, torch.tensor(9.0), True)
            feeds = {
                "sample": latents,
                "step": torch.tensor([i]),
                "schedule": pack_ddim(tables),
                "image": image,
                "text_embeds": embeds,
                "noise_level": level,
                "guidance": torch.tensor([9.0]),
            }
            out = run_onnx(sess, {k: v.numpy() for k, v in feeds.items()})[0]
            assert relative_error(out, ref.numpy()) <= TOL


def test_step_graphs_stay_tensorrt_buildable(exports):
    """Stage I thresholds with one TopK whose k follows the image (bounded by the spec); stage II clips."""
    ops = {
        n: [node.op_type for node in onnx.load(str(exports.graph(n, "fp32"))).graph.node]
        for n in ("step1", "step2", "step3")
    }
    assert ops["step1"].count("TopK") == 1
    assert "TopK" not in ops["step2"] and "TopK" not in ops["step3"]
    spec = exports.manifest("step1", "fp32")["spec"]
    assert spec["ranges"]["height"]["max"] * spec["ranges"]["width"]["max"] * 3 < 3840 / 0.05
    for name in ops:
        assert {"If", "Loop", "Scan"}.isdisjoint(ops[name]), "no data-dependent control flow"
        names = [i["name"] for i in exports.manifest(name, "fp32")["spec"]["inputs"]]
        assert names[:3] == ["sample", "step", "schedule"]
