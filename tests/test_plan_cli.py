"""`ifengine plan`: the plan table for presets and checkpoint folders, and clear errors."""

import pytest

from ifengine.cli import main


def run(capsys, *argv):
    code = main(["plan", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_8_gib_plan_prints_placements_and_peaks_per_stage(capsys):
    code, out, _ = run(
        capsys,
        "--vram",
        "8GiB",
        "--preset",
        "IF-I-XL,IF-II-L,x4",
        "--height",
        "64",
        "--width",
        "64",
        "--batch",
        "1",
        "--dtype",
        "float16",
    )
    assert code == 0
    assert "budget 8.00 GiB" in out and "64x64 -> 256x256 -> 1024x1024" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.split()}
    assert "stream" in lines["t5"] and "released after encoding (before stage I)" in lines["t5"]
    # native fp16 would stream ~2 GiB of stage I weights every step; "auto" makes stage I int8 instead
    assert "int8" in lines["unet1"] and "offload" in lines["unet1"] and "float16" in lines["unet2"]
    assert "int8 weights (weight-only, per output channel; compute stays float16): unet1" in out
    for phase in ("T5 encode", "stage I ", "stage II ", "stage III", "VAE decode"):
        assert any(line.startswith(phase) and "GiB" in line for line in out.splitlines()), phase
    assert "VAE decode: tiled" in out and "predicted peak" in out


def test_native_weights_stream_stage_one_under_8_gib(capsys):
    code, out, _ = run(capsys, "--vram", "8GiB", "--weights", "native")
    lines = {line.split()[0]: line for line in out.splitlines() if line.split()}
    assert code == 0 and "float16" in lines["unet1"] and "stream" in lines["unet1"]
    assert "U-Net weights streamed per call" in out and "int8" not in out


def test_a_roomy_budget_keeps_the_unets_resident(capsys):
    code, out, _ = run(capsys, "--vram", "24GiB")
    assert code == 0 and "VAE decode: whole image" in out
    assert all("resident" in line for line in out.splitlines() if line.startswith(("unet1", "unet2", "x4_unet")))


def test_a_bad_size_is_refused_with_examples(capsys):
    with pytest.raises(SystemExit) as done:
        main(["plan", "--vram", "8 gigs"])
    assert done.value.code == 2
    assert "e.g. 8GiB" in capsys.readouterr().err


def test_a_too_small_budget_says_what_is_needed(capsys):
    code, _, err = run(capsys, "--vram", "1GiB")
    assert code == 2 and "needs at least" in err and "GiB" in err


def test_checkpoint_folders_are_planned_from_their_configs(capsys, stage1_dir, stage2_dir, stage3_dir):
    code, out, _ = run(
        capsys,
        "--vram",
        "2GiB",  # 1 GiB less the CUDA context reserve (768 MiB) no longer holds even the tiny cascade
        "--stage1",
        str(stage1_dir),
        "--stage2",
        str(stage2_dir),
        "--stage3",
        str(stage3_dir),
        "--height",
        "16",
        "--width",
        "16",
        "--dtype",
        "float32",
    )
    assert code == 0 and "16x16 -> 64x64 -> 256x256" in out
    assert all("resident" in line for line in out.splitlines() if line.startswith(("t5", "unet1", "vae_decoder")))


def test_preset_and_checkpoints_are_exclusive(capsys, stage1_dir):
    code, _, err = run(capsys, "--vram", "8GiB", "--preset", "IF-I-M", "--stage1", str(stage1_dir))
    assert code == 2 and "either --preset or --stage1" in err


def test_more_step_values_than_stages_are_refused(capsys):
    code, _, err = run(capsys, "--vram", "8GiB", "--steps", "10,10,10,10")
    assert code == 2 and "--steps takes at most 3 values" in err
