"""`ifengine generate`: demo cascade, real checkpoint folders, PNG metadata, bad input."""

import json

import pytest
from PIL import Image

from ifengine.cli import main


@pytest.fixture(autouse=True)
def demo_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("IFENGINE_CACHE", str(tmp_path_factory.getbasetemp() / "ifengine-cache"))


def test_help(capsys):
    with pytest.raises(SystemExit) as done:
        main(["generate", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "tiny demo cascade" in text and "--stage1" in text and "--seed" in text
    assert main([]) == 2


def test_demo_generation_writes_png_with_metadata(tmp_path, capsys, caplog):
    out = tmp_path / "cat.png"
    assert main(["generate", "a red cat", "--seed", "3", "--steps", "2", "--quiet", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert any("DEMO" in r.getMessage() and "noise" in r.getMessage() for r in caplog.records)
    img = Image.open(out)
    assert img.size == (256, 256)
    assert "prompt" not in img.text  # ComfyUI reads a "prompt" chunk as JSON: none is written
    assert img.text["parameters"].startswith("a red cat\nSteps: 2, ")
    settings = json.loads(img.text["ifengine"])
    assert settings["prompt"] == ["a red cat"] and settings["seed"] == 3
    assert settings["stages"][0]["steps"] == 2 and settings["last_stage"] == 3
    assert not list(tmp_path.glob(".*tmp"))


def test_checkpoint_folders_and_numbered_outputs(stage1_dir, tmp_path):
    args = [
        "generate",
        "a cat",
        "--stage1",
        str(stage1_dir),
        "--num-images",
        "2",
        "--steps",
        "2",
        "--seed",
        "5",
        "--quiet",
        "--out",
        str(tmp_path / "imgs"),
    ]
    assert main(args) == 0
    files = sorted((tmp_path / "imgs").glob("*.png"))
    assert [f.name for f in files] == ["if-5-00.png", "if-5-01.png"]
    assert Image.open(files[0]).size == (16, 16)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--height", "18"], "Nearest valid heights"),
        (["--num-images", "2"], "names one PNG file but the run makes 2 images"),
        (["--steps", "0"], "steps must be a whole number >= 1"),
        (["--timesteps", "fast99"], "timesteps"),
        (["--stage1", "/no/such/folder"], "neither a checkpoint folder nor a Hub id"),
    ],
)
def test_bad_input_is_one_clear_line_and_no_file(tmp_path, capsys, extra, message):
    out = tmp_path / "keep.png"
    out.write_bytes(b"previous result")
    assert main(["generate", "a cat", "--quiet", "--out", str(out)] + extra) == 2
    err = capsys.readouterr().err
    assert "ifengine: error:" in err and message in err and "Traceback" not in err
    assert out.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]


def test_wrong_stage_checkpoint(stage2_dir, tmp_path, capsys):
    assert main(["generate", "a cat", "--stage1", str(stage2_dir), "--out", str(tmp_path / "x.png")]) == 2
    assert "holds stage II" in capsys.readouterr().err


def test_every_editing_mode_runs_on_the_demo_cascade(tmp_path):
    src, mask = tmp_path / "src.png", tmp_path / "mask.png"
    Image.new("RGB", (48, 32), (200, 30, 30)).save(src)
    m = Image.new("L", (48, 32), 0)
    m.paste(255, (0, 0, 24, 16))
    m.save(mask)
    base = ["generate", "--steps", "2", "--quiet", "--seed", "0", "--image", str(src)]
    runs = {
        "img2img": ["a boat"],
        "inpaint": ["a door", "--mask", str(mask)],
        "style": ["in style lego", "--style", "--positive", "a boat"],
    }
    for mode, extra in runs.items():
        out = tmp_path / f"{mode}.png"
        assert main(base + extra + ["--out", str(out)]) == 0
        img = Image.open(out)
        assert json.loads(img.text["ifengine"])["mode"] == mode
        assert img.size == (384, 256)  # 24x16 -> 96x64 -> x4 upscaler 384x256
