"""The Ray Serve deployments that hold models: one per stage, or the whole cascade.

Each is a thin shell around ``work``: ``batcher.Batcher`` batches the calls (its size and wait from the
deployment's ``StageConfig``; not ``@serve.batch``, which cuts the next batch while one runs), the batch
runs in a worker thread so the replica keeps accepting requests meanwhile, and one lock keeps the
cascade to one batch at a time.

LoRA per request: the ingress routes a request naming an adapter with Ray Serve's multiplexed model id,
so it reaches a replica that holds it; ``@serve.multiplexed`` keeps ``LORAS_PER_REPLICA`` adapters per
replica (least recently used out), and a batch runs each adapter's requests with it merged. Adapters
are merged into the U-Net's weights in place (``Cascade.load_lora_weights`` / ``set_adapters``): the
modules, the runtime's buffers and its captured graphs stay as they are, so a swap rebuilds nothing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

from ray import serve

from .config import ModelSource, ServeConfig, StageConfig
from .models import load_part, load_whole
from .batcher import Batcher
from .stopping import Gone
from .work import (
    Carry,
    captured_sizes,
    checked_cascade_batch,
    encode_batch,
    groups,
    safety_batch,
    stage_batch,
    uses_graphs,
)

log = logging.getLogger(__name__)
# @serve.multiplexed needs its count at class definition (Ray reads it at the first load: it stays fixed)
LORAS_PER_REPLICA = 3
CHECKS = dict(max_size=4, wait_s=0.05)  # the safety checker's batches: small images, one quick call


def _threads(cfg: StageConfig) -> None:
    if cfg.torch_threads is not None:
        import torch

        torch.set_num_threads(cfg.torch_threads)


def _batcher(run, cfg: StageConfig) -> Batcher:
    return Batcher(run, cfg.max_batch_size, cfg.batch_wait_timeout_s)


class _Held:
    """What the multiplexer caches per adapter; its eviction marks the adapter for removal."""

    def __init__(self, name: str, adapters: LoraSlots):
        self.name, self.adapters = name, adapters

    def __del__(self):
        self.adapters.evicted.add(self.name)


_UNKNOWN = object()  # the merged state after a load, until choose() sets it


class LoraSlots:
    """The adapters a replica's cascade holds (stage I), and the one merged into its weights now."""

    def __init__(self, folder: str | None):
        self.folder = Path(folder) if folder else None
        self.loaded: set[str] = set()
        self.evicted: set[str] = set()
        self.active: str | None | object = None  # None: the base weights

    def load(self, cascade, name: str) -> None:
        """Read and merge adapter ``name`` (held under the cascade's lock); the merge stays inactive."""
        if name in self.loaded:
            return
        if self.folder is None or not (self.folder / f"{name}.safetensors").is_file():
            raise ValueError(f"no LoRA adapter {name!r} in the configured folder")
        cascade.load_lora_weights(self.folder / f"{name}.safetensors", stage=1, adapter_name=name)
        self.loaded.add(name)
        self.active = _UNKNOWN  # loading merged it next to the others: choose() must set the state again
        log.info("LoRA adapter %r loaded", name)

    def choose(self, cascade, name: str | None) -> None:
        """Make exactly ``name`` (None: the base weights) merged, in place (held under the lock)."""
        if self.evicted & self.loaded:
            self._forget(cascade)
        if name is not None and name not in self.loaded:
            self.load(cascade, name)  # evicted meanwhile: the multiplexer re-lists it on its next load
        if name == self.active:
            return
        if name is None:
            cascade.disable_lora(stage=1)
        else:
            cascade.enable_lora(stage=1)
            cascade.set_adapters([name], stage=1)
        self.active = name

    def per_adapter(self, cascade, carries: list[Carry], run) -> list[Carry]:
        """``run`` on each group of carries that name the same adapter, with that adapter merged (Ray's
        batches already hold one multiplexed id each; this keeps a mixed list correct too)."""
        if self.folder is None:
            return run(carries)
        out = list(carries)
        for idx in groups(carries, lambda c: c.job.lora):
            self.choose(cascade, carries[idx[0]].job.lora)
            for i, c in zip(idx, run([carries[i] for i in idx]), strict=True):
                out[i] = c
        return out

    def _forget(self, cascade) -> None:
        """Drop evicted adapters: base weights back, then the still-held ones merged in again."""
        keep = self.loaded - self.evicted
        cascade.unload_lora_weights(stage=1)
        self.loaded, self.evicted, self.active = set(), set(), None
        for name in sorted(keep):
            self.load(cascade, name)


class _LoraMixin:
    """The multiplexed adapter loader shared by the stage I and whole-cascade deployments."""

    @serve.multiplexed(max_num_models_per_replica=LORAS_PER_REPLICA)
    async def lora(self, name: str) -> _Held:
        work = asyncio.to_thread(self._locked, self.loras.load, self.cascade, name)
        try:
            await asyncio.wait_for(work, timeout=self.lora_timeout_s)
        except asyncio.TimeoutError:
            raise TimeoutError(f"LoRA adapter {name!r} not loaded within {self.lora_timeout_s:g} s") from None
        return _Held(name, self.loras)

    async def _adapter(self) -> str | None:
        """The request's adapter (its multiplexed model id), loaded on this replica."""
        name = serve.get_multiplexed_model_id() or None
        if name is not None and self.loras.folder is not None:
            await self.lora(name)
        return name

    def _locked(self, fn, *args):
        with self.lock:
            return fn(*args)


@serve.deployment
class StageWorker(_LoraMixin):
    """The text encoders (T5, CLIP) and safety checker, stage I, stage II or stage III, batched (generations
    and edits alike: an edit's plan travels with its carry)."""

    def __init__(self, part: str, source: ModelSource, cfg: StageConfig, serve_config: ServeConfig | None = None):
        serve_config = serve_config or ServeConfig(source=source)
        self.part = part
        self.models = load_part(source, part, cfg, safety=serve_config.safety)
        self.cascade = self.models.cascade
        self.sizes = captured_sizes(cfg, uses_graphs(self.cascade))
        self.lock = threading.Lock()
        self.loras = LoraSlots(serve_config.lora_dir if part == "stage1" else None)
        self.lora_timeout_s = serve_config.lora_load_timeout_s
        self.gone = Gone()  # requests whose callers left: a batch of only those stops between steps
        _threads(cfg)
        self.batches = _batcher(self._run, cfg)
        self.checks = Batcher(self._check, **CHECKS)

    async def run(self, carry: Carry) -> Carry:
        await self._adapter()
        return await self.gone.track(carry, self.batches(carry))

    async def _run(self, carries: list[Carry]) -> list[Carry]:
        return await self.gone.in_thread(carries, self._locked, self._work, carries)

    async def check(self, carry: Carry, mark: int | None) -> Carry:
        """The text deployment's second job: the safety checker and watermark on final images."""
        return await self.checks(carry, mark)

    async def _check(self, carries: list[Carry], marks: list[int | None]) -> list[Carry]:
        return await asyncio.to_thread(self._locked, safety_batch, self.models.safety, carries, marks)

    def _work(self, carries: list[Carry]) -> list[Carry]:
        if self.part == "text":
            return encode_batch(self.cascade, carries, clip=self.models.clip)
        run = lambda batch: stage_batch(self.cascade, int(self.part[-1]), batch, self.sizes)  # noqa: E731
        return self.loras.per_adapter(self.cascade, carries, run) if self.part == "stage1" else run(carries)


@serve.deployment
class CascadeWorker(_LoraMixin):
    """The whole cascade in one replica (``--layout single``): generations and edits, batched per stage."""

    def __init__(self, source: ModelSource, cfg: StageConfig, serve_config: ServeConfig | None = None):
        serve_config = serve_config or ServeConfig(source=source)
        self.cascade = load_whole(source, cfg, safety=serve_config.safety)
        self.sizes = captured_sizes(cfg, uses_graphs(self.cascade))
        self.lock = threading.Lock()
        self.loras = LoraSlots(serve_config.lora_dir)
        self.lora_timeout_s = serve_config.lora_load_timeout_s
        if not serve_config.safety:
            log.warning("the safety checker is off (ServeConfig.safety=False, --no-safety): images are not checked")
        self.gone = Gone()
        _threads(cfg)
        self.batches = _batcher(self._run, cfg)

    async def run(self, carry: Carry) -> Carry:
        await self._adapter()
        return await self.gone.track(carry, self.batches(carry))

    async def _run(self, carries: list[Carry]) -> list[Carry]:
        run = lambda batch: checked_cascade_batch(self.cascade, batch, self.sizes)  # noqa: E731
        return await self.gone.in_thread(carries, self._locked, self.loras.per_adapter, self.cascade, carries, run)
