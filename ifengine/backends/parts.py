"""Networks (``backends.base.Network``: ONNX Runtime or TensorRT) with the torch parts' call signatures.

Every call goes through ``base.call`` (prepare -> copy into static inputs -> enqueue), so the stage
loops and the GPU runner drive a torch module, an ORT session and a TensorRT context alike. Each part
states its capture rule: its network's (``Capture.NEVER`` for ORT, ``AFTER_WARMUP`` for TensorRT).
Outputs the caller keeps (text embeddings, decoded images) are cloned out of the static buffers; U-Net
outputs are consumed inside the step at once and are returned as views.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..export.manifest import ArtifactError
from ..export.step_graphs import pack_ddim, pack_ddpm
from ..models.config import UNetConfig, VAEConfig
from ..stage.steps import if_step, x4_step
from ..facts import UNET_OF
from ..text.encoder import PromptEncoder
from ..facts import TEXT_TOKENS
from ..stage.seam import Capturable, Capture
from .base import Network, call


def _per_sample(value, batch: int) -> torch.Tensor:
    """A scalar, 0-d or (B,) value as a (B,) tensor (the U-Nets accept all three)."""
    value = value if torch.is_tensor(value) else torch.tensor(value)
    return value.reshape(-1).expand(batch)


def _single(network: Network, feeds) -> torch.Tensor:
    (out,) = call(network, feeds).values()
    return out


class _Part(Capturable):
    network: Network

    @property
    def capture(self) -> Capture:
        return self.network.capture


class NetworkUNet(_Part):
    """``unet(sample, timestep, encoder_hidden_states, class_labels)`` on an exported U-Net."""

    def __init__(self, network: Network, config: UNetConfig):
        self.network, self.config = network, config
        self.takes_labels = "class_labels" in network.spec.input_names

    def __call__(self, sample, timestep, encoder_hidden_states, class_labels=None) -> torch.Tensor:
        batch = sample.shape[0]
        feeds = {
            "sample": sample,
            "timestep": _per_sample(timestep, batch),
            "encoder_hidden_states": encoder_hidden_states,
        }
        if self.takes_labels:
            if class_labels is None:
                raise ValueError(f"{self.network.name} needs class_labels (the noise level)")
            feeds["class_labels"] = _per_sample(class_labels, batch)
        return _single(self.network, feeds).to(sample.dtype)


class UNetStub(Capturable):
    """Stands for a U-Net exported only as a step graph: has the config, cannot be called."""

    def __init__(self, config: UNetConfig, stage: int):
        self.config, self.stage = config, stage

    @property
    def capture(self) -> Capture:
        return Capture.ALWAYS  # never called: it constrains nothing

    def __call__(self, *args, **kwargs):
        name = UNET_OF[self.stage]
        raise ArtifactError(
            f"only the step graph of stage {self.stage} was exported; runs without guidance "
            f"(guidance <= 1) or with editing masks need the bare U-Net: export {name} too"
        )


class NetworkVAE(_Part):
    """``vae.decode(latents)``; the graph divides by scaling_factor itself."""

    def __init__(self, network: Network, config: VAEConfig):
        self.network, self.config = network, config

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return _single(self.network, {"latents": latents}).clone()  # the caller keeps the image


class NetworkTextModel(_Part):
    """``model(ids, attention_mask=mask)[0]`` as a transformers text encoder answers it."""

    def __init__(self, network: Network):
        self.network = network

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        feeds = {"input_ids": input_ids}
        if "attention_mask" in self.network.spec.input_names:
            feeds["attention_mask"] = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        return (_single(self.network, feeds).clone(),)  # embeddings are cached by the encoder


class NetworkPromptEncoder(PromptEncoder):
    """PromptEncoder over a network text model: the device is the network's."""

    @classmethod
    def from_network(
        cls, model: NetworkTextModel, tokenizer_dir: Path, kind: str, out_dtype: torch.dtype, use_mask: bool
    ) -> NetworkPromptEncoder:
        from transformers import AutoTokenizer, CLIPTokenizer

        tokenizer = (CLIPTokenizer if kind == "clip" else AutoTokenizer).from_pretrained(tokenizer_dir)
        length = tokenizer.model_max_length if kind == "clip" else TEXT_TOKENS
        return cls(tokenizer, model, out_dtype=out_dtype, use_mask=use_mask, max_length=length)

    @property
    def device(self) -> torch.device:
        return self.model.network.device


class _Schedule:
    """The run's packed schedule table. Uncapturable networks pack once per tables object (one run);
    capturable ones pack inside every step, so a captured step reads the run's tables, not a stale copy."""

    def __init__(self, pack, capture: Capture):
        self.pack, self.per_step = pack, capture is not Capture.NEVER
        self.tables, self.packed = None, None

    def __call__(self, tables) -> torch.Tensor:
        if self.per_step:
            return self.pack(tables)
        if self.tables is not tables:
            self.tables, self.packed = tables, self.pack(tables)
        return self.packed


class _StepPart(_Part):
    """A step network as a ``stage.seam.Step``: the network is the only implementation (no eager twin)."""

    eager_equivalent = None

    def weights_changed(self) -> None:
        self.network.weights_changed()


class NetworkIFStep(_StepPart):
    """``if_step`` replacement: one step-network call per guided step; other steps take the torch step."""

    def __init__(self, network: Network, stage: int):
        self.network, self.stage = network, stage
        self.schedule = _Schedule(pack_ddpm, network.capture)

    def __call__(
        self, unet, tables, i, x, embeds, noise, guidance, cfg, upscaled=None, noise_level=None, mask=None, mixer=None
    ) -> torch.Tensor:
        if not cfg or mask is not None or mixer is not None:
            extra = dict(upscaled=upscaled, noise_level=noise_level, mask=mask, mixer=mixer)
            return if_step(unet, tables, i, x, embeds, noise, guidance, cfg, **extra)
        feeds = {
            "sample": x,
            "step": i.reshape(1),
            "schedule": self.schedule(tables),
            "text_embeds": embeds,
            "noise": noise,
            "guidance": guidance.reshape(1),
        }
        if self.stage == 2:
            feeds |= {"upscaled": upscaled, "noise_level": noise_level}
        return _single(self.network, feeds).to(x.dtype, copy=True)  # the loop keeps x past the next call


class NetworkX4Step(_StepPart):
    """``x4_step`` replacement: one step-network call per guided step."""

    def __init__(self, network: Network):
        self.network, self.schedule = network, _Schedule(pack_ddim, network.capture)

    def __call__(self, unet, tables, i, latents, image, embeds, noise_level, guidance, cfg) -> torch.Tensor:
        if not cfg:
            return x4_step(unet, tables, i, latents, image, embeds, noise_level, guidance, cfg)
        feeds = {
            "sample": latents,
            "step": i.reshape(1),
            "schedule": self.schedule(tables),
            "image": image,
            "text_embeds": embeds,
            "noise_level": noise_level,
            "guidance": guidance.reshape(1),
        }
        return _single(self.network, feeds).to(latents.dtype, copy=True)
