"""ORT-backed stand-ins for the cascade's torch parts, with the call signatures the stage runners use."""

from __future__ import annotations

from pathlib import Path

import torch

from ...export.manifest import ArtifactError
from ...export.step_graphs import pack_ddim, pack_ddpm
from ...models.config import UNetConfig, VAEConfig
from ...pipeline.steps import if_step, x4_step
from ...text.encoder import PromptEncoder
from .session import OrtGraph


def _per_sample(value, batch: int) -> torch.Tensor:
    """A scalar, 0-d or (B,) value as a (B,) tensor (the U-Nets accept all three)."""
    value = value if torch.is_tensor(value) else torch.tensor(value)
    return value.reshape(-1).expand(batch)


class OrtUNet:
    """``unet(sample, timestep, encoder_hidden_states, class_labels)`` on an exported U-Net graph."""

    def __init__(self, graph: OrtGraph, config: UNetConfig):
        self.graph, self.config = graph, config
        self.takes_labels = "class_labels" in graph.spec.input_names

    def __call__(self, sample, timestep, encoder_hidden_states, class_labels=None) -> torch.Tensor:
        batch = sample.shape[0]
        inputs = {
            "sample": sample,
            "timestep": _per_sample(timestep, batch),
            "encoder_hidden_states": encoder_hidden_states,
        }
        if self.takes_labels:
            if class_labels is None:
                raise ValueError(f"{self.graph.name} needs class_labels (the noise level)")
            inputs["class_labels"] = _per_sample(class_labels, batch)
        return self.graph(**inputs).to(sample.dtype)


class UNetStub:
    """Stands for a U-Net exported only as a step graph: has the config, cannot be called."""

    def __init__(self, config: UNetConfig, stage: int):
        self.config, self.stage = config, stage

    def __call__(self, *args, **kwargs):
        name = "x4_unet" if self.stage == 3 else f"unet{self.stage}"
        raise ArtifactError(
            f"only the step graph of stage {self.stage} was exported; runs without guidance "
            f"(guidance <= 1) or with editing masks need the bare U-Net: export {name} too"
        )


class OrtVAE:
    """``vae.decode(latents)``; the graph divides by scaling_factor itself."""

    def __init__(self, graph: OrtGraph, config: VAEConfig):
        self.graph, self.config = graph, config

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.graph(latents=latents)


class OrtTextModel:
    """``model(ids, attention_mask=mask)[0]`` as a transformers text encoder answers it."""

    def __init__(self, graph: OrtGraph):
        self.graph = graph

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        inputs = {"input_ids": input_ids}
        if "attention_mask" in self.graph.spec.input_names:
            inputs["attention_mask"] = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        return (self.graph(**inputs),)


class OrtPromptEncoder(PromptEncoder):
    """PromptEncoder over an ORT text model: the device is the graph's binding device."""

    @classmethod
    def from_graph(
        cls, model: OrtTextModel, tokenizer_dir: Path, kind: str, out_dtype: torch.dtype, use_mask: bool
    ) -> OrtPromptEncoder:
        from transformers import AutoTokenizer, CLIPTokenizer

        tokenizer = (CLIPTokenizer if kind == "clip" else AutoTokenizer).from_pretrained(tokenizer_dir)
        length = tokenizer.model_max_length if kind == "clip" else 77
        return cls(tokenizer, model, out_dtype=out_dtype, use_mask=use_mask, max_length=length)

    @property
    def device(self) -> torch.device:
        return self.model.graph.device


class _Schedule:
    """The run's packed schedule table, packed once per tables object (one run)."""

    def __init__(self, pack):
        self.pack, self.tables, self.packed = pack, None, None

    def __call__(self, tables) -> torch.Tensor:
        if self.tables is not tables:
            self.tables, self.packed = tables, self.pack(tables)
        return self.packed


class OrtIFStep:
    """``if_step`` replacement: one step-graph call per guided step; other steps take the torch step."""

    def __init__(self, graph: OrtGraph, stage: int):
        self.graph, self.stage, self.schedule = graph, stage, _Schedule(pack_ddpm)

    def __call__(
        self, unet, tables, i, x, embeds, noise, guidance, cfg, upscaled=None, noise_level=None, mask=None, mixer=None
    ) -> torch.Tensor:
        if not cfg or mask is not None or mixer is not None:
            return if_step(
                unet,
                tables,
                i,
                x,
                embeds,
                noise,
                guidance,
                cfg,
                upscaled=upscaled,
                noise_level=noise_level,
                mask=mask,
                mixer=mixer,
            )
        inputs = {
            "sample": x,
            "step": i.reshape(1),
            "schedule": self.schedule(tables),
            "text_embeds": embeds,
            "noise": noise,
            "guidance": guidance.reshape(1),
        }
        if self.stage == 2:
            inputs |= {"upscaled": upscaled, "noise_level": noise_level}
        return self.graph(**inputs).to(x.dtype)


class OrtX4Step:
    """``x4_step`` replacement: one step-graph call per guided step."""

    def __init__(self, graph: OrtGraph):
        self.graph, self.schedule = graph, _Schedule(pack_ddim)

    def __call__(self, unet, tables, i, latents, image, embeds, noise_level, guidance, cfg) -> torch.Tensor:
        if not cfg:
            return x4_step(unet, tables, i, latents, image, embeds, noise_level, guidance, cfg)
        inputs = {
            "sample": latents,
            "step": i.reshape(1),
            "schedule": self.schedule(tables),
            "image": image,
            "text_embeds": embeds,
            "noise_level": noise_level,
            "guidance": guidance.reshape(1),
        }
        return self.graph(**inputs).to(latents.dtype)
