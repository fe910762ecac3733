"""StepGraph / GraphCache state machine and the capture audit, on the CPU.

The CUDA calls of graphs.py (stream, pool, capture) are replaced by conftest's ``fake_cuda``, which records
what a real capture would record; the state machine around them is the real code.
"""

import pytest
import torch

from ifengine.models.if_unet import IFUNet
from ifengine.models.presets import unet_preset
from ifengine.models.x4_unet import X4UNet
from ifengine.stage.steps import if_step, x4_step
from ifengine.runtime import graphs
from ifengine.runtime.capture_audit import audit
from ifengine.runtime.graphs import GraphCache, GraphStateError, StepGraph
from ifengine.schedule import ddim_tables, ddpm_tables
from ifengine.schedule.presets import IF_STAGE1_DDPM, IF_STAGE2_DDPM, X4_DDIM


def counter_step():
    state = {"calls": 0}

    def step():
        state["calls"] += 1

    return state, step


def test_graphs_on_cpu_are_refused_with_the_fix_named():
    with pytest.raises(ValueError, match="cuda_graphs=False"):
        StepGraph(lambda: None, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="cuda_graphs=False"):
        GraphCache("cpu", enabled=True)


def test_disabled_graph_runs_every_step_eagerly():
    state, step = counter_step()
    graph = StepGraph(step, device=torch.device("cpu"), enabled=False)
    for _ in range(5):
        graph.step_no_sync()
    assert state["calls"] == 5 and graph.state == graphs.NEW
    with pytest.raises(GraphStateError, match="disabled"):
        graph.capture()


def test_warm_up_then_capture_once_then_replay(fake_cuda):
    state, step = counter_step()
    graph = StepGraph(step, device=torch.device("cuda"), warmup_steps=2)
    for _ in range(6):
        graph.step_no_sync()
    # 2 eager warm-up steps, capture (runs nothing), then 4 replays: every step ran exactly once
    assert state["calls"] == 6 and graph.state == graphs.CAPTURED
    assert graph._graph.replays == 4 and len(fake_cuda["captures"]) == 1


@pytest.mark.parametrize(
    "misuse, message",
    [
        (lambda g: g.capture(), "capture after 0 of 2 warm-up"),
        (lambda g: g.replay_no_sync(), "replay before capture"),
    ],
)
def test_misuse_before_capture_is_an_error(fake_cuda, misuse, message):
    graph = StepGraph(lambda: None, device=torch.device("cuda"), warmup_steps=2)
    with pytest.raises(GraphStateError, match=message):
        misuse(graph)


def test_misuse_after_capture_is_an_error(fake_cuda):
    graph = StepGraph(lambda: None, device=torch.device("cuda"), warmup_steps=1)
    graph.warmup_no_sync()
    graph.capture()
    with pytest.raises(GraphStateError, match="captured twice"):
        graph.capture()
    with pytest.raises(GraphStateError, match="warm-up after capture"):
        graph.warmup_no_sync()


def test_cache_is_keyed_by_shape_and_shares_one_pool(fake_cuda):
    cache = GraphCache("cuda", warmup_steps=1)
    made = []
    first = cache.get(("stage1", (1, 3, 64, 64)), lambda: made.append(1) or (lambda: None))
    assert cache.get(("stage1", (1, 3, 64, 64)), lambda: made.append(2) or (lambda: None)) is first
    other = cache.get(("stage1", (2, 3, 64, 64)), lambda: made.append(3) or (lambda: None))
    assert made == [1, 3] and other is not first and other.pool is first.pool
    cache.clear()
    assert len(cache) == 0


def test_audit_flags_host_reads_and_host_data():
    x = torch.randn(4)
    assert "reads a tensor back" in audit(lambda: x.sum().item()).problems[0]
    assert "host data" in audit(lambda: x + torch.tensor([1.0, 2.0, 3.0, 4.0])).problems[0]
    assert "data-dependent" in audit(lambda: x[x > 0]).problems[0]


def _scalar(value, dtype=torch.float32):
    return torch.tensor(value, dtype=dtype)


@pytest.mark.parametrize("stage", [1, 2])
def test_if_step_is_capturable(stage):
    torch.manual_seed(0)
    config = unet_preset("tiny-I" if stage == 1 else "tiny-II")
    unet = IFUNet(config).eval()
    tables = ddpm_tables(IF_STAGE1_DDPM if stage == 1 else IF_STAGE2_DDPM, num_inference_steps=5)
    x, noise = torch.randn(1, 3, 16, 16), torch.randn(1, 3, 16, 16)
    embeds, i, guidance = torch.randn(2, 77, 32), _scalar(1, torch.long), _scalar(7.0)
    extra = {} if stage == 1 else dict(upscaled=torch.randn(1, 3, 16, 16), noise_level=torch.full((2,), 250))
    with torch.no_grad():
        found = audit(lambda: if_step(unet, tables, i, x, embeds, noise, guidance, True, **extra))
    assert found.problems == [] and found.ops > 100


def test_x4_step_is_capturable():
    torch.manual_seed(0)
    unet = X4UNet(unet_preset("tiny-x4")).eval()
    tables = ddim_tables(X4_DDIM, 5)
    latents, image = torch.randn(1, 4, 16, 16), torch.randn(2, 3, 16, 16)
    i, args = _scalar(2, torch.long), (torch.randn(2, 77, 32), torch.full((2,), 20), _scalar(9.0), True)
    with torch.no_grad():
        found = audit(lambda: x4_step(unet, tables, i, latents, image, *args))
    assert found.problems == []
