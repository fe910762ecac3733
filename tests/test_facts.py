"""Facts stated once: the cascade's numbers, the dtype tables, and the one whole-number check, which every
caller (API, CLI, serve, configs) words the same way."""

import numpy as np
import onnx
import pytest
import torch

from ifengine import dtypes, facts
from ifengine.engines.profiles import SCALE
from ifengine.memory.estimate import Limits
from ifengine.serve.config import StageConfig
from ifengine.stage.options import RequestError, check_images_per_prompt, stage_options
from ifengine.stage.sizes import check_size
from ifengine.validate import positive_int


def test_scale_follows_the_stages():
    assert [facts.scale_of(s) for s in (1, 2, 3)] == [1, 4, 16]
    # image components work at their stage's size, but stage III's latents have stage II's
    assert SCALE["unet1"] == 1 and SCALE["unet2"] == SCALE["x4_unet"] == SCALE["vae_decoder"] == 4


@pytest.mark.parametrize("name", ["float32", "float16", "bfloat16", "int64", "int32", "int8", "uint8", "bool"])
def test_onnx_types_match_onnx(name):
    # onnx's own mapping is the reference (bfloat16 has no numpy type: its enum is named by onnx)
    ref = onnx.TensorProto.BFLOAT16 if name == "bfloat16" else onnx.helper.np_dtype_to_tensor_dtype(np.dtype(name))
    assert dtypes.onnx_type(name) == dtypes.onnx_type(getattr(torch, name)) == ref


def test_precision_names_round_trip():
    for precision in ("fp32", "fp16", "bf16"):
        assert dtypes.precision_of(dtypes.torch_dtype(precision)) == precision
    with pytest.raises(ValueError, match="no precision runs in int64"):
        dtypes.precision_of(torch.int64)


@pytest.mark.parametrize(
    "check, message",
    [
        (lambda: positive_int(0, "n"), "n must be a whole number >= 1, got 0"),
        (lambda: positive_int(True, "n"), "n must be a whole number >= 1, got True"),
        (lambda: positive_int(2.0, "n"), "n must be a whole number >= 1, got 2.0"),
        (lambda: positive_int(-1, "n", none_ok=True), "n must be a whole number >= 1 or None, got -1"),
        (lambda: StageConfig(replicas=0), "replicas must be a whole number >= 1, got 0"),
        (lambda: Limits(max_batch=False), "max_batch must be a whole number >= 1 or None, got False"),
        (lambda: check_size(0, 64, 8), r"height \(pixels\) must be a whole number >= 1, got 0"),
        (lambda: check_images_per_prompt(0), "num_images_per_prompt must be a whole number >= 1, got 0"),
        (lambda: stage_options((4, 0), None, None, None), "stage 2 steps must be a whole number >= 1, got 0"),
    ],
)
def test_one_wording_for_whole_numbers(check, message):
    with pytest.raises(ValueError, match=message):
        check()


def test_request_checks_raise_request_errors():
    assert positive_int(3, "n") == 3 and positive_int(None, "n", none_ok=True) is None
    with pytest.raises(RequestError):
        check_images_per_prompt(-2)
