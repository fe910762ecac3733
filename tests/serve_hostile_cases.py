"""Hostile requests for a local demo server, shared by tests/test_serve_hostile.py and
benchmarks/serve_hostile.py: each is (name, function of an httpx client -> response, statuses allowed)."""

import io
import json

from PIL import Image

KEY = "test-key"
NORMAL = {"prompt": "a red cat", "steps": [4, 2, 2], "seed": 1}


def png(size, mode="RGB", color=128) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def gen(**body):
    return lambda c: c.post("/v1/images/generations", json={"prompt": "a", **body})


def raw(content: bytes, content_type: str):
    return lambda c: c.post("/v1/images/generations", content=content, headers={"Content-Type": content_type})


def edit(image: bytes, **fields):
    data = {"prompt": "a watercolour", "steps": "2", **fields}
    return lambda c: c.post("/v1/images/edits", files={"image": ("in.png", image, "image/png")}, data=data)


def keyed(key):
    headers = {"Authorization": f"Bearer {key}" if key else ""}
    return lambda c: c.post("/v1/images/generations", json=NORMAL, headers=headers)


CASES = [
    ("1 MB negative_prompt", gen(negative_prompt="a." * 500_000), {400}),
    ("1 MB prompt", gen(prompt="a." * 500_000), {400}),
    ("size 16384x16384, n=4, steps=200", gen(size="16384x16384", n=4, steps=200), {400}),
    ("n=10 at 16384x16384", gen(size="16384x16384", n=10), {400}),
    ("edit of a 4000x16 source", edit(png((4000, 16))), {400}),
    ("edit size='abc'", edit(png((32, 32)), size="abc"), {400}),
    ("edit with an unknown field", edit(png((32, 32)), colour="red"), {400}),
    ("lone surrogate in the prompt", raw(b'{"prompt": "a \\ud800 cat"}', "application/json"), {400}),
    ("missing prompt", lambda c: c.post("/v1/images/generations", json={"n": 1}), {400}),
    ("n=0", gen(n=0), {400}),
    ("n=1000000", gen(n=1_000_000), {400}),
    ("size 'big'", gen(size="big"), {400}),
    ("size '0x0'", gen(size="0x0"), {400}),
    ("size '-256x256'", gen(size="-256x256"), {400}),
    ("size '256x256x256'", gen(size="256x256x256"), {400}),
    ("wrong content type", raw(json.dumps(NORMAL).encode(), "text/plain"), {400}),
    ("form body on the JSON route", raw(b"prompt=a", "application/x-www-form-urlencoded"), {400}),
    ("bad base64 as the edit image", lambda c: c.post("/v1/images/edits", data={"prompt": "a", "image": "!!x"}), {400}),
    ("not an image", edit(b"GIF89a but not really"), {400}),
    ("wrong key", keyed("wrong"), {401}),
    ("no key", keyed(None), {401}),
    ("unknown model id", lambda c: c.get("/v1/models/dall-e-9"), {404}),
]
