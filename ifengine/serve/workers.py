"""The Ray Serve deployments that hold models: one per stage, or the whole cascade.

Each is a thin shell around ``work``: Ray batches the calls (``@serve.batch``, its size and wait set
from the deployment's ``StageConfig``), the batch runs in a worker thread so the replica keeps
accepting the next batch meanwhile, and one lock keeps the cascade to one batch at a time.
"""

from __future__ import annotations

import logging
import threading

from ray import serve

from .config import ModelSource, StageConfig
from .models import load_part, load_whole
from .stopping import Gone
from .work import Carry, cascade_batch, encode_batch, stage_batch

log = logging.getLogger(__name__)
# @serve.batch needs values at class definition; every replica resets them from its StageConfig
_BATCH = dict(max_batch_size=4, batch_wait_timeout_s=0.05)


def _configure(method, cfg: StageConfig) -> None:
    if cfg.torch_threads is not None:
        import torch

        torch.set_num_threads(cfg.torch_threads)
    method.set_max_batch_size(cfg.max_batch_size)
    method.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)


@serve.deployment
class StageWorker:
    """The text encoder (T5), stage I, stage II or stage III, batched."""

    def __init__(self, part: str, source: ModelSource, cfg: StageConfig):
        self.part = part
        self.cascade = load_part(source, part)
        self.lock = threading.Lock()
        self.gone = Gone()  # requests whose callers left: a batch of only those stops between steps
        _configure(self._batched, cfg)

    async def run(self, carry: Carry) -> Carry:
        return await self.gone.track(carry, self._batched(carry))

    @serve.batch(**_BATCH)
    async def _batched(self, carries: list[Carry]) -> list[Carry]:
        return await self.gone.in_thread(carries, self._work, carries)

    def _work(self, carries: list[Carry]) -> list[Carry]:
        with self.lock:
            if self.part == "text":
                return encode_batch(self.cascade, carries)
            return stage_batch(self.cascade, int(self.part[-1]), carries)


@serve.deployment
class CascadeWorker:
    """The whole cascade in one replica: batched text-to-image (``--layout single``) and image edits."""

    def __init__(self, source: ModelSource, cfg: StageConfig):
        self.cascade = load_whole(source)
        self.lock = threading.Lock()
        self.gone = Gone()
        _configure(self._batched, cfg)

    async def run(self, carry: Carry) -> Carry:
        return await self.gone.track(carry, self._batched(carry))

    @serve.batch(**_BATCH)
    async def _batched(self, carries: list[Carry]) -> list[Carry]:
        return await self.gone.in_thread(carries, self._locked, cascade_batch, carries)

    async def edit(self, mode: str, image, prompt: str, kwargs: dict):
        """One editing request (img2img / inpaint / style); returns (final images NCHW [-1, 1], settings)
        or the ValueError that names what was wrong (the caller answers it as a 400)."""
        return await self.gone.call(self._locked, self._edit, mode, image, prompt, kwargs)

    def _locked(self, fn, *args):
        with self.lock:
            return fn(*args)

    def _edit(self, mode: str, image, prompt: str, kwargs: dict):
        pipe = self.cascade
        try:
            if mode == "img2img":
                out = pipe.img2img(image, prompt, progress=False, output_type="pt", **kwargs)
            elif mode == "inpaint":
                mask = kwargs.pop("mask")
                out = pipe.inpaint(image, mask, prompt, progress=False, output_type="pt", **kwargs)
            else:
                out = pipe.style_transfer(image, prompt, progress=False, output_type="pt", **kwargs)
        except ValueError as err:  # RequestError and friends: the request's fault, said in words
            return err
        return out.stages[-1], out.settings
