"""Sections ``equality``, ``graph_reuse`` and ``sync_debug``: what CUDA graphs promise, checked.

* ``equality``: every step of each stage replayed from its CUDA graph against the eager step from the
  same state, in ulps (0 = bit for bit; see ``ulps.py`` for why not an absolute tolerance);
* ``graph_reuse``: the graphs captured by a first call replayed by a second call with another prompt
  and seed, compared with an eager call of that second request (a stale buffer or a shape baked into
  a graph shows here, where a comparison within one call cannot see it);
* ``sync_debug``: after a first call captured every graph, a call with a prompt never seen before (so
  T5 and CLIP run too) under ``torch.cuda.set_sync_debug_mode("error")``.

On the CPU the eager halves run (the same code up to the graph calls); the graph halves are skipped.
"""

from __future__ import annotations

import torch

from .common import build_cascade, call, on_gpu, release, skip, stage_ulps
from .config import PROMPTS, CheckConfig
from ...runtime import configure
from ..stage_run import run_stage, stage_inputs
from ..ulps import max_ulps
from ...text.masks import host_mask_status


def equality(cfg: CheckConfig, save) -> dict:

    cascade = build_cascade(cfg)
    req, embeds = stage_inputs(cascade, cfg.steps, size=cfg.size)
    eager = configure(cascade, cuda_graphs=False)
    graphs = configure(cascade, cuda_graphs=True) if on_gpu(cfg) else None
    report, image = {}, None
    try:
        for stage in (1, 2, 3):
            states = []
            eager.runner.observe = lambda n, x, states=states: states.append(x.clone())
            out = run_stage(eager, cascade, req, embeds, stage, image, seed=stage)
            if graphs is None:
                report[f"stage{stage}"] = {"eager_steps": len(states), **skip("CUDA graphs need a CUDA device")}
            else:
                run_stage(graphs, cascade, req, embeds, stage, image, seed=stage)
                report[f"stage{stage}"] = _replay_ulps(graphs, stage, states)
            image = out
            save(report)
    finally:
        eager.close()
        if graphs is not None:
            graphs.close()
        release(cascade)
    return report


def _replay_ulps(graphs, stage: int, states: list[torch.Tensor]) -> dict:  # GPU only
    """Replay the captured step from each eager state and count ulps to the eager next state."""

    graph = list(graphs.runner.graphs[stage]._graphs.values())[-1]  # latency mode: stages share one cache
    arena = graphs.runner.arenas[stage]
    x, index = arena.view("x", tuple(states[0].shape), states[0].dtype), arena.view("index", (), torch.long)
    ulps = []
    for k in range(len(states) - 1):
        x.copy_(states[k])
        index.fill_(k + 1)
        graph.replay_no_sync()
        ulps.append(max_ulps(x, states[k + 1]))
    return {"steps": len(states), "max_ulps_per_step": ulps, "bitwise": all(u == 0 for u in ulps)}


def reuse(cfg: CheckConfig, save) -> dict:

    cascade = build_cascade(cfg)
    try:
        runtime = configure(cascade, cuda_graphs=on_gpu(cfg))
        call(cascade, cfg, PROMPTS[0], seed=0)  # captures every graph (on a GPU)
        first = _captured(runtime)
        second = call(cascade, cfg, PROMPTS[1], seed=1)  # replays them with another prompt and seed
        captured = {"after_first_call": first, "after_second_call": _captured(runtime)}
        runtime.close()
        configure(cascade, cuda_graphs=False)
        reference = call(cascade, cfg, PROMPTS[1], seed=1)
        ulps = stage_ulps(second, reference)
        report = {"graphs": on_gpu(cfg), "captured_graphs": captured, "max_ulps_per_stage": ulps}
        report["bitwise"] = all(u == 0 for u in ulps)
        report["reused"] = captured["after_first_call"] == captured["after_second_call"]
        if not on_gpu(cfg):
            report.update(skip("CUDA graphs need a CUDA device: eager against eager"))
        return report
    finally:
        release(cascade)


def _captured(runtime) -> int:
    caches = {id(c): c for c in runtime.runner.graphs.values()}.values()  # stages may share a cache
    return sum(len(getattr(c, "_graphs", ())) for c in caches)


def sync_debug(cfg: CheckConfig, save) -> dict:

    cascade = build_cascade(cfg)
    try:
        configure(cascade, cuda_graphs=on_gpu(cfg))
        call(cascade, cfg, PROMPTS[0])  # encodes its prompt and captures every graph (capture syncs)
        mask = {"t5_mask": host_mask_status(cascade.text.model)}  # a 2-D fallback would sync every encode
        if not on_gpu(cfg):
            call(cascade, cfg, PROMPTS[1], seed=1)
            return {**mask, **skip("sync debug mode is a CUDA feature: the uncached call ran without it")}
        return {**mask, **_uncached_call_under_sync_debug(cascade, cfg)}
    finally:
        release(cascade)


def _uncached_call_under_sync_debug(cascade, cfg: CheckConfig) -> dict:  # GPU only
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        call(cascade, cfg, PROMPTS[1], seed=1)  # a new prompt: T5 and CLIP run, then every replay
        return {"ok": True, "prompt": "uncached (T5 and CLIP ran inside the checked call)"}
    except RuntimeError as err:
        return {"ok": False, "error": str(err).splitlines()[0][:500]}
    finally:
        torch.cuda.set_sync_debug_mode("default")
