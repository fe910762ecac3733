"""The official ``openai`` client, unchanged, against a local demo server (127.0.0.1, Ray shut down after)."""

import base64
import io

import pytest
from PIL import Image
from serve_support import local_serve

pytest.importorskip("ray.serve")
openai = pytest.importorskip("openai")

KEY = "test-key"


@pytest.fixture(scope="module")
def server():

    from ifengine.serve import Limits, ServeConfig, StageConfig

    stage = StageConfig(max_batch_size=2, batch_wait_timeout_s=0.05, torch_threads=1)
    config = ServeConfig(text=stage, stage1=stage, stage2=stage, stage3=stage, limits=Limits(), api_key=KEY)
    with local_serve(config.to_dict()) as url:
        yield f"{url}/v1"


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server, api_key=KEY, max_retries=0, timeout=120)


def _image(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def _png(size, mode="RGB", color=128) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_images_generate(client):
    out = client.images.generate(prompt="a red cat", n=2, size="256x256", response_format="b64_json")
    assert len(out.data) == 2 and out.created > 0
    assert all(_image(d.b64_json).size == (256, 256) for d in out.data)


def test_images_edit_with_image_and_mask(client):
    mask = Image.new("RGBA", (32, 32), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (8, 8, 24, 24))  # transparent square: the part to edit
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    out = client.images.edit(
        image=("in.png", _png((32, 32)), "image/png"),
        mask=("mask.png", buf.getvalue(), "image/png"),
        prompt="a watercolour",
        n=1,
        size="auto",
        response_format="b64_json",
    )
    assert len(out.data) == 1 and out.data[0].b64_json
    assert _image(out.data[0].b64_json).size == (256, 256)


def test_models_list_and_retrieve(client):
    (model,) = client.models.list().data
    assert model.object == "model" and model.created > 0
    assert client.models.retrieve(model.id).id == model.id
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("dall-e-9")
    assert err.value.body["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        (dict(prompt="a", n=0), "n"),
        (dict(prompt="a", n=11), "n"),
        (dict(prompt="a", size="big"), "size"),
        (dict(prompt="a", response_format="url"), "response_format"),
        (dict(prompt="a" * 5000), "prompt"),
        (dict(prompt="a", quality="ultra"), "quality"),
    ],
)
def test_bad_requests_are_openai_shaped_400s(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(**kwargs)
    body = err.value.body
    assert body["param"] == param and body["type"] == "invalid_request_error"
    assert body["code"] is None or isinstance(body["code"], str)


def test_a_wrong_key_is_an_authentication_error(server):
    bad = openai.OpenAI(base_url=server, api_key="wrong", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.models.list()
    assert err.value.status_code == 401 and err.value.body["code"] == "invalid_api_key"
