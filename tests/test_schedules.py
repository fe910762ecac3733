"""ifengine.schedule against diffusers' DDPMScheduler / DDIMScheduler (the oracle, test-only)."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.pipelines.deepfloyd_if import timesteps as if_timesteps
from diffusers.utils.torch_utils import randn_tensor

from ifengine.schedule import (
    IF_STAGE1_DDPM,
    IF_STAGE2_DDPM,
    IF_STAGE2_IMAGE_NOISING_DDPM,
    NAMED_TIMESTEP_LISTS,
    X4_DDIM,
    X4_LOW_RES_DDPM,
    DDIMConfig,
    DDPMConfig,
    add_noise,
    ddim_step,
    ddim_tables,
    ddpm_step,
    ddpm_tables,
    dynamic_threshold,
    named_timesteps,
    quantile_last_dim,
    spaced_timesteps,
    validate_timesteps,
)

TOL = dict(rtol=1e-6, atol=1e-6)
IF_NAMES = ("fast27", "smart27", "smart50", "smart100", "smart185", "super27", "super40", "super100")


def reference(config: DDPMConfig | DDIMConfig) -> DDPMScheduler | DDIMScheduler:
    cls = DDPMScheduler if isinstance(config, DDPMConfig) else DDIMScheduler
    return cls(**dataclasses.asdict(config))


def random_output(shape: tuple[int, ...], scale: float, learned: bool, seed: int) -> torch.Tensor:
    """Model output: prediction * scale, plus a learned-range variance channel block in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(shape, generator=g) * scale
    if not learned:
        return pred
    return torch.cat([pred, torch.rand(shape, generator=g) * 2 - 1], dim=1)


def run_ddpm_loop(config: DDPMConfig, steps: dict, shape: tuple[int, ...], scale: float) -> None:
    ref = reference(config)
    ref.set_timesteps(**steps)
    tables = ddpm_tables(config, **steps)
    assert tables.timesteps.tolist() == ref.timesteps.tolist()
    learned = config.variance_type == "learned_range"
    g_ref, g_ours = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    sample = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    for i, t in enumerate(ref.timesteps):
        out = random_output(shape, scale, learned, seed=100 + i)
        expected = ref.step(out, t, sample, generator=g_ref).prev_sample
        # The reference draws noise only when t > 0; draw ours from the same stream the same way.
        noise = randn_tensor(shape, generator=g_ours, dtype=out.dtype) if tables.draws_noise(i) else torch.zeros(shape)
        got = ddpm_step(tables, torch.tensor(i, dtype=torch.int64), out, sample, noise)
        torch.testing.assert_close(got, expected, **TOL, msg=f"step {i} (t={int(t)})")
        sample = expected


# --- timesteps -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", IF_NAMES)
def test_named_lists_match_diffusers(name):
    assert list(named_timesteps(name)) == getattr(if_timesteps, f"{name}_timesteps")


def test_named_list_names():
    assert set(NAMED_TIMESTEP_LISTS) == set(IF_NAMES)
    with pytest.raises(ValueError, match="smart100") as err:
        named_timesteps("smart99")
    assert "smart99" in str(err.value)


@pytest.mark.parametrize("n", [1, 2, 3, 10, 27, 50, 100, 333, 999, 1000])
def test_leading_timesteps_match_ddpm(n):
    ref = DDPMScheduler()
    ref.set_timesteps(n)
    assert list(spaced_timesteps(n)) == ref.timesteps.tolist()


@pytest.mark.parametrize("n", [1, 10, 50, 75, 100])
def test_x4_timesteps_match_ddim(n):
    ref = reference(X4_DDIM)
    ref.set_timesteps(n)
    assert ddim_tables(X4_DDIM, n).timesteps.tolist() == ref.timesteps.tolist()


@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
def test_other_spacings_match_ddpm(spacing):
    ref = DDPMScheduler(timestep_spacing=spacing)
    for n in range(1, 1001):
        ref.set_timesteps(n)
        expected = ref.timesteps.tolist()
        # diffusers' float arange sometimes yields n + 1 "trailing" steps; we return exactly n.
        assert list(spaced_timesteps(n, spacing=spacing)) == expected[:n], n


@pytest.mark.parametrize("steps", [[999, 500, 10], [999, 998, 0], [5], [0], list(named_timesteps("smart27"))])
def test_custom_timesteps_match_ddpm(steps):
    ref = reference(IF_STAGE1_DDPM)
    ref.set_timesteps(timesteps=steps)
    assert ddpm_tables(IF_STAGE1_DDPM, timesteps=steps).timesteps.tolist() == ref.timesteps.tolist()
    assert ddpm_tables(IF_STAGE1_DDPM, timesteps=torch.tensor(steps)).host_timesteps == tuple(steps)


@pytest.mark.parametrize(
    "bad, message",
    [
        ([], "empty"),
        ([500, 600], "descending"),
        ([500, 500], "descending"),
        ([1000, 10], "range"),
        ([10, -1], "range"),
        ([10.5, 1], "integers"),
        ([True, 0], "integers"),
        ("999", "sequence"),
    ],
)
def test_bad_timestep_lists(bad, message):
    with pytest.raises(ValueError, match=message):
        validate_timesteps(bad)


@pytest.mark.parametrize("n", [0, -3, 1001, 2.5])
def test_bad_step_counts(n):
    with pytest.raises(ValueError, match="num_inference_steps"):
        ddpm_tables(IF_STAGE1_DDPM, n)


def test_steps_offset_overflow_and_argument_mix():
    with pytest.raises(ValueError, match="range"):
        ddim_tables(X4_DDIM, 1000)  # leading + steps_offset 1 would reach t=1000
    with pytest.raises(ValueError, match="exactly one"):
        ddpm_tables(IF_STAGE1_DDPM, 10, timesteps=[5, 0])
    with pytest.raises(ValueError, match="exactly one"):
        ddpm_tables(IF_STAGE1_DDPM)
    assert ddpm_tables(IF_STAGE1_DDPM, timesteps="super27").host_timesteps == named_timesteps("super27")


# --- configs ---------------------------------------------------------------------------------


def test_from_dict_reads_diffusers_json():
    for config in (IF_STAGE1_DDPM, IF_STAGE2_DDPM, X4_LOW_RES_DDPM):
        data = json.loads(reference(config).to_json_string())
        assert "_class_name" in data
        assert DDPMConfig.from_dict(data) == config
    data = json.loads(reference(X4_DDIM).to_json_string())
    assert DDIMConfig.from_dict({**data, "skip_prk_steps": True}) == X4_DDIM


@pytest.mark.parametrize(
    "cls, change, field",
    [
        (DDPMConfig, {"prediction_type": "flow"}, "prediction_type"),
        (DDPMConfig, {"variance_type": "learned"}, "variance_type"),
        (DDPMConfig, {"beta_schedule": "sigmoid"}, "beta_schedule"),
        (DDPMConfig, {"timestep_spacing": "karras"}, "timestep_spacing"),
        (DDPMConfig, {"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
        (DDPMConfig, {"sample_max_value": 0.0}, "sample_max_value"),
        (DDIMConfig, {"prediction_type": "x0"}, "prediction_type"),
    ],
)
def test_from_dict_rejects_unsupported(cls, change, field):
    with pytest.raises(ValueError, match=field):
        cls.from_dict({"_class_name": "X", **change})


def test_trained_betas():
    betas = torch.tensor([0.1, 0.2, 0.3, 0.4])
    config = DDPMConfig.from_dict({"num_train_timesteps": 4, "trained_betas": betas.tolist()})
    expected = DDPMScheduler(num_train_timesteps=4, trained_betas=betas.tolist()).alphas_cumprod
    torch.testing.assert_close(config.alphas_cumprod(), expected, rtol=0, atol=0)


@pytest.mark.parametrize("config", [IF_STAGE1_DDPM, X4_LOW_RES_DDPM, DDPMConfig()])
def test_alphas_cumprod_match(config):
    torch.testing.assert_close(config.alphas_cumprod(), reference(config).alphas_cumprod, rtol=0, atol=0)


# --- DDPM steps ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "steps, scale",
    [
        ({"num_inference_steps": 100}, 1.0),
        ({"num_inference_steps": 27}, 3.0),
        ({"num_inference_steps": 1}, 3.0),
        ({"timesteps": list(named_timesteps("smart50"))}, 2.0),
        ({"timesteps": [999, 600, 37]}, 2.0),  # last step at t > 0: noise with a_prev = 1
    ],
)
def test_stage1_loop_matches_diffusers(steps, scale):
    run_ddpm_loop(IF_STAGE1_DDPM, steps, (2, 3, 24, 16), scale)


@pytest.mark.parametrize("steps", [{"num_inference_steps": 50}, {"timesteps": list(named_timesteps("smart27"))}])
def test_stage2_loop_matches_diffusers(steps):
    run_ddpm_loop(IF_STAGE2_DDPM, steps, (2, 3, 32, 32), 3.0)


def test_stage2_thresholding_is_a_static_clip(monkeypatch):
    tables = ddpm_tables(IF_STAGE2_DDPM, 10)
    assert tables.x0_clamp.mode == "clip" and tables.x0_clamp.bound == 1.0
    monkeypatch.setattr(torch, "topk", lambda *a, **k: pytest.fail("stage II must not compute a quantile"))
    ddpm_step(tables, 3, torch.randn(1, 6, 8, 8), torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8))
    assert ddpm_tables(IF_STAGE1_DDPM, 10).x0_clamp.mode == "dynamic"


@pytest.mark.parametrize(
    "config",
    [
        dataclasses.replace(X4_LOW_RES_DDPM, prediction_type="v_prediction", clip_sample=False),
        dataclasses.replace(IF_STAGE1_DDPM, variance_type="fixed_small", prediction_type="sample"),
        dataclasses.replace(IF_STAGE1_DDPM, timestep_spacing="trailing", thresholding=False),
    ],
)
def test_other_ddpm_variants_match_diffusers(config):
    run_ddpm_loop(config, {"num_inference_steps": 20}, (1, 3, 8, 8), 2.0)


def test_dynamic_threshold_per_sample_scales():
    ref = reference(IF_STAGE1_DDPM)
    x0 = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)) / 1.96
    # Per-sample 95% quantiles of |x0| land below 1, inside (1, 1.5) and above 1.5.
    x0 = x0 * torch.tensor([0.5, 1.2, 1.4, 3.0]).view(4, 1, 1, 1)
    flat = x0.reshape(4, -1).abs()
    s = quantile_last_dim(flat, 0.95)
    assert s[0] < 1 < s[1] < s[2] < 1.5 < s[3]
    torch.testing.assert_close(s, torch.quantile(flat, 0.95, dim=1), rtol=0, atol=0)
    expected = ref._threshold_sample(x0)
    torch.testing.assert_close(dynamic_threshold(x0, 0.95, 1.5), expected, rtol=0, atol=0)
    half = dynamic_threshold(x0.half(), 0.95, 1.5)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half, ref._threshold_sample(x0.half()), rtol=0, atol=0)


@pytest.mark.parametrize("n", [1, 2, 5, 100, 3 * 64 * 64, 3 * 64 * 96 + 1])
@pytest.mark.parametrize("q", [0.0, 0.05, 0.5, 0.95, 0.995, 1.0])
def test_quantile_matches_torch(n, q):
    x = torch.randn(3, n, generator=torch.Generator().manual_seed(n)).abs()
    for xs in (x, x.double()):
        torch.testing.assert_close(quantile_last_dim(xs, q), torch.quantile(xs, q, dim=1), rtol=0, atol=0)


def test_unbounded_learned_variance_at_t0_stays_finite():
    tables = ddpm_tables(IF_STAGE1_DDPM, 10)
    out = torch.full((1, 6, 4, 4), 40.0)  # exp() of the interpolated log-variance overflows
    got = ddpm_step(tables, len(tables) - 1, out, torch.zeros(1, 3, 4, 4), torch.randn(1, 3, 4, 4))
    assert torch.isfinite(got).all()


def test_model_output_channel_check():
    tables = ddpm_tables(IF_STAGE1_DDPM, 10)
    with pytest.raises(ValueError, match="channels"):
        ddpm_step(tables, 0, torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4))


# --- add_noise -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, t",
    [
        (IF_STAGE2_IMAGE_NOISING_DDPM, 250),
        (IF_STAGE1_DDPM, 999),
        (X4_LOW_RES_DDPM, 20),
        (X4_LOW_RES_DDPM, 350),
    ],
)
def test_add_noise_matches_diffusers(config, t):
    g = torch.Generator().manual_seed(t)
    x0, noise = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    expected = reference(config).add_noise(x0, noise, torch.tensor([t, t]))
    tables = ddpm_tables(config, 10)
    for t_arg in (t, torch.tensor(t), torch.tensor([t, t])):
        torch.testing.assert_close(add_noise(tables, x0, noise, t_arg), expected, rtol=0, atol=0)
    torch.testing.assert_close(add_noise(config.alphas_cumprod(), x0, noise, t), expected, rtol=0, atol=0)


def test_add_noise_per_sample_timesteps():
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    ts = torch.tensor([0, 20, 350])
    expected = reference(X4_LOW_RES_DDPM).add_noise(x0, noise, ts)
    torch.testing.assert_close(add_noise(ddim_tables(X4_DDIM, 5), x0, noise, ts), expected, **TOL)


# --- DDIM ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        X4_DDIM,
        dataclasses.replace(X4_DDIM, set_alpha_to_one=True),
        dataclasses.replace(X4_DDIM, prediction_type="epsilon", clip_sample=True),
        dataclasses.replace(X4_DDIM, prediction_type="sample", timestep_spacing="trailing"),
    ],
)
@pytest.mark.parametrize("n", [1, 10, 75])
def test_ddim_loop_matches_diffusers(config, n):
    ref = reference(config)
    ref.set_timesteps(n)
    tables = ddim_tables(config, n)
    sample = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    for i, t in enumerate(ref.timesteps):
        out = random_output((2, 4, 16, 16), 1.0, learned=False, seed=i)
        expected = ref.step(out, t, sample, eta=0.0).prev_sample
        torch.testing.assert_close(ddim_step(tables, torch.tensor(i), out, sample), expected, **TOL)
        sample = expected


def test_ddim_eta_matches_diffusers():
    ref = reference(X4_DDIM)
    ref.set_timesteps(20)
    tables = ddim_tables(X4_DDIM, 20, eta=0.7)
    sample = torch.randn(1, 4, 8, 8)
    for i, t in enumerate(ref.timesteps):
        out, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
        expected = ref.step(out, t, sample, eta=0.7, variance_noise=noise).prev_sample
        torch.testing.assert_close(ddim_step(tables, i, out, sample, noise), expected, **TOL)
        sample = expected
    with pytest.raises(ValueError, match="noise"):
        ddim_step(tables, 0, out, sample)


# --- graph friendliness ----------------------------------------------------------------------


def trace_quietly(fn, example):
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)  # a value-dependent branch would warn
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.trace(fn, example)


def test_ddpm_step_traces_with_tensor_index():
    tables = ddpm_tables(IF_STAGE1_DDPM, 100)
    g = torch.Generator().manual_seed(0)
    out = torch.randn(2, 6, 32, 32, generator=g) * 3
    sample, noise = torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 3, 32, 32, generator=g)

    def step(i, o, x, n):
        return ddpm_step(tables, i, o, x, n)

    traced = trace_quietly(step, (torch.tensor(5), out, sample, noise))
    for i in (0, 37, 99):  # 99 is t == 0: the noise mask must follow the index, not the trace
        eager = ddpm_step(tables, i, out, sample, noise)
        torch.testing.assert_close(traced(torch.tensor(i), out, sample, noise), eager, rtol=0, atol=0)
    assert not torch.equal(ddpm_step(tables, 0, out, sample, noise), ddpm_step(tables, 1, out, sample, noise))


def test_ddim_step_traces_with_tensor_index():
    tables = ddim_tables(X4_DDIM, 75)
    out, sample = torch.randn(1, 4, 16, 16), torch.randn(1, 4, 16, 16)
    traced = trace_quietly(lambda i, o, x: ddim_step(tables, i, o, x), (torch.tensor(3), out, sample))
    for i in (0, 40, 74):
        eager = ddim_step(tables, i, out, sample)
        torch.testing.assert_close(traced(torch.tensor(i), out, sample), eager, rtol=0, atol=0)


def test_tables_to_and_from_step():
    tables = ddpm_tables(IF_STAGE1_DDPM, 50)
    wide = tables.to(dtype=torch.float64)
    assert wide.coef_x0.dtype == torch.float64 and wide.timesteps.dtype == torch.int64
    assert wide.noise_mask.dtype == torch.bool
    tail = tables.from_step(15)
    assert tail.host_timesteps == tables.host_timesteps[15:] and len(tail.alphas_cumprod) == 1000
    o, x, n = torch.randn(1, 6, 8, 8), torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(ddpm_step(tail, 2, o, x, n), ddpm_step(tables, 17, o, x, n), rtol=0, atol=0)
    with pytest.raises(ValueError, match="start"):
        tables.from_step(50)


def test_stage1_step_exports_to_onnx():
    import onnxruntime as ort

    tables = ddpm_tables(IF_STAGE1_DDPM, 100)

    class Step(torch.nn.Module):
        def forward(self, i, o, x, n):
            return ddpm_step(tables, i, o, x, n)

    g = torch.Generator().manual_seed(0)
    out = torch.randn(2, 6, 16, 16, generator=g) * 3
    sample, noise = torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 3, 16, 16, generator=g)
    args = (torch.tensor(5), out, sample, noise)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(Step(), args, buffer, dynamo=False, opset_version=19, input_names=["i", "o", "x", "n"])
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    for i in (0, 50, 99):
        feeds = {"i": torch.tensor(i).numpy(), "o": out.numpy(), "x": sample.numpy(), "n": noise.numpy()}
        got = torch.from_numpy(session.run(None, feeds)[0])
        torch.testing.assert_close(got, ddpm_step(tables, i, out, sample, noise), rtol=1e-5, atol=1e-5)


def test_library_does_not_import_diffusers():
    code = "import sys, ifengine.schedule; sys.exit(2 if 'diffusers' in sys.modules else 0)"
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, check=False).returncode == 0
