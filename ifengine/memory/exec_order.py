"""The order in which a forward enters a module's submodules, recorded from a real forward with hooks.

Weight streaming prefetches unit k+1 while unit k computes, so the units must be listed in the order
the forward runs them. Registration order is not that order: IFUNet registers its up_blocks before its
mid_block, T5 a layer's feed-forward before its layer norm, and a prefetch made for the wrong unit is
thrown away and copied again. Here every submodule gets a forward pre-hook and the module runs once
through ``torch.func.functional_call`` with meta tensors in place of its weights and inputs: the real
forward code, no memory and no arithmetic, on planning's meta modules and on loaded ones alike.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from itertools import chain

import torch
from torch import nn

from .partition import Partition

log = logging.getLogger(__name__)
TEXT_ENCODERS = ("t5", "clip")
UNETS = ("unet1", "unet2", "x4_unet")
META = torch.device("meta")


def execution_order(module: nn.Module, args: tuple, kwargs: dict | None = None) -> list[str]:
    """Qualified names of ``module``'s submodules in the order one forward on ``args`` first enters them."""
    order: dict[str, int] = {}

    def entered(path: str):
        def hook(_module, _args) -> None:
            order.setdefault(path, len(order))

        return hook

    hooks = [sub.register_forward_pre_hook(entered(path)) for path, sub in module.named_modules()]
    # one meta tensor per distinct weight: functional_call re-ties T5's shared embedding itself
    meta = {
        name: torch.empty_like(t, device=META) for name, t in chain(module.named_parameters(), module.named_buffers())
    }
    try:
        with torch.no_grad():
            torch.func.functional_call(module, meta, args, kwargs or {}, strict=False)
    finally:
        for hook in hooks:
            hook.remove()
    return list(order)


def component_args(name: str, module: nn.Module) -> tuple:
    """Small meta inputs for one forward of a cascade component (shapes only fix the path taken)."""
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
    if name in TEXT_ENCODERS:
        return (torch.zeros(1, 77, dtype=torch.long, device=META),)
    config = module.config
    if name in UNETS:
        text_dim = config.encoder_hid_dim or config.cross_attention_dim[0]
        x = torch.zeros(1, config.in_channels, 64, 64, dtype=dtype, device=META)
        t = torch.zeros(1, dtype=torch.long, device=META)
        labelled = config.class_embed_type or config.num_class_embeds
        level = torch.zeros(1, dtype=torch.long, device=META) if labelled else None
        return (x, t, torch.zeros(1, 77, text_dim, dtype=dtype, device=META), level)
    return (torch.zeros(1, config.latent_channels, 16, 16, dtype=dtype, device=META),)  # vae_decoder


def unit_order(name: str, module: nn.Module) -> list[str] | None:
    """The execution order of ``module`` (a cascade component), or None, with a warning, where its forward
    cannot run on meta."""
    try:
        return execution_order(module, component_args(name, module))
    except Exception as err:  # noqa: BLE001 - a module we cannot trace still streams, just less well
        log.warning("%s: no execution order (%s: %s); streaming in registration order", name, type(err).__name__, err)
        return None


def in_execution_order(part: Partition, name: str, module: nn.Module, order: list[str] | None = None) -> Partition:
    """``part`` with its units sorted by when the forward reaches them (``order``, traced here when not
    given); the registration order where the forward cannot run on meta. Units the forward never enters
    (an untied copy of T5's embedding) go first: the planner streams units from the end, and a unit whose
    hook never fires cannot be streamed."""
    order = unit_order(name, module) if order is None else order
    if order is None:
        return part
    rank = {path: i for i, path in enumerate(order)}
    units = sorted(part.units, key=lambda u: rank.get(u.path, -1))
    return replace(part, units=tuple(units))
