"""`ifengine build RECIPE --compiler inductor` from the command line: the plan, refusals, the whole demo."""

import json
import re

import pytest

from ifengine.cli import main
from ifengine.engines.inductor_plan import COMPILABLE


def test_the_demo_recipe_plans_with_no_flags(tmp_path, capsys):
    assert main(["build", "demo", "--compiler", "inductor", "--out", str(tmp_path), "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert sorted(e["component"] for e in plan["engines"]) == sorted(COMPILABLE)  # every component
    step1 = next(e for e in plan["engines"] if e["component"] == "step1")
    assert step1["dynamic_dims"] == ["batch", "steps"]  # one package serves batch 1-2 and any step count
    assert step1["profile"]["inputs"]["sample"] == {"min": [1, 3, 16, 16], "opt": [1, 3, 16, 16], "max": [2, 3, 16, 16]}
    assert plan["build_command"] == f"ifengine build demo --compiler inductor --out {tmp_path}"
    assert plan["generate_command"].startswith(f"ifengine generate 'a photo of a red panda' --engines {tmp_path}")
    assert "--stage1" in plan["generate_command"] and "--stage3" in plan["generate_command"]


def _recipe(tmp_path, components: str) -> str:
    path = tmp_path / "mine.toml"
    path.write_text(f'[models]\ncheckpoints = "demo"\n[shapes]\nbase = 16\n[components]\n{components}\n')
    return str(path)


@pytest.mark.parametrize(
    "components, message",
    [
        ('unet1 = "fp16"', "unet1 precision 'fp16' is not compiled by Inductor on cpu; use fp32 or bf16"),
        ('unet1 = "int8"', "precision 'int8' is not compiled by Inductor"),
    ],
)
def test_what_inductor_cannot_compile_is_refused_before_any_work(tmp_path, capsys, components, message):
    args = ["build", _recipe(tmp_path, components), "--compiler", "inductor", "--out", str(tmp_path / "e")]
    assert main(args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()  # one line, naming the recipe
    assert re.search(message, line) and "mine.toml" in line
    assert not (tmp_path / "e").exists()


@pytest.mark.slow
def test_the_whole_demo_cascade_builds_and_generates_from_the_cli(tmp_path, capsys, monkeypatch):
    out = tmp_path / "engines"
    assert main(["build", "demo", "--compiler", "inductor", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("built in") == len(COMPILABLE) and f"{len(COMPILABLE)} built" in printed
    command = printed.strip().splitlines()[-1].split()
    assert command[:2] == ["ifengine", "generate"]
    monkeypatch.chdir(tmp_path)
    import shlex

    words = shlex.split(printed.strip().splitlines()[-1])[1:]
    assert main([*words, "--steps", "2,2,2", "--quiet"]) == 0
    assert (tmp_path / "image.png").is_file()
    assert main(["build", "demo", "--compiler", "inductor", "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out.count("up to date") == len(COMPILABLE)  # the second build reuses them all
