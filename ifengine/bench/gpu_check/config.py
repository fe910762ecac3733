"""What one GPU check runs: presets, steps, sizes and the time budget, as JSON-safe frozen data.

The parent process never imports torch for this (it only starts children), so the config holds strings
and numbers; ``common.dtype_of`` turns ``device`` into the dtype inside a section.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

# stage I, II, III presets of the cascade, and the U-Nets the step-time section times one by one
PRESETS = {
    "full": {"cascade": ("IF-I-XL", "IF-II-L", "x4"), "unets": ("IF-I-M", "IF-I-XL", "IF-II-L", "x4-upscaler")},
    "tiny": {"cascade": ("tiny-I", "tiny-II", "tiny-x4"), "unets": ("tiny-I", "tiny-II", "tiny-x4")},
}
PROMPTS = ("a photograph of a red cat sitting on a wooden table", "an oil painting of a lighthouse at dusk")


@dataclass(frozen=True)
class CheckConfig:
    device: str = "cuda"
    preset: str = "full"
    steps: tuple[int, int, int] = (4, 3, 3)  # few steps: graphs, peaks and per-step times do not need more
    batches: tuple[int, ...] = (1, 4)
    repeats: int = 5
    budget: str = "8GiB"
    budget_weights: str = "native"  # "native" exercises weight streaming; "auto" would quantise on the CPU
    prompts: int = 4
    size: int | None = None  # stage I height = width; None: the model's own (64 -> 1024 for the full cascade)
    seconds: float = 480.0  # the whole check: each section is killed at its share (see registry.py)

    def __post_init__(self) -> None:
        if self.device not in ("cuda", "cpu"):
            raise ValueError(f"device must be 'cuda' or 'cpu', got {self.device!r}")
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        if self.seconds <= 0 or self.repeats < 1 or self.prompts < 1:
            raise ValueError("seconds must be > 0, repeats >= 1 and prompts >= 1")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CheckConfig:
        data = json.loads(text)
        tuples = {f.name for f in fields(cls) if str(f.type).startswith("tuple")}
        return cls(**{k: tuple(v) if k in tuples else v for k, v in data.items()})


def quick_config(device: str = "cuda", preset: str = "full", **overrides) -> CheckConfig:
    """The budgeted run (``--quick``); the tiny preset shrinks everything to seconds on a CPU."""
    fields_ = dict(device=device, preset=preset)
    if preset == "tiny":
        fields_.update(steps=(1, 1, 1), batches=(1,), repeats=1, prompts=1, size=8)
    return CheckConfig(**{**fields_, **overrides})
