"""A real local Ray Serve (no mocks) serving the demo cascade over HTTP on 127.0.0.1.

Ray starts once for the module (2 logical CPUs, no dashboard, a small object store) and is always shut
down. Every HTTP call has a timeout. Order matters only at the end: the full-queue and killed-replica
checks run last.
"""

import base64
import io
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from serve_support import local_serve

pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

KEY = "test-key"
STEPS = [4, 2, 2]
TIMEOUT = 60.0


def _config():
    from ifengine.serve import Limits, ServeConfig, StageConfig

    # wait long enough that concurrent requests meet in one batch; queues small enough to overflow
    # one torch thread per replica, as the in-process references below run (float sums depend on threads)
    stage = StageConfig(
        max_batch_size=4, batch_wait_timeout_s=0.3, max_ongoing_requests=4, max_queued_requests=6, torch_threads=1
    )
    return ServeConfig(
        text=stage,
        stage1=stage,
        stage2=stage,
        stage3=stage,
        limits=Limits(max_body_bytes=256 * 1024, max_image_pixels=512 * 512, request_timeout_s=60.0),
        api_key=KEY,
    )


@pytest.fixture(scope="module")
def server():
    with local_serve(_config().to_dict()) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server, timeout=TIMEOUT, headers={"Authorization": f"Bearer {KEY}"}) as c:
        yield c


@pytest.fixture(scope="module")
def demo():
    from ifengine.pipeline.cascade import open_cascade

    return open_cascade(device="cpu")


def generate(client, **body):
    return client.post("/v1/images/generations", json={"prompt": "a red cat", "steps": STEPS, **body})


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=np.int16)


def test_same_seed_same_png_as_ifengine_generate(client, tmp_path, one_thread):
    from ifengine.cli import main

    r = generate(client, seed=7)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"created", "data"} and len(body["data"]) == 1
    item = body["data"][0]
    assert item["seed"] == 7 and item["settings"]["stages"][0]["steps"] == 4
    out = tmp_path / "cat.png"
    argv = ["generate", "a red cat", "--seed", "7", "--steps", "4,2,2", "--device", "cpu", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    expected = np.asarray(Image.open(out).convert("RGB"), dtype=np.int16)
    got = pixels(item["b64_json"])
    assert got.shape == expected.shape == (256, 256, 3)
    assert np.array_equal(got, expected)


def test_concurrent_requests_batch_and_each_matches_its_seed(client, demo, one_thread):
    seeds = list(range(100, 108))
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda s: generate(client, seed=s, prompt=f"prompt {s % 3}"), seeds))
    assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses if r.status_code != 200]
    batched = [r.json()["data"][0]["settings"]["batched"] for r in responses]
    assert max(b[stage] for b in batched for stage in b) > 1, batched
    stats = client.get("/v1/stats").json()["batch_sizes"]
    assert any(int(size) > 1 for sizes in stats.values() for size in sizes), stats
    for seed, r in zip(seeds, responses, strict=True):
        alone = demo(f"prompt {seed % 3}", seed=seed, steps=STEPS, output_type="np", progress=False).images[0]
        got = pixels(r.json()["data"][0]["b64_json"]) / 255.0
        # batched rows run in one U-Net call: equal to the single call up to float rounding (one uint8 level)
        assert np.abs(got - alone).max() <= 1 / 255 + 1e-6


def test_models_health_and_docs(client, server):
    assert httpx.get(f"{server}/health", timeout=TIMEOUT).json()["status"] == "ok"  # /health needs no key
    assert client.get("/v1/models").json()["data"][0]["stages"] == [1, 2, 3]
    schema = client.get("/openapi.json").json()
    assert "GenerationRequest" in schema["components"]["schemas"]
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": "Basic dGVzdC1rZXk="}],
)
@pytest.mark.parametrize("path", ["/v1/models", "/docs", "/v1/images/generations"])
def test_api_key_is_required_everywhere_but_health(server, headers, path):
    with httpx.Client(base_url=server, timeout=TIMEOUT, headers=headers) as c:
        r = c.post(path, json={"prompt": "a"}) if "images" in path else c.get(path)
    assert r.status_code == 401
    assert r.json()["error"]["param"] == "authorization" and r.headers["www-authenticate"] == "Bearer"


BAD_GENERATIONS = [
    ({"prompt": "a", "size": "big"}, "size"),
    ({"prompt": "a", "size": "250x256"}, "size"),  # not 4**2 times a stage I size
    ({"prompt": "a", "size": "264x256"}, "size"),  # stage I 66 px: the U-Nets need multiples of 8
    ({"prompt": "a", "size": "65536x65536"}, "size"),
    ({"prompt": "a", "n": 50}, "n"),
    ({"prompt": "a", "n": 0}, "n"),
    ({"prompt": "a", "response_format": "url"}, "response_format"),
    ({"prompt": "a", "colour": "red"}, "colour"),  # an unknown field
    ({"prompt": "a", "quality": "ultra"}, "quality"),  # not one of OpenAI's values
    ({"prompt": "a", "steps": -1}, "steps"),
    ({"prompt": "a", "steps": 5000}, "steps"),
    ({"prompt": "a", "steps": "many"}, "steps"),
    ({"prompt": "a", "guidance": [1, 2, 3, 4]}, "guidance"),
    ({"prompt": "a", "noise_level": 5000}, "noise_level"),
    ({"prompt": "a", "seed": -3}, "seed"),
    ({"prompt": "a", "last_stage": 7}, "last_stage"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": 12}, "prompt"),
    ({}, "prompt"),
]


@pytest.mark.parametrize(("body", "param"), BAD_GENERATIONS)
def test_bad_generation_requests_get_a_4xx_naming_the_field(client, body, param):
    r = client.post("/v1/images/generations", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.text


def test_bad_json_and_oversized_bodies(client):
    r = client.post("/v1/images/generations", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "body"
    r = client.post("/v1/images/generations", json={"prompt": "a" * 300_000})
    assert r.status_code == 413 and r.json()["error"]["param"] == "body"
    r = client.post("/v1/images/generations", json=["a list"])
    assert r.status_code == 400


def _png(size, mode="RGB", color=128) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def edit(client, files, **fields):
    data = {"prompt": "a watercolour", "steps": "4", "seed": "1", **fields}
    return client.post("/v1/images/edits", files=files, data=data)


def test_edit_img2img_and_inpaint(client):
    r = edit(client, {"image": ("in.png", _png((32, 24)), "image/png")}, mode="img2img", strength="0.5")
    assert r.status_code == 200, r.text
    img = pixels(r.json()["data"][0]["b64_json"])
    assert img.shape[2] == 3 and img.shape[0] < img.shape[1]  # keeps the landscape source's layout
    files = {"image": ("in.png", _png((32, 32)), "image/png"), "mask": ("m.png", _png((32, 32), "L", 255), "image/png")}
    r = edit(client, files, mode="inpaint")
    assert r.status_code == 200, r.text


def _noise_png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_concurrent_edits_batch_per_stage_and_each_matches_the_library(client, demo, one_thread):
    """Edits travel the stage deployments as generations do: concurrent ones meet in one stage call, and
    each equals ``Cascade.img2img`` alone with its seed (up to one uint8 level of float rounding)."""
    seeds = [21, 22, 23, 24]

    def send(seed):
        files = {"image": ("in.png", _noise_png(seed), "image/png")}
        return edit(client, files, mode="img2img", strength="0.5", seed=str(seed), prompt=f"edit {seed % 2}")

    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(send, seeds))
    assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses if r.status_code != 200]
    settings = [r.json()["data"][0]["settings"] for r in responses]
    assert max(s["batched"]["stage1"] for s in settings) > 1, settings
    assert {s["mode"] for s in settings} == {"img2img"} and settings[0]["strength"] == [0.5, 0.8]
    for seed, r in zip(seeds, responses, strict=True):
        source = Image.open(io.BytesIO(_noise_png(seed))).convert("RGB")
        prompt = f"edit {seed % 2}"
        alone = demo.img2img(source, prompt, strength=0.5, seed=seed, steps=4, output_type="np", progress=False)
        got = pixels(r.json()["data"][0]["b64_json"]) / 255.0
        assert got.shape == alone.images[0].shape
        assert np.abs(got - alone.images[0]).max() <= 1 / 255 + 1e-6


def _bomb() -> bytes:
    """A PNG of a few kilobytes that decodes to 64 megapixels."""
    return _png((8000, 8000), "1", 0)


@pytest.mark.parametrize(
    ("files", "fields", "status", "param"),
    [
        ({"image": ("x.png", b"not an image at all", "image/png")}, {}, 400, "image"),
        ({"image": ("x.png", b"", "image/png")}, {}, 400, "image"),
        ({"image": ("x.png", _bomb(), "image/png")}, {}, 413, "image"),
        ({"image": ("x.png", _png((16, 16)), "image/png")}, {"mode": "sketch"}, 400, "mode"),
        ({"image": ("x.png", _png((16, 16)), "image/png")}, {"mode": "inpaint"}, 400, "mask"),
        ({"image": ("x.png", _png((16, 16)), "image/png")}, {"strength": "0.001"}, 400, "strength"),
        ({"image": ("x.png", _png((16, 16)), "image/png")}, {"n": "99"}, 400, "n"),
        ({}, {}, 400, "image"),
    ],
)
def test_bad_edit_requests_get_a_4xx_naming_the_field(client, files, fields, status, param):
    r = edit(client, files, **fields)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param, r.text


def test_a_full_queue_answers_503_with_retry_after(client):
    with ThreadPoolExecutor(40) as pool:
        responses = list(pool.map(lambda s: generate(client, seed=s), range(40)))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503}, [r.text for r in responses if r.status_code not in (200, 503)]
    busy = [r for r in responses if r.status_code == 503]
    assert busy, "40 requests at once should overflow queues of 4 running + 6 waiting per stage"
    assert all(int(r.headers["retry-after"]) >= 1 and r.json()["error"]["type"] == "server_busy" for r in busy)
    assert codes.count(200) >= 10


def _replica_actor(deployment: str):
    """(name, handle) of the deployment's one replica actor, as Ray Serve names them."""
    import ray

    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["name"].startswith("SERVE_REPLICA::") and f"#{deployment}#" in entry["name"]:
            return entry["name"], ray.get_actor(entry["name"], namespace=entry["namespace"])
    raise AssertionError(f"no replica actor of {deployment}")


def test_a_killed_stage_replica_is_restarted_and_requests_recover(client):
    import ray

    killed, actor = _replica_actor("stage1")
    with ThreadPoolExecutor(3) as pool:
        # 200 stage I steps take seconds even on a fast machine: the kill lands while they run
        slow = [pool.submit(generate, client, seed=s, steps=[200, 2, 2]) for s in range(3)]
        time.sleep(2.0)
        ray.kill(actor, no_restart=True)
        not_ready = _first_not_ready(client, seconds=30)
        codes = [f.result(timeout=TIMEOUT).status_code for f in slow]
    assert set(codes) <= {200, 503} and 503 in codes, codes  # none hangs, none is a 500
    # readiness follows the dead stage: a JSON 503 naming it, with Retry-After, until it is back
    assert not_ready is not None, "/ready stayed 200 while stage1 was dead"
    assert "stage1" in not_ready.json()["error"]["message"] and not_ready.headers.get("Retry-After")
    deadline = time.monotonic() + 90
    while True:
        r = generate(client, seed=1)
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        assert r.status_code == 503, r.text
        time.sleep(2)
    assert r.status_code == 200, r.text
    assert _replica_actor("stage1")[0] != killed  # Ray's controller started a new replica
    deadline = time.monotonic() + 30
    while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert client.get("/ready").status_code == 200


def _first_not_ready(client, seconds: float):
    """The first non-200 answer of /ready within ``seconds`` (polled 4 times a second), else None."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        r = client.get("/ready")
        if r.status_code != 200:
            assert r.status_code == 503, r.text
            return r
        time.sleep(0.25)
    return None
