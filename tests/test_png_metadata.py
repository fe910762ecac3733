"""PNG metadata read back the way other tools read it: Pillow for the chunks, an A1111-rule parser for the
``parameters`` text; `ifengine info` and `generate --from` on the files the CLI writes."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import ifengine
from ifengine.cli import main
from ifengine.commands.rerun import lora_flag
from ifengine.pipeline.save import save_images

pytestmark = pytest.mark.usefixtures("one_thread")

# A1111's documented infotext rules (modules/infotext_utils.py, parse_generation_parameters): the last line
# holds "key: value" pairs (values with , : or newline JSON-quoted) when it has at least 3 of them; lines
# before it are the prompt, up to a line starting "Negative prompt:", which starts the negative prompt.
RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_infotext(text: str) -> dict:
    *lines, last = text.strip().split("\n")
    if len(RE_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    out = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in RE_PARAM.findall(last):
        value = value.strip()
        out[key] = json.loads(value) if value[:1] == '"' == value[-1:] else value
    return out


def lora_file(path, unet, seed=0):
    """A small LoRA in the peft key style for two projections of the tiny stage I U-Net."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for module in ("down_blocks.1.attentions.0.to_q", "mid_block.attentions.0.to_v"):
        lin = unet.get_submodule(module)
        state[f"unet.{module}.lora_A.weight"] = 0.1 * torch.randn(2, lin.in_features, generator=g)
        state[f"unet.{module}.lora_B.weight"] = 0.1 * torch.randn(lin.out_features, 2, generator=g)
    save_file(state, str(path))
    return path


def unet_hash(checkpoint):
    """A1111's Model hash (AutoV2): sha256 of the weights file, first 10 hex digits."""
    import hashlib

    (weights,) = (checkpoint / "unet").glob("*.safetensors")
    return hashlib.sha256(weights.read_bytes()).hexdigest()[:10]


def test_parameters_text_reads_back_as_a1111_does(pipe, stage1_dir, stage2_dir, tmp_path):
    prompt = "a cat, sitting: on a mat"
    out = pipe(prompt, negative_prompt="blurry, dark", steps=(3, 2), guidance=(5.0, 2.0), seed=7,
               timesteps=(None, "smart27"), num_images_per_prompt=2, last_stage=2, progress=False)  # fmt: skip
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    save_images(out.images, paths, out.settings)
    img = Image.open(paths[1])
    assert set(img.text) == {"parameters", "ifengine"}  # no plain-text "prompt" chunk
    info = parse_infotext(img.text["parameters"])
    assert info["Prompt"] == prompt and info["Negative prompt"] == "blurry, dark"
    assert info["Steps"] == "3" and info["Scheduler"] == "DDPM" and info["CFG scale"] == "5.0"
    assert "Sampler" not in info  # none of A1111's samplers is IF's DDPM: a reader would misread one
    assert info["Model hash"] == unet_hash(stage1_dir) and info["Stage II model hash"] == unet_hash(stage2_dir)
    assert info["Seed"] == "7" and info["Size"] == "64x64" and info["Model"] == stage1_dir.name
    assert info["Stage II steps"] == "2" and info["Stage II cfg scale"] == "2.0"
    assert info["Stage II noise level"] == "250" and info["Stage II timesteps"] == "smart27"
    assert info["Stage II model"] == stage2_dir.name and info["Version"].startswith("ifengine ")
    settings = json.loads(img.text["ifengine"])
    assert settings["prompt"] == [prompt] and settings["seed"] == 7 and settings["image_index"] == 1
    assert settings["models"] == [str(stage1_dir.resolve()), str(stage2_dir.resolve())]


def test_lora_is_recorded(pipe1, tmp_path):
    pipe = pipe1
    path = lora_file(tmp_path / "style.safetensors", pipe.stage1.unet)
    pipe.load_lora_weights(path, stage=1, adapter_name="style", scale=0.5)
    out = pipe("a cat", steps=2, seed=1, progress=False)
    save_images(out.images, [tmp_path / "x.png"], out.settings)
    img = Image.open(tmp_path / "x.png")
    assert parse_infotext(img.text["parameters"])["LoRA"] == "1:style.safetensors:0.5"  # the file's name
    assert json.loads(img.text["ifengine"])["lora"] == [
        {"stage": 1, "name": "style", "weight": 0.5, "source": str(path), "file": "style.safetensors"}
    ]
    out = pipe("a cat", steps=2, seed=1, progress=False, cross_attention_kwargs={"scale": 0.5})
    assert out.settings["lora"][0]["weight"] == 0.25  # the weight the call applied


@pytest.mark.parametrize(
    "text, parsed",
    [
        ("a.safetensors", (1, "a.safetensors", 1.0)),
        ("a.safetensors:0.8", (1, "a.safetensors", 0.8)),
        ("2:user/if-lora:0.5", (2, "user/if-lora", 0.5)),
        ("3:dir/x.safetensors", (3, "dir/x.safetensors", 1.0)),
        ("1:c:/odd:name.safetensors", (1, "c:/odd:name.safetensors", 1.0)),
    ],
)
def test_lora_flag_syntax(text, parsed):
    assert lora_flag(text) == parsed


def test_info_and_rerun_from_png(tmp_path, capsys, stage1_dir, monkeypatch):
    monkeypatch.setenv("IFENGINE_CACHE", str(tmp_path / "cache"))
    first = tmp_path / "first.png"
    lora = lora_file(tmp_path / "l.safetensors", ifengine.Cascade.from_pretrained(stage1_dir, safety=False).stage1.unet)
    argv = ["generate", "a red cat", "--stage1", str(stage1_dir), "--steps", "3", "--seed", "3",
            "--torch-dtype", "float32", "--lora", f"1:{lora}:0.7", "--no-safety", "--quiet"]  # fmt: skip
    assert main([*argv, "--out", str(first)]) == 0
    capsys.readouterr()
    assert main(["info", str(first)]) == 0
    printed = capsys.readouterr().out
    assert "parameters:\na red cat\nSteps: 3, Scheduler: DDPM, CFG scale" in printed and '"seed": 3' in printed
    again, other = tmp_path / "again.png", tmp_path / "other.png"
    assert main(["generate", "--from", str(first), "--no-safety", "--quiet", "--out", str(again)]) == 0
    pixels = lambda p: np.asarray(Image.open(p))  # noqa: E731
    assert np.array_equal(pixels(first), pixels(again))  # same settings, LoRA included: same image
    assert main(["generate", "--from", str(first), "--seed", "4", "--no-safety", "--quiet", "--out", str(other)]) == 0
    assert json.loads(Image.open(other).text["ifengine"])["seed"] == 4
    assert not np.array_equal(pixels(first), pixels(other))
    plain = tmp_path / "plain.png"
    Image.new("RGB", (4, 4)).save(plain)
    assert main(["info", str(plain)]) == 2
    assert "no generation settings" in capsys.readouterr().err


def test_from_keeps_an_explicit_num_images_and_refuses_one_png_for_a_run_of_many(
    tmp_path, capsys, stage1_dir, monkeypatch
):
    import ifengine.pipeline.cascade as cascade

    monkeypatch.setenv("IFENGINE_CACHE", str(tmp_path / "cache"))
    argv = ["--stage1", str(stage1_dir), "--steps", "2", "--seed", "3", "--no-safety", "--quiet"]
    assert main(["generate", "a red cat", *argv, "--num-images", "2", "--out", str(tmp_path / "run")]) == 0
    first = sorted((tmp_path / "run").glob("*.png"))[0]
    capsys.readouterr()
    one = tmp_path / "one.png"
    assert (
        main(["generate", "--from", str(first), "--num-images", "1", "--no-safety", "--quiet", "--out", str(one)]) == 0
    )
    assert json.loads(Image.open(one).text["ifengine"])["num_images_per_prompt"] == 1  # --num-images 1 kept

    def no_loading(*args, **kwargs):
        raise AssertionError("weights were loaded before the --out check")

    monkeypatch.setattr(cascade, "open_cascade", no_loading)
    assert main(["generate", "--from", str(first), "--no-safety", "--quiet", "--out", str(tmp_path / "x.png")]) == 2
    message = capsys.readouterr().err
    assert "names one PNG file but the run makes 2 images" in message and "one image of a run of 2" in message
    assert not (tmp_path / "x.png").exists()


def test_model_hash_of_hub_cache_blobs_and_of_shards(tmp_path, stage1_dir):
    """The Hub cache links each file to a blob named by its sha256: that name is the hash, unread; a
    sharded U-Net hashes its shards' sha256s joined; no weights, no hash."""
    import hashlib

    from ifengine.pipeline.metadata import model_hash

    digest = hashlib.sha256(b"weights").hexdigest()
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / digest).write_bytes(b"not the bytes of that digest")  # proves it is not read
    (tmp_path / "snap" / "unet").mkdir(parents=True)
    (tmp_path / "snap" / "unet" / "diffusion_pytorch_model.safetensors").symlink_to(tmp_path / "blobs" / digest)
    assert model_hash(str(tmp_path / "snap")) == digest[:10]
    shards = tmp_path / "sharded" / "unet"
    shards.mkdir(parents=True)
    for i, data in enumerate((b"one", b"two"), start=1):
        (shards / f"diffusion_pytorch_model-0000{i}-of-00002.safetensors").write_bytes(data)
    joined = "".join(hashlib.sha256(d).hexdigest() for d in (b"one", b"two"))
    assert model_hash(str(tmp_path / "sharded")) == hashlib.sha256(joined.encode()).hexdigest()[:10]
    assert model_hash(str(tmp_path)) is None and model_hash(None) is None
    assert model_hash(str(stage1_dir)) == unet_hash(stage1_dir)
