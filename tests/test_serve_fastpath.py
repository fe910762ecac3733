"""Serving on the fast path: every deployment loads through the one loader and runs the runner `generate`
runs; T5 and CLIP live in the text deployment; stage calls pad up to the captured batch sizes; the safety
checker runs in the text deployment; LoRA per request through Ray Serve's multiplexing.

The first tests call the deployments' work directly (no Ray). The rest run a real local Ray Serve on
127.0.0.1 with two applications (exported graphs in the split layout; checkpoints with a LoRA folder),
started once for the module and always shut down; every HTTP call has a timeout.
"""

import base64
import dataclasses
import io
import logging
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from ifengine.pipeline.cascade import open_cascade
from ifengine.serve import ModelSource, ServeConfig, StageConfig, work
from ifengine.serve.api import GenerationRequest, to_job
from ifengine.serve.config import Limits
from ifengine.serve.models import load_part, model_info
from ifengine.serve.work import NO_CLIP, captured_sizes
from serve_support import local_serve

pytest.importorskip("ray.serve")
pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = [4, 2, 2]
TIMEOUT = 120.0


def _jobs(info, prompts_seeds, **fields):
    return [
        to_job(GenerationRequest(prompt=p, seed=s, steps=STEPS, **fields), info, Limits()) for p, s in prompts_seeds
    ]


def _through_parts(parts, jobs, sizes=()):
    carries = work.encode_batch(parts["text"].cascade, [work.start(j) for j in jobs], clip=parts["text"].clip)
    for n in (1, 2, 3):
        carries = work.stage_batch(parts[f"stage{n}"].cascade, n, carries, sizes)
    assert [c.error for c in carries] == [None] * len(jobs)
    return carries


@pytest.fixture(scope="module")
def ckpt_source(stage1_dir, stage2_dir, stage3_dir):
    return ModelSource(str(stage1_dir), str(stage2_dir), str(stage3_dir), device="cpu")


@pytest.fixture(scope="module")
def ckpt_parts(ckpt_source):
    return {p: load_part(ckpt_source, p, StageConfig()) for p in ("text", "stage1", "stage2", "stage3")}


@pytest.fixture(scope="module")
def pipe(ckpt_source):
    return open_cascade(ckpt_source, safety=False)


def test_each_part_holds_only_its_models(ckpt_parts):
    text, s1, s2, s3 = (ckpt_parts[p] for p in ("text", "stage1", "stage2", "stage3"))
    assert text.cascade.text is not None and text.clip is not None and text.cascade.loaded_stages == ()
    assert s1.cascade.loaded_stages == (1,) and s1.cascade.text is None
    assert s2.cascade.loaded_stages == (2,) and s2.cascade.text is None
    # stage III replicas: the x4 U-Net and the VAE, no CLIP (its rows come with the request)
    assert s3.cascade.loaded_stages == (3,) and s3.cascade.stage3.text is NO_CLIP and s3.cascade.text is None
    with pytest.raises(RuntimeError, match="hold no CLIP"):
        s3.cascade.stage3.text.encode(["a"])


def test_padded_batches_give_each_request_its_image_alone(ckpt_source, ckpt_parts, pipe):
    info = model_info(ckpt_source)
    jobs = _jobs(info, [("a red cat", 3), ("a blue dog", 4), ("a red cat", 5)])
    carries = _through_parts(ckpt_parts, jobs, sizes=(2, 4))
    # three requests ran as one call of 4 rows (the captured size), then each got its own rows back
    assert {k: v for k, v in carries[0].batched.items() if k != "text"} == {"stage1": 4, "stage2": 4, "stage3": 4}
    assert carries[0].clip_pos is not None and carries[0].clip_pos.device.type == "cpu"  # CLIP rows travelled
    for (prompt, seed), c in zip([("a red cat", 3), ("a blue dog", 4), ("a red cat", 5)], carries, strict=True):
        alone = pipe(prompt, seed=seed, steps=STEPS, output_type="pt", progress=False).stages[-1]
        assert c.image.shape == alone.shape
        assert torch.allclose(c.image, alone, atol=1e-4), (c.image - alone).abs().max()


def test_captured_sizes():
    assert captured_sizes(StageConfig(max_batch_size=6, max_ongoing_requests=8), graphs=True) == (1, 2, 4, 6)
    assert captured_sizes(StageConfig(), graphs=False) == ()
    assert captured_sizes(StageConfig(batch_sizes=[4, 2, 4]), graphs=False) == (2, 4)
    with pytest.raises(ValueError, match="batch_sizes"):
        StageConfig(batch_sizes=(0,))
    with pytest.raises(ValueError, match="runtime_mode"):
        StageConfig(runtime_mode="fast")


def test_a_replica_runs_the_runtime_generate_would(ckpt_source, pipe):
    """On a CUDA replica the runtime is always on; on a CPU throughput mode selects it too, so the same
    runner path (``Runtime.run_if_stage``) is exercised here."""
    from ifengine.runtime.api import Runtime

    part = load_part(ckpt_source, "stage1", StageConfig(runtime_mode="throughput", max_batch_size=2))
    assert isinstance(part.cascade.runtime, Runtime) and part.cascade.runner is part.cascade.runtime
    assert part.cascade.runtime.options.mode == "throughput" and part.cascade.runtime.options.max_batch == 2
    plain = load_part(ckpt_source, "stage1", StageConfig())
    assert plain.cascade.runtime is None  # latency mode on a CPU: the plain loops, as `generate` runs
    info = model_info(ckpt_source)
    text = load_part(ckpt_source, "text")
    (carry,) = work.encode_batch(text.cascade, [work.start(j) for j in _jobs(info, [("a red cat", 3)])], text.clip)
    (on_runtime,) = work.stage_batch(part.cascade, 1, [carry])
    (on_loops,) = work.stage_batch(plain.cascade, 1, [carry])
    assert on_runtime.error is None and torch.allclose(on_runtime.image, on_loops.image, atol=1e-5)


def test_graph_parts_split_like_checkpoints(exports, stage1_dir, stage2_dir, stage3_dir):
    source = ModelSource(artifacts=str(exports.get("fp32")), device="cpu")
    s3 = load_part(source, "stage3")
    assert s3.cascade.loaded_stages == (3,) and s3.cascade.stage3.text is NO_CLIP
    assert type(s3.cascade.stage3.unet).__name__ != "X4UNet"  # an ONNX Runtime network, not torch
    assert ServeConfig(source=source).layout == "split"  # graphs and engines serve in both layouts now


def test_safety_checker_in_the_text_part_matches_the_cascade(stage1_safety_dir, stage2_dir, caplog):
    source = ModelSource(str(stage1_safety_dir), str(stage2_dir), device="cpu")
    text = load_part(source, "text", safety=True)
    assert text.safety is not None and text.safety.heads is not None
    whole = open_cascade(source)
    final = torch.rand(2, 3, 64, 64) * 2 - 1
    carries = [dataclasses.replace(work.start(j), image=final[i : i + 1]) for i, j in enumerate(_two_jobs(source))]
    mark = model_info(source).watermark_size(2)
    checked = work.safety_batch(text.safety, carries, [mark, mark])
    want, flags = whole.to_images(final, 2, "pil")
    assert [c.nsfw for c in checked] == [[f] for f in flags]
    for c, img in zip(checked, want, strict=True):
        assert np.array_equal(np.asarray(c.images[0]), np.asarray(img))  # checked and watermarked alike
    with caplog.at_level(logging.WARNING, logger="ifengine.serve.models"):
        off = load_part(source, "text", safety=False)
    assert off.safety is None and "safety checker is off" in caplog.text


def test_the_single_layout_checks_its_own_images_as_the_cascade_does(stage1_safety_dir, stage2_dir):
    """``--layout single``: the replica that makes the images runs the checker and watermark itself (one
    round trip per request); each PIL image and flag equals the library's own call."""
    source = ModelSource(str(stage1_safety_dir), str(stage2_dir), device="cpu")
    whole = open_cascade(source)
    jobs = _two_jobs(source)
    checked = work.checked_cascade_batch(whole, [work.start(j) for j in jobs])
    assert [c.error for c in checked] == [None, None]
    for c, (prompt, seed) in zip(checked, [("a", 1), ("b", 2)], strict=True):
        alone = whole(prompt, seed=seed, steps=STEPS[:2], last_stage=2, progress=False)
        assert c.nsfw is not None and c.nsfw == alone.nsfw_detected and len(c.images) == 1
        got, want = np.asarray(c.images[0], dtype=np.int16), np.asarray(alone.images[0], dtype=np.int16)
        assert got.shape == want.shape and np.abs(got - want).max() <= 1  # batched rows: float rounding


def _two_jobs(source):
    return _jobs(model_info(source), [("a", 1), ("b", 2)], last_stage=2)


@pytest.fixture(scope="module")
def lora_dir(stage1_dir, tmp_path_factory):
    from test_lora import make_lora

    root = tmp_path_factory.mktemp("served_loras")
    for name, seed in (("style-a", 1), ("style-b", 2)):
        made = make_lora(stage1_dir / "unet", root / f"made-{name}", seed=seed)
        shutil.copy(made / "pytorch_lora_weights.safetensors", root / f"{name}.safetensors")
    return root


def test_lora_swaps_in_place_and_back(ckpt_source, lora_dir):
    from ifengine.serve.workers import LoraSlots, _Held

    part = load_part(ckpt_source, "stage1")
    cascade, slots = part.cascade, LoraSlots(str(lora_dir))
    unet, step = cascade.stage1.unet, cascade.stage1.step_fn
    weights = {n: p.data_ptr() for n, p in unet.named_parameters()}
    info = model_info(ckpt_source)
    text = load_part(ckpt_source, "text")
    jobs = _jobs(info, [("a red cat", 3)], last_stage=1)
    (carry,) = work.encode_batch(text.cascade, [work.start(j) for j in jobs], text.clip)

    def run(name):
        c = dataclasses.replace(carry, job=dataclasses.replace(carry.job, lora=name))
        (out,) = slots.per_adapter(cascade, [c], lambda b: work.stage_batch(cascade, 1, b))
        return out.image

    base = run(None)
    slots.load(cascade, "style-a")
    slots.load(cascade, "style-b")
    assert torch.equal(run(None), base)  # loading merges an adapter: a base request right after gets none
    a, b = run("style-a"), run("style-b")
    assert (a - base).abs().max() > 1e-3 and (b - a).abs().max() > 1e-3
    assert torch.equal(run(None), base) and torch.allclose(run("style-a"), a, atol=1e-6)
    # nothing was rebuilt: the same modules, the same step, the same weight storage (in-place merges)
    assert cascade.stage1.unet is unet and cascade.stage1.step_fn is step
    assert {n: p.data_ptr() for n, p in unet.named_parameters()} == weights
    held = _Held("style-b", slots)
    del held  # the multiplexer evicting style-b: it is dropped at the next swap, the others stay
    assert torch.allclose(run("style-a"), a, atol=1e-6)
    assert cascade.get_list_adapters() == {1: ["style-a"]}
    with pytest.raises(ValueError, match="no LoRA adapter 'nope'"):
        slots.load(cascade, "nope")


# -- a real Ray Serve -------------------------------------------------------------------------------------


def _stage(**kw) -> StageConfig:
    base = dict(max_batch_size=4, batch_wait_timeout_s=0.3, max_ongoing_requests=4, max_queued_requests=8)
    return StageConfig(**{**base, "torch_threads": 1, **kw})


def _config(source, **kw) -> ServeConfig:
    stage = _stage(batch_sizes=(4,))
    parts = dict(text=stage, stage1=stage, stage2=stage, stage3=stage)
    return ServeConfig(source=source, limits=Limits(request_timeout_s=TIMEOUT), **parts, **kw)


@pytest.fixture(scope="module")
def ray_serve():
    pytest.importorskip("ray")

    with local_serve(num_cpus=4) as url:
        yield url


def _deploy(config: ServeConfig, name: str, url: str) -> str:
    from ray import serve

    from ifengine.serve import app

    serve.run(app(config.to_dict()), name=name, route_prefix=f"/{name}")
    return f"{url}/{name}"


@pytest.fixture(scope="module")
def http():
    httpx = pytest.importorskip("httpx")
    with httpx.Client(timeout=TIMEOUT) as c:
        yield c


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=np.int16)


def test_split_server_on_graphs_gives_the_png_of_generate_artifacts(ray_serve, http, exports, tmp_path):
    from ifengine.cli import main

    artifacts = str(exports.get("fp32"))
    url = _deploy(_config(ModelSource(artifacts=artifacts, device="cpu")), "graphs", ray_serve)
    r = http.post(f"{url}/v1/images/generations", json={"prompt": "a red cat", "seed": 7, "steps": STEPS})
    assert r.status_code == 200, r.text
    item = r.json()["data"][0]
    assert item["nsfw"] is None  # exported graphs ship no safety checker
    assert item["settings"]["batched"]["stage1"] == 4  # padded up to the captured size
    out = tmp_path / "cat.png"
    argv = ["generate", "a red cat", "--artifacts", artifacts, "--seed", "7", "--steps", "4,2,2"]
    assert main([*argv, "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    expected = np.asarray(Image.open(out).convert("RGB"), dtype=np.int16)
    got = _pixels(item["b64_json"])
    assert got.shape == expected.shape and np.array_equal(got, expected)


@pytest.fixture(scope="module")
def lora_server(ray_serve, ckpt_source, lora_dir):
    return _deploy(_config(ckpt_source, lora_dir=str(lora_dir)), "loras", ray_serve)


def _generate(http, url, **body):
    return http.post(f"{url}/v1/images/generations", json={"prompt": "a red cat", "steps": STEPS, **body})


@pytest.mark.slow  # a second application on the module's Ray: about a minute on 2 cores
def test_lora_per_request_and_batched_equal_alone(http, lora_server, pipe, lora_dir):
    names = [m["id"] for m in http.get(f"{lora_server}/v1/models").json()["data"]]
    assert names == ["ifengine-demo", "style-a", "style-b"]
    r = _generate(http, lora_server, model="no-such-lora", seed=1)
    assert r.status_code == 404, r.text
    err = r.json()["error"]
    assert err["param"] == "model" and "style-a" in err["message"] and "style-b" in err["message"]

    bodies = [dict(seed=s, model=m) for s, m in ((11, "style-a"), (12, None), (13, None), (14, "style-a"))]
    bodies += [dict(seed=15, model="style-b"), dict(seed=16, model="ifengine-demo")]
    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda b: _generate(http, lora_server, **b), bodies))
    assert [r.status_code for r in responses] == [200] * len(bodies), [r.text for r in responses]
    for body, r in zip(bodies, responses, strict=True):
        item = r.json()["data"][0]
        lora = body["model"] if body["model"] not in (None, "ifengine-demo") else None
        assert item["settings"]["model"] == (lora or "ifengine-demo")
        if lora:
            pipe.load_lora_weights(lora_dir / f"{lora}.safetensors", stage=1, adapter_name=lora)
        try:
            alone = pipe("a red cat", seed=body["seed"], steps=STEPS, output_type="np", progress=False).images[0]
        finally:
            pipe.unload_lora_weights()
        # batched (and padded) rows equal the request alone up to float rounding (one uint8 level)
        assert np.abs(_pixels(item["b64_json"]) / 255.0 - alone).max() <= 1 / 255 + 1e-6, body


def test_the_single_layout_answers_checked_pngs_over_http(ray_serve, http, stage1_safety_dir, stage2_dir):
    """One replica runs the cascade and its safety checker: the response carries the checker's flags and
    the library's watermarked PNG, with one round trip from the ingress."""
    source = ModelSource(str(stage1_safety_dir), str(stage2_dir), device="cpu")
    limits = Limits(request_timeout_s=TIMEOUT)
    url = _deploy(ServeConfig(source=source, layout="single", single=_stage(), limits=limits), "single", ray_serve)
    body = {"prompt": "a red cat", "seed": 5, "steps": STEPS[:2], "n": 2}
    r = http.post(f"{url}/v1/images/generations", json=body)
    assert r.status_code == 200, r.text
    alone = open_cascade(source)("a red cat", seed=5, steps=STEPS[:2], num_images_per_prompt=2, progress=False)
    items = r.json()["data"]
    assert [i["nsfw"] for i in items] == list(alone.nsfw_detected)
    for item, want in zip(items, alone.images, strict=True):
        assert np.abs(_pixels(item["b64_json"]) - np.asarray(want.convert("RGB"), dtype=np.int16)).max() <= 1
