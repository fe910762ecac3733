"""One stage of a cascade call driven directly through a runtime (the GPU check's equality section)."""

from __future__ import annotations

import torch

from ..stage.stages import RunContext

PROMPT = "a photograph of a red cat sitting on a wooden table"


def stage_inputs(cascade, steps, prompt: str = PROMPT, size: int | None = None):
    """A request for one image at the default size and its [negative; prompt] T5 embeddings."""
    req = cascade.make_request(prompt, height=size, width=size, steps=steps, output_type="pt")
    pos, neg = cascade.encode(req, True)
    return req, torch.cat([neg, pos])


def run_stage(runtime, cascade, req, embeds, stage: int, image, seed: int) -> torch.Tensor:
    ctx = RunContext(cascade.device, cascade.dtype, torch.Generator().manual_seed(seed), False)
    opts = req.stages[stage - 1]
    if stage == 3:
        return runtime.run_x4_stage(cascade.stage3, opts, list(req.prompts), list(req.negatives), image, ctx)
    shape = (req.batch, 3, *req.size(stage))
    return runtime.run_if_stage(
        stage, (cascade.stage1, cascade.stage2)[stage - 1], opts, embeds, shape, ctx, image=image
    )
