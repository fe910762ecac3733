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


def peft_unet(unet_dir, seed, targets=TARGETS, rank=4, alpha=8):
    """A copy of the tiny U-Net with a random peft LoRA (non-zero lora_B) as adapter "default"."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(unet_dir)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False)
    unet.add_adapter(config)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_" in name:
                p.copy_(0.1 * torch.randn_like(p))
    return unet, config


def make_lora(unet_dir, out, seed, targets=TARGETS, rank=4, alpha=8, metadata=True):
    """``peft_unet``'s LoRA saved with IFPipeline.save_lora_weights (with its LoraConfig as metadata)."""
    from diffusers import IFPipeline
    from peft.utils import get_peft_model_state_dict

    unet, config = peft_unet(unet_dir, seed, targets, rank, alpha)
    state = get_peft_model_state_dict(unet)
    meta = {"unet_lora_adapter_metadata": config.to_dict()} if metadata else {}
    IFPipeline.save_lora_weights(out, unet_lora_layers=state, **meta)
    return out


@pytest.fixture(scope="module")
def loras(stage1_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    return {
        "a": make_lora(stage1_dir / "unet", root / "a", seed=1),
        "b": make_lora(stage1_dir / "unet", root / "b", seed=2, targets=["to_q", "to_v", "conv2"], rank=2, alpha=2),
    }


def run_ours(pipe, seed=0, **kwargs):
    return pipe("a red cat", steps=4, seed=seed, output_type="pt", progress=False, **kwargs).stages[0]


def run_ref(d1, seed=0, **kwargs):
    g = torch.Generator().manual_seed(seed)
    d1.set_progress_bar_config(disable=True)
    return d1("a red cat", num_inference_steps=4, height=16, width=16, generator=g, output_type="pt", **kwargs).images


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
    fused = run_ours(pipe1)
    assert err(fused, run_ref(diffusers_stage1)) <= TOL and err(fused, ours) > 0.05
    # diffusers' unfused layers keep fuse_lora's scale: the image after unfusing is still the 0.5 one
    diffusers_stage1.unfuse_lora()
    pipe1.unfuse_lora()
    assert err(run_ours(pipe1), run_ref(diffusers_stage1)) <= TOL and err(run_ours(pipe1), fused) <= TOL
    diffusers_stage1.fuse_lora(lora_scale=0.5)  # multiplies again: 0.25
    pipe1.fuse_lora(0.5)  # ifengine's positional spelling of lora_scale
    assert err(run_ours(pipe1), run_ref(diffusers_stage1)) <= TOL and err(run_ours(pipe1), fused) > 0.05
    # unloading keeps what was fused (diffusers' fuse + unload bakes a LoRA in)
    diffusers_stage1.unload_lora_weights()
    pipe1.unload_lora_weights()
    assert pipe1.get_list_adapters() == {} and diffusers_stage1.get_list_adapters() == {}
    assert err(run_ours(pipe1), run_ref(diffusers_stage1)) <= TOL and err(run_ours(pipe1), base) > 0.05


def test_unloading_unfused_lora_gives_base_weights_back_exactly(pipe1, loras):
    base = run_ours(pipe1)
    pipe1.load_lora_weights(loras["a"], stage=1)
    pipe1.set_adapters("default_0", 0.3)
    pipe1.unload_lora_weights()
    assert torch.equal(run_ours(pipe1), base)


def test_second_adapter_is_the_only_active_one_then_weights_match_diffusers(pipe1, diffusers_stage1, loras):
    for n in ("a", "b"):
        pipe1.load_lora_weights(loras[n], stage=1, adapter_name=n)
        diffusers_stage1.load_lora_weights(loras[n], adapter_name=n)
    # diffusers activates the adapter loaded last (only it)
    assert pipe1.get_active_adapters(1) == diffusers_stage1.get_active_adapters() == ["b"]
    assert err(run_ours(pipe1), run_ref(diffusers_stage1)) <= TOL
    pipe1.set_adapters(["a", "b"], [0.7, -0.4])
    diffusers_stage1.set_adapters(["a", "b"], [0.7, -0.4])
    assert err(run_ours(pipe1), run_ref(diffusers_stage1)) <= TOL
    pipe1.set_adapters("b")
    diffusers_stage1.set_adapters("b")
    assert err(run_ours(pipe1), run_ref(diffusers_stage1)) <= TOL


def test_delete_adapters_matches_diffusers(pipe1, diffusers_stage1, loras):
    both = (pipe1, diffusers_stage1)
    for n, file in (("a", "a"), ("b", "b"), ("c", "a")):
        pipe1.load_lora_weights(loras[file], stage=1, adapter_name=n)
        diffusers_stage1.load_lora_weights(loras[file], adapter_name=n)
    for p in both:
        p.set_adapters(["c", "b"], [0.5, 0.8])
        p.delete_adapters("c")  # an active one of two: the other stays active, at its weight
    assert pipe1.get_active_adapters(1) == diffusers_stage1.get_active_adapters() == ["b"]
    assert err(run_ours(pipe1), run_ref(diffusers_stage1)) <= TOL
    for p in both:
        p.delete_adapters(["b"])  # the only active one: peft activates the first remaining by name
    assert pipe1.get_active_adapters(1) == diffusers_stage1.get_active_adapters() == ["a"]
    assert pipe1.get_list_adapters() == {1: ["a"]} and diffusers_stage1.get_list_adapters() == {"unet": ["a"]}
    assert err(run_ours(pipe1), run_ref(diffusers_stage1)) <= TOL
    with pytest.raises(LoraError, match="no adapter named"):
        pipe1.delete_adapters("b")


def test_fuse_with_adapter_names_and_components_matches_diffusers(pipe1, diffusers_stage1, loras):
    for n in ("a", "b"):
        pipe1.load_lora_weights(loras[n], stage=1, adapter_name=n)
        diffusers_stage1.load_lora_weights(loras[n], adapter_name=n)
    unfused = run_ref(diffusers_stage1)
    for p in (pipe1, diffusers_stage1):
        p.fuse_lora(components=["text_encoder"], lora_scale=0.5)  # no text-encoder LoRA: nothing changes
    assert err(run_ours(pipe1), unfused) <= TOL and err(run_ref(diffusers_stage1), unfused) <= TOL
    for p in (pipe1, diffusers_stage1):
        p.set_adapters("a")
        # "a" (active) is scaled by 0.5 but "b" is fused: modules holding b give base + b only, the
        # others keep a's unfused path at 0.5, as peft's merged and unmerged layers compute
        p.fuse_lora(components=["unet"], lora_scale=0.5, adapter_names=["b"])
    assert err(run_ours(pipe1), run_ref(diffusers_stage1)) <= TOL
    for p in (pipe1, diffusers_stage1):
        p.unfuse_lora(components=["unet"])
    assert err(run_ours(pipe1), run_ref(diffusers_stage1)) <= TOL
    with pytest.raises(LoraError, match="components takes 'unet' and 'text_encoder'"):
        pipe1.fuse_lora(components=["vae"])
    with pytest.raises(LoraError, match="no adapter named 'missing'"):
        pipe1.fuse_lora(adapter_names=["missing"])


def test_per_call_scale_matches_diffusers(pipe1, diffusers_stage1, loras):
    pipe1.load_lora_weights(loras["a"], stage=1)
    diffusers_stage1.load_lora_weights(loras["a"])
    full = run_ref(diffusers_stage1)
    scaled = run_ours(pipe1, cross_attention_kwargs={"scale": 0.3})
    assert err(scaled, run_ref(diffusers_stage1, cross_attention_kwargs={"scale": 0.3})) <= TOL
    assert err(scaled, full) > 0.05
    assert err(run_ours(pipe1), full) <= TOL  # the next call is back at the adapters' own scale
    with pytest.raises(LoraError, match="cross_attention_kwargs takes"):
        run_ours(pipe1, cross_attention_kwargs={"scale": 0.3, "attn_mask": None})
    assert err(run_ours(pipe1), full) <= TOL  # a refused call leaves the weights as they were


def test_lora_alpha_comes_from_the_files_metadata(pipe1, diffusers_stage1, stage1_dir, tmp_path):
    """rank 4, lora_alpha 16: the file's metadata says scale 4; without metadata the scale is 1 (alpha =
    rank), in diffusers as here."""
    with_meta = make_lora(stage1_dir / "unet", tmp_path / "meta", seed=3, alpha=16)
    without = make_lora(stage1_dir / "unet", tmp_path / "plain", seed=3, alpha=16, metadata=False)
    pipe1.load_lora_weights(with_meta, stage=1, adapter_name="m")
    diffusers_stage1.load_lora_weights(with_meta, adapter_name="m")
    meta = run_ours(pipe1)
    assert err(meta, run_ref(diffusers_stage1)) <= TOL
    for p in (pipe1, diffusers_stage1):
        p.unload_lora_weights()
    pipe1.load_lora_weights(without, stage=1, adapter_name="p")
    diffusers_stage1.load_lora_weights(without, adapter_name="p")
    assert err(run_ours(pipe1), run_ref(diffusers_stage1)) <= TOL and err(run_ours(pipe1), meta) > 0.05


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "no tensors", "bad metadata"])
def test_damaged_lora_files_raise_one_line_naming_the_file(pipe1, loras, tmp_path, damage):
    from safetensors.torch import save_file

    good = (loras["a"] / "pytorch_lora_weights.safetensors").read_bytes()
    path = tmp_path / "damaged.safetensors"
    if damage == "no tensors":
        save_file({}, str(path))
    elif damage == "bad metadata":
        save_file({"unet.x.lora_A.weight": torch.zeros(1, 1)}, str(path), metadata={"lora_adapter_metadata": "{"})
    else:
        path.write_bytes({"empty": b"", "truncated": good[: len(good) // 2], "garbage": b"\x93NUMPY" * 50}[damage])
    with pytest.raises(ifengine.IFEngineError) as caught:
        pipe1.load_lora_weights(path, stage=1)
    assert isinstance(caught.value, LoraFormatError) and str(path) in str(caught.value)
    assert "\n" not in str(caught.value)
    assert pipe1.get_list_adapters() == {}


def test_scale_on_load_and_older_key_style(pipe1, loras, stage1_dir, diffusers_stage1):
    """The older key styles (training-script files) against the peft-adapted U-Net itself: diffusers
    refuses these files ("Invalid LoRA checkpoint": their network-alpha keys hold no 'lora')."""
    from safetensors.torch import load_file

    pipe1.load_lora_weights(loras["a"], stage=1, adapter_name="a", scale=0.6)
    peft_style = run_ours(pipe1)
    pipe1.unload_lora_weights()
    diffusers_stage1.unet = peft_unet(stage1_dir / "unet", seed=1)[0]  # the model loras["a"] was saved from
    assert err(peft_style, run_ref(diffusers_stage1, cross_attention_kwargs={"scale": 0.6})) <= TOL
    # the older diffusers naming of the same tensors: .lora.down/.lora.up, alphas as network alphas
    state = load_file(loras["a"] / "pytorch_lora_weights.safetensors")
    old = {k.replace("lora_A.weight", "lora.down.weight").replace("lora_B.weight", "lora.up.weight"): v
           for k, v in state.items()}  # fmt: skip
    old.update({k.split(".lora_A")[0] + ".alpha": torch.tensor(8.0) for k in state if "lora_A" in k})
    with pytest.raises(ValueError, match="Invalid LoRA checkpoint"):
        diffusers_stage1.load_lora_weights(dict(old))
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
