"""LoRA against diffusers: a random LoRA made with peft on the tiny stage I U-Net, saved the way diffusers'
DreamBooth-LoRA script saves it, loaded into ifengine and into diffusers' IFPipeline; same images."""

import numpy as np
import pytest
import torch

import ifengine
from ifengine.lora import LoraError, LoraFormatError

TOL = 1e-3
pytestmark = pytest.mark.usefixtures("one_thread")
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj", "conv1"]


def make_lora(unet_dir, out, seed, targets=TARGETS, rank=4, alpha=8):
    """A random peft LoRA (non-zero lora_B) on a copy of the tiny U-Net, saved with IFPipeline.save_lora_weights."""
    from diffusers import IFPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(unet_dir)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False)
    unet.add_adapter(config)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_" in name:
                p.copy_(0.1 * torch.randn_like(p))
    state = get_peft_model_state_dict(unet)
    IFPipeline.save_lora_weights(out, unet_lora_layers=state, unet_lora_adapter_metadata=config.to_dict())
    return out


@pytest.fixture(scope="module")
def loras(stage1_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    return {
        "a": make_lora(stage1_dir / "unet", root / "a", seed=1),
        "b": make_lora(stage1_dir / "unet", root / "b", seed=2, targets=["to_q", "to_v", "conv2"], rank=2, alpha=2),
    }


def run_ours(pipe, seed=0):
    return pipe("a red cat", steps=4, seed=seed, output_type="pt", progress=False).stages[0]


def run_ref(d1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return d1("a red cat", num_inference_steps=4, height=16, width=16, generator=g, output_type="pt").images


def err(a, b):
    return (a - b).abs().max().item()


def test_one_lora_matches_diffusers_unfused_and_fused(pipe1, diffusers_stage1, loras):
    base = run_ours(pipe1)
    name = pipe1.load_lora_weights(loras["a"], stage=1, adapter_name="a")
    assert name == "a" and pipe1.get_active_adapters(1) == ["a"]
    ours = run_ours(pipe1)
    assert err(ours, base) > 0.05  # the LoRA changes the picture
    diffusers_stage1.load_lora_weights(loras["a"], adapter_name="a")
    assert err(ours, run_ref(diffusers_stage1)) <= TOL
    diffusers_stage1.fuse_lora(lora_scale=0.5)
    pipe1.fuse_lora(lora_scale=0.5)
    assert err(run_ours(pipe1), run_ref(diffusers_stage1)) <= TOL
    pipe1.unload_lora_weights()
    assert torch.equal(run_ours(pipe1), base)  # base weights come back exactly


def test_two_adapters_with_weights_match_diffusers(pipe1, diffusers_stage1, loras):
    for n in ("a", "b"):
        pipe1.load_lora_weights(loras[n], stage=1, adapter_name=n)
        diffusers_stage1.load_lora_weights(loras[n], adapter_name=n)
    pipe1.set_adapters(["a", "b"], [0.7, -0.4])
    diffusers_stage1.set_adapters(["a", "b"], [0.7, -0.4])
    assert err(run_ours(pipe1), run_ref(diffusers_stage1)) <= TOL
    pipe1.set_adapters("b")
    diffusers_stage1.set_adapters("b")
    assert err(run_ours(pipe1), run_ref(diffusers_stage1)) <= TOL


def test_scale_on_load_and_older_key_style(pipe1, loras, stage1_dir):
    from safetensors.torch import load_file

    pipe1.load_lora_weights(loras["a"], stage=1, adapter_name="a", scale=0.6)
    peft_style = run_ours(pipe1)
    pipe1.unload_lora_weights()
    # the older diffusers naming of the same tensors: .lora.down/.lora.up, alphas as network alphas
    state = load_file(loras["a"] / "pytorch_lora_weights.safetensors")
    old = {k.replace("lora_A.weight", "lora.down.weight").replace("lora_B.weight", "lora.up.weight"): v
           for k, v in state.items()}  # fmt: skip
    old.update({k.split(".lora_A")[0] + ".alpha": torch.tensor(8.0) for k in state if "lora_A" in k})
    pipe1.load_lora_weights(old, stage=1, scale=0.6)
    assert torch.equal(run_ours(pipe1), peft_style)
    pipe1.unload_lora_weights()
    # the first IF DreamBooth-LoRA scripts' attention-processor names: <attn>.processor.to_q_lora.down.weight
    processor = {}
    for k, v in old.items():
        for proj in ("to_q", "to_k", "to_v", "add_k_proj", "add_v_proj"):
            k = k.replace(f".{proj}.lora.", f".processor.{proj}_lora.")
        processor[k.replace(".to_out.0.lora.", ".processor.to_out_lora.")] = v
    assert any(".processor.add_k_proj_lora.down" in k for k in processor)
    pipe1.load_lora_weights(processor, stage=1, scale=0.6)
    assert torch.equal(run_ours(pipe1), peft_style)


def test_traced_executor_sees_new_weights(stage1_dir, loras):
    pipe = ifengine.Cascade.from_pretrained(stage1_dir, safety=False).set_executor("traced")
    before = run_ours(pipe)
    pipe.load_lora_weights(loras["a"], stage=1)
    eager = ifengine.Cascade.from_pretrained(stage1_dir, safety=False).set_executor("eager")
    eager.load_lora_weights(loras["a"], stage=1)
    after = run_ours(pipe)
    assert err(after, before) > 0.05 and err(after, run_ours(eager)) <= 1e-5


def test_bad_loras_are_refused(pipe1, loras, stage1_dir, stage2_dir):
    from safetensors.torch import load_file

    state = load_file(loras["a"] / "pytorch_lora_weights.safetensors")
    stray = {**state, "unet.nowhere.block.to_q.lora_A.weight": torch.zeros(4, 8),
             "unet.nowhere.block.to_q.lora_B.weight": torch.zeros(8, 4)}  # fmt: skip
    with pytest.raises(LoraError, match="nowhere.block.to_q"):
        pipe1.load_lora_weights(stray, stage=1)
    with pytest.raises(LoraFormatError, match="unet.x.lora_magnitude_vector"):
        pipe1.load_lora_weights({**state, "unet.x.lora_magnitude_vector": torch.zeros(3)}, stage=1)
    with pytest.raises(LoraFormatError, match="text encoder"):
        pipe1.load_lora_weights({**state, "text_encoder.a.lora_A.weight": torch.zeros(1, 1)}, stage=1)
    with pytest.raises(LoraError, match="stage 2 has no torch U-Net"):
        pipe1.load_lora_weights(loras["a"], stage=2)
    two = ifengine.Cascade.from_pretrained(stage1_dir, stage2_dir, safety=False)
    with pytest.raises(LoraError, match="not in the stage 2 U-Net"):
        two.load_lora_weights(loras["a"], stage=2)  # a stage I LoRA on stage II: other blocks
    with pytest.raises(LoraError, match="no adapter named"):
        pipe1.set_adapters(["missing"])
    assert pipe1.get_list_adapters() == {}


def test_refit_exported_graph_weights_on_onnxruntime(stage1_dir, loras, tmp_path):
    """Fuse, then write only the changed weights into the exported graph; ONNX Runtime then computes the
    fused U-Net. Checked on the artifact (inline weights, manifest hashes refreshed) and on an
    external-data copy (graph file untouched, data file rewritten)."""
    import onnx
    import onnxruntime as ort

    from ifengine.export.api import export_artifacts
    from ifengine.export.manifest import check_files, read_manifest
    from ifengine.lora import refit_artifact, refit_onnx
    from ifengine.lora.onnx_weights import named_weights

    manifest = export_artifacts({1: stage1_dir}, tmp_path / "art", components=["unet1"], precisions=["fp32"],
                                progress=False)[0]  # fmt: skip
    graph = manifest.parent / read_manifest(manifest)["graph"]
    external = tmp_path / "ext" / "model.onnx"
    external.parent.mkdir()
    onnx.save_model(onnx.load(str(graph)), str(external), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0)  # fmt: skip
    pipe = ifengine.Cascade.from_pretrained(stage1_dir, safety=False)
    torch.manual_seed(0)
    feed = {"sample": torch.randn(2, 3, 16, 16), "timestep": torch.tensor([500.0, 20.0]),
            "encoder_hidden_states": torch.randn(2, 77, 32)}  # fmt: skip
    run = lambda path: ort.InferenceSession(str(path)).run(None, {k: v.numpy() for k, v in feed.items()})[0]  # noqa: E731
    before = run(graph)
    pipe.load_lora_weights(loras["a"], stage=1)
    pipe.fuse_lora(lora_scale=0.8)
    with torch.no_grad():
        fused = pipe.stage1.unet(*feed.values()).numpy()
    assert abs(fused - before).max() > 0.05
    graph_bytes = external.read_bytes()
    assert refit_onnx(external, pipe.lora_updates(1)) == len(pipe.lora_updates(1))
    assert external.read_bytes() == graph_bytes  # only the external data changed
    assert abs(run(external) - fused).max() <= 1e-4
    named = named_weights(graph, pipe.lora_updates(1))  # what a TensorRT Refitter would be given
    refit_artifact(manifest, pipe.lora_updates(1))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(graph)).graph.initializer}
    assert named and all(np.array_equal(inits[n], a) for n, a in named.items())
    check_files(read_manifest(manifest), manifest.parent, full=True)  # sizes and hashes refreshed
    assert abs(run(graph) - fused).max() <= 1e-4
    with pytest.raises(LoraError, match="not in"):  # a weight whose base value the graph does not hold
        refit_onnx(graph, _fake(pipe))


def _fake(pipe):
    from ifengine.lora import WeightUpdate

    w = pipe.stage1.unet.conv_in.weight.detach()
    return [WeightUpdate("conv_in.weight", w + 1, w)]


def test_engine_refit_needs_tensorrt(tmp_path):
    from ifengine.engines.errors import TensorRTUnavailable
    from ifengine.lora.trt_refit import refit_engine

    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed: the real refit is the GPU tests' job")
    with pytest.raises(TensorRTUnavailable):
        refit_engine(object(), tmp_path / "g.onnx", [])
