"""The request check every generate call passes before any work: explicit limits and the memory estimate.

``Cascade.make_request`` and the editing modes call ``check`` with their validated ``Request``; a request
that cannot fit raises ``RequestTooLarge`` (a ``ValueError``) naming the estimate, the limit and what
would fit, before a single tensor is allocated. Servers set limits once with ``set_limits``.
"""

from __future__ import annotations

import torch

from ..dtypes import FLOAT_DTYPES, torch_dtype
from ..errors import one_line
from ..memory.estimate import Limits, RequestEstimate, check_request
from ..memory.sizes import parse_size


def set_limits(
    cascade, *, memory: int | str | None = None, max_pixels: int | None = None, max_batch: int | None = None
):
    """Limits for every later request of ``cascade``: ``memory`` ("8GiB", bytes; default: what the device
    has free), ``max_pixels`` per output image, ``max_batch`` images per call."""
    memory = parse_size(memory) if memory is not None else None
    cascade.request_limits = Limits(memory=memory, max_pixels=max_pixels, max_batch=max_batch)
    return cascade


def check_device(device) -> torch.device:
    """``device`` as a torch.device, refusing names torch does not know and CUDA where there is none."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r} ({one_line(err, 80)})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} asked for, but this machine has no usable CUDA GPU; use 'cpu'")
    return device


DTYPES = tuple(torch_dtype(name) for name in FLOAT_DTYPES)


def check_dtype(dtype, name: str = "dtype") -> torch.dtype:
    """A floating torch dtype the modules can run in (torch's own error for others is many lines)."""
    if dtype not in DTYPES:
        raise TypeError(f"{name} must be torch.float32, torch.float16 or torch.bfloat16, got {dtype!r}")
    return dtype


def check(cascade, request) -> RequestEstimate:
    """Refuse ``request`` (a pipeline ``Request``) when it exceeds a limit or the memory it may use."""
    return check_request(
        cascade,
        batch=request.batch,
        height=request.height,
        width=request.width,
        last_stage=request.last_stage,
        steps=tuple(s.steps for s in request.stages),
    )
