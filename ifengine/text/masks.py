"""T5's attention mask prepared on the host, so that encoding never reads a device tensor back.

Inside the model, transformers turns the 2-D padding mask into the 4-D mask its attention takes, and for
SDPA it first asks whether any token is masked at all: ``padding_mask.all()`` on the device, a host
synchronisation in every encoder run. Running the same library function here on the host tensors gives
the identical mask (its form follows the model's attention implementation), and a model handed a 4-D
mask uses it as prepared and skips the check. Anything unexpected falls back to the 2-D mask, with a
warning (once per cause): that path costs a device-side ``.all()`` and a host sync in every encoder run,
which a transformers release that renamed the function would otherwise bring in silently. The GPU check
records ``host_mask_status`` for the transformers it runs with.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)
BIDIRECTIONAL_ENCODERS = ("t5", "mt5", "umt5")  # encoder-only use: every token sees every unmasked token
_warned: set[str] = set()


def host_attention_mask(model: nn.Module, mask: torch.Tensor) -> torch.Tensor | None:
    """The attention mask to pass ``model`` for the host 2-D ``mask``: 4-D and prepared where we can,
    None where nothing is masked, else ``mask`` itself."""
    config = getattr(model, "config", None)
    if not isinstance(model, nn.Module) or getattr(config, "model_type", None) not in BIDIRECTIONAL_ENCODERS:
        return mask
    try:
        from transformers.masking_utils import create_bidirectional_mask

        floating = next(p for p in model.parameters() if p.is_floating_point())
        # the function reads only the embeddings' batch, length, dtype and device: a zero-width stand-in
        stand_in = torch.empty((*mask.shape, 0), dtype=floating.dtype)
        return create_bidirectional_mask(config=config, inputs_embeds=stand_in, attention_mask=mask)
    except (ImportError, StopIteration, TypeError, ValueError, KeyError, AttributeError) as err:
        _warn_once(err)
        return mask


def _warn_once(err: Exception) -> None:
    cause = f"{type(err).__name__}: {err}"
    if cause in _warned:
        return
    _warned.add(cause)
    from importlib import metadata

    log.warning(
        "T5's attention mask could not be prepared on the host with transformers %s (%s): passing the 2-D "
        "mask, so every encoder run synchronises with the host (a device-side .all())",
        metadata.version("transformers"),
        cause,
    )


def host_mask_status(model: nn.Module) -> str:
    """'4-D on the host' where this transformers prepares the mask as expected, else why not."""
    mask = torch.tensor([[1, 1, 0, 0]])
    try:
        from transformers.masking_utils import create_bidirectional_mask

        floating = next(p for p in model.parameters() if p.is_floating_point())
        stand_in = torch.empty((*mask.shape, 0), dtype=floating.dtype)
        create_bidirectional_mask(config=model.config, inputs_embeds=stand_in, attention_mask=mask)
    except Exception as err:  # noqa: BLE001 - reported, not raised: this is a diagnosis
        return f"2-D fallback ({type(err).__name__}: {err})"[:300]
    return "4-D on the host"
