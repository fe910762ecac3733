"""A captured graph finds its networks bound as they were at capture (TensorRT's rule, decided in
``backends.static_io`` and run here through its ONNX Runtime twin, whose IO binding holds shapes and
addresses the same way a TensorRT context does)."""

import numpy as np
import torch

from ifengine.backends.onnxruntime.network import OrtNetwork
from ifengine.backends.onnxruntime.session import OrtGraph
from ifengine.backends.static_io import recording_bindings, restore_bindings
from ifengine.runtime import graphs
from ifengine.runtime.graphs import StepGraph


def _feeds(batch, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(batch, 3, h, w, generator=g),
        "timestep": torch.full((batch,), 7.0),
        "encoder_hidden_states": torch.randn(batch, 77, 32, generator=g),
    }


def _reference(net, feeds):
    return net.graph.session.run(None, {k: v.numpy() for k, v in feeds.items()})[0]


def _step(net, feeds):
    """A step around one network, and what its capture records: the copies into the buffers as they
    were at capture, and the enqueue (a replay runs these and no Python, so no prepare())."""
    dims = net.dims_of({k: tuple(v.shape) for k, v in feeds.items()})

    def step():
        net.prepare(dims)
        for name, view in net.inputs().items():
            view.copy_(feeds[name])
        net.enqueue()

    def recorded():
        views = net.inputs()
        return lambda: ([v.copy_(feeds[n]) for n, v in views.items()], net.enqueue())

    return step, recorded, net.outputs


class Recorded:
    def __init__(self, kernels):
        self.replay = kernels


def test_a_replay_after_another_shape_rebinds_first(exports, monkeypatch):
    net = OrtNetwork(OrtGraph(exports.manifest_path("unet1", "fp32")))
    a, b = _feeds(2, 16, 16, seed=0), _feeds(1, 8, 8, seed=1)
    step_a, recorded_a, _ = _step(net, a)

    def capture(fn, pool, stream):  # as torch.cuda.graph: the step's Python runs once, while recording
        fn()
        return Recorded(recorded_a())

    monkeypatch.setattr(graphs, "check_graph_device", lambda device: None)
    monkeypatch.setattr(graphs, "_new_stream", lambda device: None)
    monkeypatch.setattr(graphs, "_capture", capture)
    graph_a = StepGraph(step_a, device=torch.device("cuda"), warmup_steps=1)
    graph_a.step_no_sync()  # warm-up
    graph_a.step_no_sync()  # capture
    step_b, _, _ = _step(net, b)
    step_b()  # call B binds the network to B's shapes
    out_b = next(iter(net.outputs().values()))
    assert np.allclose(out_b.numpy(), _reference(net, b), atol=1e-5)
    binds = net.io.binds
    graph_a.replay_no_sync()  # call A again: its replay must find the network bound at A
    out_a = next(iter(net.outputs().values()))
    assert net.io.binds == binds + 1 and out_a.shape == (2, 6, 16, 16)
    assert np.allclose(out_a.numpy(), _reference(net, a), atol=1e-5)
    graph_a.replay_no_sync()  # already bound at A: nothing to tell the backend
    assert net.io.binds == binds + 1


def test_restore_is_a_no_op_while_nothing_changed(exports):
    net = OrtNetwork(OrtGraph(exports.manifest_path("unet1", "fp32")))
    step, _, _ = _step(net, _feeds(1, 8, 8, seed=2))
    with recording_bindings() as needs:
        step()
    assert len(needs) == 1 and restore_bindings(needs) == 0
    _step(net, _feeds(2, 16, 16, seed=3))[0]()
    assert restore_bindings(needs) == 1 and restore_bindings(needs) == 0
