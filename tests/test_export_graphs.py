"""Every component in fp32, fp16 and bf16: ONNX checker, shape inference, the spec's I/O, and ONNX Runtime
(CPU provider) against the torch module at several shapes.

Errors are max |graph - torch fp32| / max |torch fp32|. fp32 graphs must match to 1e-4, fp16 graphs to
1e-2. ORT's CPU provider has no bf16 kernels, so bf16 graphs run through
``ifengine.export.bf16.emulate_bf16`` (every bf16 tensor rounded to bf16 after the op that makes it).
bf16 keeps 8 mantissa bits: on these random tiny networks torch's own bf16 run is up to ~2e-2 from fp32,
so a bf16 graph must be within 1e-2 of fp32 or within 1.5x torch-bf16's own distance from fp32.
int8 graphs (U-Nets, step graphs, T5) run at the same shapes here and stay pointed the same way as fp32
on these random inputs; their fidelity bar (cosine >= 0.98 on held-out realistic inputs) is in
test_export_precision.py.
"""

import numpy as np
import pytest
import torch
from export_support import relative_error, to_numpy

from ifengine.export.inputs import random_inputs
from ifengine.export.sources import ALL_COMPONENTS, plan_sources
from ifengine.facts import UNETS
from ifengine.export.spec import MODEL, ComponentSpec
from ifengine.export.precision import supports
from ifengine.export.verify import check_graph, cosine, is_bf16, run_onnx, session
from ifengine.models.checkpoint import resolve

TOL = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 1e-2}


@pytest.fixture(scope="module")
def sources(stage1_dir, stage2_dir, stage3_dir):
    ckpts = {1: resolve(stage1_dir, 1), 2: resolve(stage2_dir, 2), 3: resolve(stage3_dir, 3)}
    return {s.name: s for s in plan_sources(ckpts)}


@pytest.fixture(scope="module")
def fp32_modules(sources):
    cache = {}
    return lambda name: cache.setdefault(name, sources[name].load(torch.float32))


def shapes(spec: ComponentSpec) -> list[dict[str, int]]:
    """Batch 1 and 3, square and non-square, and a shorter prompt for the text encoders."""
    dims = {k: v for k, v in spec.dims_at("opt").items() if k not in spec.derived}
    if "height" not in dims:
        return [dims | {"batch": 1}, dims | {"batch": 3, "tokens": 20}]
    lo, opt = spec.ranges["height"].min, spec.ranges["height"].opt
    return [dims | {"batch": 1, "height": lo, "width": opt}, dims | {"batch": 3, "height": lo, "width": lo}]


def run_torch(module, source, inputs, dtype=torch.float32):
    """The torch module on the inputs, those the spec types "model" cast to ``dtype``."""
    model_typed = {t.name for t in source.spec.inputs if t.dtype == MODEL}
    args = [v.to(dtype) if k in model_typed else v for k, v in inputs.items()]
    with torch.no_grad():
        return to_numpy(module(*args))


def test_every_component_is_exported(exports, sources):
    assert set(sources) == set(ALL_COMPONENTS)


# a step graph holds its U-Net: the bare U-Net graphs are the same quantised layers again (~40 s on 2 cores)
INT8 = [pytest.param(c, marks=pytest.mark.slow) if c in UNETS else c for c in ALL_COMPONENTS if supports(c, "int8")]


@pytest.mark.parametrize("component", INT8)
def test_int8_graph_runs_on_onnxruntime(exports, sources, fp32_modules, component):
    manifest = exports.manifest(component, "int8")
    graph, spec = exports.graph(component, "int8"), ComponentSpec.from_dict(manifest["spec"])
    check_graph(graph, spec)
    source, sess = sources[component], session(graph)
    gen = torch.Generator().manual_seed(1)
    for dims in shapes(spec):
        inputs = random_inputs(spec, dims, source.config, gen)
        ref = run_torch(fp32_modules(component), source, inputs)
        out = run_onnx(sess, {k: v.numpy() for k, v in inputs.items()})[0]
        assert out.shape == ref.shape and np.isfinite(out).all()
        assert cosine(out, ref) >= 0.9, f"{component} int8 at {dims}: cosine {cosine(out, ref):.3f}"


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("component", ALL_COMPONENTS)
def test_graph_matches_torch_on_onnxruntime(exports, sources, fp32_modules, component, precision):
    exports.get(precision)
    manifest = exports.manifest(component, precision)
    graph, spec = exports.graph(component, precision), ComponentSpec.from_dict(manifest["spec"])
    check_graph(graph, spec)
    assert manifest["opset"] == (22 if precision == "bf16" else 19)
    assert is_bf16(graph) == (precision == "bf16")
    source, sess = sources[component], session(graph)
    low = source.load(torch.bfloat16) if precision == "bf16" else None
    gen = torch.Generator().manual_seed(0)
    for dims in shapes(spec):
        inputs = random_inputs(spec, dims, source.config, gen)
        ref = run_torch(fp32_modules(component), source, inputs)
        out = run_onnx(sess, {k: to_numpy(v) if v.is_floating_point() else v.numpy() for k, v in inputs.items()})[0]
        assert out.shape == ref.shape == spec.output_shapes(**dims)[spec.output_names[0]]
        bar = TOL[precision]
        if low is not None:
            bar = max(bar, 1.5 * relative_error(run_torch(low, source, inputs, torch.bfloat16), ref))
        err = relative_error(out, ref)
        assert err <= min(bar, 5e-2), f"{component} {precision} at {dims}: relative error {err:.2e} (bar {bar:.1e})"
