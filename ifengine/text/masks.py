"""T5's attention mask prepared on the host, so that encoding never reads a device tensor back.

Inside the model, transformers turns the 2-D padding mask into the 4-D mask its attention takes, and for
SDPA it first asks whether any token is masked at all: ``padding_mask.all()`` on the device, a host
synchronisation in every encoder run. Running the same library function here on the host tensors gives
the identical mask (its form follows the model's attention implementation), and a model handed a 4-D
mask uses it as prepared and skips the check. Anything unexpected falls back to the 2-D mask.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)
BIDIRECTIONAL_ENCODERS = ("t5", "mt5", "umt5")  # encoder-only use: every token sees every unmasked token


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
        log.debug("preparing the attention mask on the host failed (%s); passing the 2-D mask", err)
        return mask
