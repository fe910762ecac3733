"""Read the LoRA files diffusers and peft write for IF U-Nets into one form: module name -> (down, up, scale).

Accepted key styles (after an optional ``unet.`` prefix), all naming diffusers' U-Net modules, which our
U-Nets use key for key:
- peft / current diffusers: ``<module>.lora_A.weight`` and ``<module>.lora_B.weight`` (``lora_A.<adapter>.
  weight`` too, as ``get_peft_model_state_dict`` leaves it when asked to keep adapter names);
- older diffusers: ``<module>.lora.down.weight`` / ``.lora.up.weight``, and the attention-processor form of
  the first IF DreamBooth-LoRA scripts, ``<attn>.processor.to_q_lora.down.weight`` (to_k/to_v/to_out and the
  added-KV ``add_k_proj``/``add_v_proj`` projections);
- network alphas: ``<module>.alpha``; diffusers' ``lora_adapter_metadata`` (lora_alpha, alpha_pattern).
The scale of a layer is alpha / rank, alpha defaulting to the rank as in diffusers/peft (scale 1).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Mapping

import torch
from ..errors import IFEngineError

WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes
METADATA_KEY = "lora_adapter_metadata"
UNET_PREFIX = "unet."
# old attention-processor names -> module paths (diffusers' UNET_TO_DIFFUSERS, plus IF's added-KV projections)
OLD_NAMES = (
    (".processor.", "."),
    (".to_out_lora.", ".to_out.0.lora."),
    (".to_q_lora.", ".to_q.lora."),
    (".to_k_lora.", ".to_k.lora."),
    (".to_v_lora.", ".to_v.lora."),
    (".add_k_proj_lora.", ".add_k_proj.lora."),
    (".add_v_proj_lora.", ".add_v_proj.lora."),
    (".lora.down.", ".lora_A."),
    (".lora.up.", ".lora_B."),
)
KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A|lora_B)(?:\.[^.]+)?\.weight$")


class LoraFormatError(IFEngineError, ValueError):
    """A LoRA file this loader cannot read; the message names the keys and what is accepted."""


@dataclass(frozen=True)
class LoraLayer:
    """One adapted weight: W + scale * up @ down (convolutions: the same per kernel tap)."""

    down: torch.Tensor  # lora_A: (rank, in) or (rank, in, kh, kw)
    up: torch.Tensor  # lora_B: (out, rank) or (out, rank, 1, 1)
    scale: float = 1.0

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def delta(self) -> torch.Tensor:
        """The weight update in float32, shaped like the adapted weight."""
        down, up = self.down.float(), self.up.float()
        if down.dim() == 2:
            return self.scale * (up @ down)
        return self.scale * torch.einsum("or,rikl->oikl", up.flatten(1), down)


def read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The tensors of a LoRA safetensors file and its diffusers adapter metadata (None when absent);
    LoraFormatError, in one line naming the file, for one that is empty, truncated or no safetensors."""
    from safetensors import SafetensorError, safe_open

    if path.suffix != ".safetensors":
        raise LoraFormatError(f"{path}: only .safetensors LoRA files are read (pickled .bin files can run code)")
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is no dict
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LoraFormatError(f"{path} is not a readable safetensors file ({reason}): damaged or incomplete?") from None
    if not tensors:
        raise LoraFormatError(f"{path} holds no tensors; a LoRA file holds unet.<module>.lora_A/lora_B.weight pairs")
    try:
        metadata = json.loads(raw) if raw else None
    except json.JSONDecodeError as err:
        raise LoraFormatError(f"{path}: its {METADATA_KEY!r} metadata is not JSON ({err})") from None
    if metadata is not None and not isinstance(metadata, dict):
        raise LoraFormatError(f"{path}: its {METADATA_KEY!r} metadata is not a JSON object")
    return tensors, metadata


def parse(state: Mapping[str, torch.Tensor], metadata: dict | None = None) -> dict[str, LoraLayer]:
    """module name -> LoraLayer, or LoraFormatError naming every key that fits no accepted style."""
    others = sorted(k for k in state if k.startswith(("text_encoder.", "text_encoder_2.")))
    if others:
        raise LoraFormatError(
            f"this LoRA also adapts a text encoder ({len(others)} keys, e.g. {others[0]}); ifengine applies "
            "U-Net LoRA only (keys unet.<module>.lora_A/lora_B.weight)"
        )
    parts: dict[str, dict[str, torch.Tensor]] = {}
    alphas: dict[str, float] = {}
    unknown = []
    for key, tensor in state.items():
        name = _normalise(key)
        if name.endswith(".alpha"):
            alphas[name[: -len(".alpha")]] = float(tensor)
            continue
        match = KEY.match(name)
        if match is None:
            unknown.append(key)
            continue
        parts.setdefault(match["module"], {})[match["part"]] = tensor
    if unknown:
        raise LoraFormatError(
            f"{len(unknown)} LoRA keys fit no known style: {', '.join(sorted(unknown)[:5])}"
            f"{' ...' if len(unknown) > 5 else ''}; accepted: unet.<module>.lora_A.weight/lora_B.weight "
            "(peft), unet.<module>.lora.down/up.weight and <attn>.processor.to_q_lora.down.weight (older diffusers)"
        )
    return {module: _layer(module, p, alphas, metadata) for module, p in parts.items()}


def _normalise(key: str) -> str:
    name = key[len(UNET_PREFIX) :] if key.startswith(UNET_PREFIX) else key
    for old, new in OLD_NAMES:
        name = name.replace(old, new)
    return name


def _layer(module: str, parts: dict[str, torch.Tensor], alphas: dict[str, float], metadata) -> LoraLayer:
    if set(parts) != {"lora_A", "lora_B"}:
        have = next(iter(parts))
        raise LoraFormatError(f"LoRA module {module} has {have} but not its pair (lora_A and lora_B both needed)")
    down, up = parts["lora_A"], parts["lora_B"]
    if up.shape[1] != down.shape[0]:
        raise LoraFormatError(
            f"LoRA module {module}: lora_B {tuple(up.shape)} does not multiply lora_A {tuple(down.shape)}"
        )
    alpha = alphas.get(module, _metadata_alpha(module, metadata))
    rank = down.shape[0]
    if alpha is None:
        return LoraLayer(down, up, 1.0)
    rslora = bool(_unet_metadata(metadata).get("use_rslora"))  # peft's rank-stabilised scale alpha / sqrt(r)
    return LoraLayer(down, up, alpha / (rank**0.5 if rslora else rank))


def _metadata_alpha(module: str, metadata: dict | None) -> float | None:
    """peft's rule: an alpha_pattern entry whose key ends the module path, else lora_alpha."""
    meta = _unet_metadata(metadata)
    for pattern, value in (meta.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return float(value)
    alpha = meta.get("lora_alpha")
    return None if alpha is None else float(alpha)


def _unet_metadata(metadata: dict | None) -> dict:
    """diffusers packs each model's LoraConfig under its prefix ("unet.lora_alpha"); peft files do not."""
    if not metadata:
        return {}
    return {k[len(UNET_PREFIX) :]: v for k, v in metadata.items() if k.startswith(UNET_PREFIX)} or metadata
