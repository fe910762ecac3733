"""`ifengine serve` without serving: flags -> ServeConfig, the `serve deploy` YAML, replica proposals."""

import json

import pytest
import yaml

from ifengine.cli import build_parser, main
from ifengine.serve import ServeConfig, StageConfig
from ifengine.serve.replicas import propose

pytest.importorskip("ray.serve")


def config_of(*flags):
    from ifengine.commands.serve import serve_config

    return serve_config(build_parser().parse_args(["serve", *flags]))


def test_flags_map_onto_each_deployment():
    config = config_of("--replicas", "stage1=2,stage3=3", "--gpus", "0.5", "--max-batch", "stage2=16")
    assert (config.stage1.replicas, config.stage3.replicas, config.text.replicas) == (2, 3, 1)
    assert config.text.num_gpus == config.stage3.num_gpus == 0.5
    assert config.ingress.num_gpus == 0.0  # the ingress holds no model
    assert config.stage2.max_batch_size == 16 and config.stage2.max_ongoing_requests >= 16


@pytest.mark.parametrize("flag", [["--replicas", "stage9=2"], ["--replicas", "stage1=two"], ["--gpus", "x"]])
def test_bad_deployment_flags_are_refused(flag, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", *flag])
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag, message",
    [
        (["--request-memory", "banana"], "cannot read 'banana' as a memory size"),
        (["--torch-threads", "0"], "whole number >= 1"),
        (["--torch-threads", "stage1=x"], "whole number >= 1 for stage1"),
    ],
)
def test_bad_limit_flags_name_what_is_accepted(flag, message, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", *flag])
    assert message in capsys.readouterr().err
    assert config_of("--request-memory", "8GiB").limits.request_memory == 8 * 2**30


def test_a_missing_lora_dir_is_refused_before_ray_starts(tmp_path, capsys):
    assert main(["serve", "--lora-dir", str(tmp_path / "none")]) == 2  # returns at once: no Ray was started
    assert "--lora-dir" in capsys.readouterr().err


def test_configs_refuse_unreadable_limits():
    from ifengine.serve import Limits

    with pytest.raises(ValueError, match="memory size"):
        Limits(request_memory="zz")
    with pytest.raises(ValueError, match="torch_threads"):
        StageConfig(torch_threads=0)


def test_stage_config_refuses_batches_larger_than_what_a_replica_runs():
    with pytest.raises(ValueError, match="max_ongoing_requests"):
        StageConfig(max_batch_size=8, max_ongoing_requests=4)


def test_print_config_is_a_serve_deploy_file_that_rebuilds_the_config(tmp_path, capsys):
    out = tmp_path / "serve.yaml"
    argv = ["serve", "--replicas", "stage3=2", "--gpus", "stage3=1", "--api-key", "secret", "--print-config", str(out)]
    assert main(argv) == 0
    raw = yaml.safe_load(out.read_text())
    (app,) = raw["applications"]
    assert app["import_path"] == "ifengine.serve:app" and raw["http_options"]["host"] == "127.0.0.1"
    assert "secret" not in out.read_text()  # the key travels in the environment, never in the file
    rebuilt = ServeConfig.from_dict(app["args"])
    assert rebuilt.stage3 == StageConfig(replicas=2, num_gpus=1.0)
    stage3 = next(d for d in app["deployments"] if d["name"] == "stage3")
    assert stage3["num_replicas"] == 2 and stage3["ray_actor_options"]["num_gpus"] == 1.0
    assert {d["name"] for d in app["deployments"]} == {"text", "stage1", "stage2", "stage3", "ingress"}


def test_serve_config_from_dict_names_unknown_keys():
    with pytest.raises(ValueError, match="replicaz"):
        ServeConfig.from_dict({"replicaz": 3})


def test_replicas_are_proportional_to_stage_time_and_balance_the_rates():
    times = {"text": 0.05, "stage1": 1.2, "stage2": 1.0, "stage3": 1.8}
    result = propose(times, 8)
    counts = result["replicas"]
    assert sum(counts.values()) == 8 and min(counts.values()) >= 1
    assert counts["stage3"] >= counts["stage1"] >= counts["stage2"] >= counts["text"]
    rates = {s: counts[s] / t for s, t in times.items()}
    assert result["images_per_second"] == pytest.approx(min(rates.values()))
    # moving any one replica elsewhere cannot raise the slowest stage's rate
    for a in counts:
        for b in counts:
            if a != b and counts[a] > 1:
                moved = {**counts, a: counts[a] - 1, b: counts[b] + 1}
                assert min(moved[s] / t for s, t in times.items()) <= result["images_per_second"] + 1e-9
    with pytest.raises(ValueError, match="at least one replica per stage"):
        propose(times, 3)


def bench_json(path, batch_stats):
    runs = [
        {"dtype": "float16", "batch": b, "stats": {"ifengine-auto": {k: {"median": v} for k, v in s.items()}}}
        for b, s in batch_stats.items()
    ]
    path.write_text(json.dumps({"benchmark": "cascade", "runs": runs}))
    return path


def test_propose_replicas_reads_ifengine_bench_cascade_json(tmp_path, capsys):
    stats = {"T5": 0.2, "I": 4.8, "II": 4.0, "III": 7.2, "total": 16.2}
    path = bench_json(tmp_path / "cascade.json", {1: {k: v / 4 for k, v in stats.items()}, 4: stats})
    assert main(["serve", "--propose-replicas", str(path), "--total-replicas", "8"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[: out.rindex("}") + 1])
    assert result["from"]["batch"] == 4 and result["from"]["system"] == "ifengine-auto"
    assert result["seconds_per_image"]["stage3"] == pytest.approx(1.8)
    assert "--replicas text=1,stage1=" in out
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"benchmark": "host", "runs": []}))
    assert main(["serve", "--propose-replicas", str(bad)]) == 2
    assert "ifengine bench cascade" in capsys.readouterr().err
