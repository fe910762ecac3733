"""Many prompts in one call (throughput mode): the Python API, the CLI's --prompts-file, and its errors."""

import pytest
import torch
from PIL import Image

import ifengine
from ifengine.cli import main
from ifengine.stage.options import RequestError

PROMPTS = ["a red cat", "a blue dog", "a green frog"]
KW = dict(steps=(2, 2, 2), height=8, width=8)


def _expected(cascade, prompts, seed):
    return cascade(prompts, seed=seed, output_type="pt", progress=False, **KW).stages[-1]


@pytest.mark.parametrize("throughput", [False, True])
def test_batches_equal_plain_calls_seeded_seed_plus_k(pipe, stage1_dir, stage2_dir, stage3_dir, throughput):
    """A self-comparison on purpose: batched throughput runs must equal plain calls (checked against
    diffusers in test_cascade.py) seeded seed + batch index, bit for bit."""
    cascade = (
        pipe
        if not throughput
        else ifengine.Cascade.from_pretrained(stage1_dir, stage2_dir, stage3_dir, safety=False, throughput=True)
    )
    assert (cascade.runtime is not None) == throughput
    out = cascade.generate_many(PROMPTS, batch_size=2, seed=11, output_type="pt", **KW)
    assert out.prompts == PROMPTS and out.seeds == [11, 11, 12] and out.images_per_second > 0
    got = torch.stack(list(out.images))
    want = torch.cat([_expected(pipe, PROMPTS[:2], 11), _expected(pipe, PROMPTS[2:], 12)])
    assert torch.equal(got, (want / 2 + 0.5).clamp(0, 1))


def test_embeddings_instead_of_prompts_give_the_images_of_the_text(pipe):
    """generate_many(prompt_embeds=encode_prompt(...)): the same images as from the prompts' text, batch k
    seeded seed + k, with the prompts recorded; tensors alone (a T5-only pair) stop at stage II."""
    embeds = pipe.encode_prompt(PROMPTS)
    from_text = pipe.generate_many(PROMPTS, batch_size=2, seed=5, output_type="pt", **KW)
    out = pipe.generate_many(prompt_embeds=embeds, batch_size=2, seed=5, output_type="pt", **KW)
    assert out.prompts == PROMPTS and out.seeds == [5, 5, 6]
    assert torch.equal(torch.stack(list(out.images)), torch.stack(list(from_text.images)))
    pe, ne = embeds
    two = pipe.generate_many(
        prompt_embeds=pe.clone(), negative_prompt_embeds=ne.clone(), seed=5, output_type="pt", last_stage=2, **KW
    )
    want = pipe(PROMPTS[:1], seed=5, output_type="pt", progress=False, last_stage=2, **KW).stages[-1]
    assert len(two.images) == 3 and torch.equal(two.images[0], (want[0] / 2 + 0.5).clamp(0, 1))
    with pytest.raises(RequestError, match="not both"):
        pipe.generate_many(PROMPTS, prompt_embeds=embeds)


def test_bad_many_requests_are_refused(pipe):
    with pytest.raises(RequestError, match="batch_size"):
        pipe.generate_many(PROMPTS, batch_size=0)
    with pytest.raises(RequestError, match="prompts must be"):
        pipe.generate_many([])


@pytest.fixture(autouse=True)
def demo_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("IFENGINE_CACHE", str(tmp_path_factory.getbasetemp() / "ifengine-cache"))


def test_prompts_file_writes_one_png_per_prompt(tmp_path, capsys):
    listing = tmp_path / "prompts.txt"
    listing.write_text("a red cat\n# a comment\n\n  a blue dog  \n")
    out = tmp_path / "imgs"
    assert (
        main(
            [
                "generate",
                "--prompts-file",
                str(listing),
                "--out",
                str(out),
                "--batch-size",
                "2",
                "--seed",
                "4",
                "--steps",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    paths = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["if-4-0000.png", "if-4-0001.png"]
    assert [Image.open(p).text["parameters"].split("\n")[0] for p in paths] == ["a red cat", "a blue dog"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["a cat", "--prompts-file", "{list}"], "not both"),
        (["--prompts-file", "{list}", "--num-images", "2"], "one text-to-image picture per prompt"),
        (["--prompts-file", "{list}", "--out", "{tmp}/one.png"], "give a folder"),
        (["--prompts-file", "{tmp}/missing.txt"], "cannot read --prompts-file"),
        (["--prompts-file", "{empty}"], "has no prompts"),
        (["--prompts-file", "{list}", "--batch-size", "0"], "--batch-size must be a whole number >= 1"),
        (["a cat", "--throughput"], "go with --prompts-file"),
        (["a cat", "--vram", "8 gigs"], "e.g. 8GiB"),
        ([], "give a prompt"),
    ],
)
def test_bad_prompt_flags_are_one_clear_line(tmp_path, capsys, argv, message):
    (tmp_path / "list.txt").write_text("a cat\n")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    names = dict(list=tmp_path / "list.txt", empty=tmp_path / "empty.txt", tmp=tmp_path)
    argv = [a.format(**names) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "imgs")]
    assert main(["generate", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "imgs").exists()


def test_calls_bigger_than_the_plan_are_warned_about_and_max_batch_and_size_plan_for_them(stage1_dir, caplog):
    small = ifengine.Cascade.from_pretrained(stage1_dir, safety=False, vram_budget="2GiB")
    assert small.runtime.plan.workload.batch == 1
    small("a cat", num_images_per_prompt=2, seed=0, steps=2, output_type="pt", progress=False)
    assert any("bigger than the memory plan's batch 1" in r.getMessage() for r in caplog.records)
    caplog.clear()
    roomy = ifengine.Cascade.from_pretrained(stage1_dir, safety=False, vram_budget="2GiB", max_batch=2)
    assert roomy.runtime.plan.workload.batch == 2
    roomy.generate_many(["a cat", "a dog"], batch_size=2, seed=0, steps=2, output_type="pt")
    assert not any("memory plan" in r.getMessage() for r in caplog.records)
    wide = ifengine.Cascade.from_pretrained(stage1_dir, safety=False, vram_budget="2GiB", max_size=(None, 24))
    assert (wide.runtime.plan.workload.height, wide.runtime.plan.workload.width) == (16, 24)
    wide("a cat", width=24, seed=0, steps=2, output_type="pt", progress=False)
    small("a cat", width=24, seed=0, steps=2, output_type="pt", progress=False)
    planned = [r.getMessage() for r in caplog.records if "memory plan" in r.getMessage()]
    assert len(planned) == 1 and "at 16x24 is bigger than the memory plan's batch 1 at 16x16" in planned[0]
    with pytest.raises(ValueError, match="max_batch"):
        ifengine.Cascade.from_pretrained(stage1_dir, safety=False, vram_budget="2GiB", max_batch=0)
    with pytest.raises(ValueError, match="max_size"):
        ifengine.Cascade.from_pretrained(stage1_dir, safety=False, vram_budget="2GiB", max_size=(16, -8))
