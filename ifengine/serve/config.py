"""Serving configuration: frozen dataclasses that the CLI, `serve run` builder and the YAML writer share.

Every knob Ray Serve offers per deployment (replicas, GPUs per replica, batching, queue limits) is a field
here and is handed to Ray as is: Ray schedules replicas, batches requests and refuses work past a full
queue; nothing in ifengine re-implements that.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from ..memory.sizes import parse_size
from ..validate import positive_int

from ..pipeline.source import ModelSource

STAGE_NAMES = ("text", "stage1", "stage2", "stage3")
LAYOUTS = ("split", "single")
API_KEY_ENV = "IFENGINE_API_KEY"


@dataclass(frozen=True)
class StageConfig:
    """One deployment: how many replicas, what each reserves, how it batches and how much it queues."""

    replicas: int = 1
    num_gpus: float = 0.0
    num_cpus: float = 0.25  # replicas mostly wait on torch threads; a small reservation packs them on a laptop
    max_batch_size: int = 4
    batch_wait_timeout_s: float = 0.05
    max_ongoing_requests: int = 8  # per replica: at least max_batch_size, or batches never fill
    max_queued_requests: int = 16  # per caller; past it Ray raises BackPressureError -> 503 + Retry-After
    torch_threads: int | None = None  # intra-op threads per replica (None: as Ray's OMP_NUM_THREADS sets)
    # the batch sizes a stage call is padded up to (a CUDA graph is captured per size, so a few fixed sizes
    # keep the captures few); None: powers of two up to max_batch_size on a CUDA-graph runtime, no padding
    # elsewhere; () never pads
    batch_sizes: tuple[int, ...] | None = None
    runtime_mode: str = "latency"  # the GPU runtime's mode on a CUDA replica: "latency" or "throughput"

    def __post_init__(self):
        for name in ("replicas", "max_batch_size", "max_ongoing_requests"):
            positive_int(getattr(self, name), name)
        if self.max_batch_size > self.max_ongoing_requests:
            raise ValueError(
                f"max_batch_size {self.max_batch_size} exceeds max_ongoing_requests {self.max_ongoing_requests}: "
                "a replica only batches the requests it is running; raise max_ongoing_requests"
            )
        if self.max_queued_requests != -1 and self.max_queued_requests < 0:
            raise ValueError(f"max_queued_requests must be >= 0 or -1 (unbounded), got {self.max_queued_requests!r}")
        if self.num_gpus < 0 or self.num_cpus < 0 or self.batch_wait_timeout_s < 0:
            raise ValueError("num_gpus, num_cpus and batch_wait_timeout_s must be >= 0")
        positive_int(self.torch_threads, "torch_threads", none_ok=True)
        if self.batch_sizes is not None:
            sizes = tuple(sorted(set(self.batch_sizes)))
            for size in sizes:
                positive_int(size, "batch_sizes")
            object.__setattr__(self, "batch_sizes", sizes)  # a YAML list becomes the tuple
        if self.runtime_mode not in ("latency", "throughput"):
            raise ValueError(f"runtime_mode must be 'latency' or 'throughput', got {self.runtime_mode!r}")

    def deployment_options(self) -> dict:
        """Keyword arguments of ``Deployment.options``."""
        return dict(
            num_replicas=self.replicas,
            max_ongoing_requests=self.max_ongoing_requests,
            max_queued_requests=self.max_queued_requests,
            ray_actor_options={"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
        )


@dataclass(frozen=True)
class Limits:
    """What one HTTP request may ask for; anything past these is a 4xx naming the field."""

    max_images: int = 10  # `n` (OpenAI's range is 1-10; the memory estimate refuses what cannot fit)
    max_side: int = 1024  # the largest stage I side, in pixels
    max_steps: int = 200
    max_body_bytes: int = 16 * 2**20
    max_image_pixels: int = 4096 * 4096  # an uploaded image over this is refused (decompression bombs)
    max_prompt_chars: int = 4000  # prompt, negative_prompt, positive_prompt (T5 reads 77 tokens of it)
    max_text_chars: int = 256  # every other text field (model, user, size, ...)
    request_memory: int | str | None = None  # bytes ("8GiB") one request may use; None: see serve/budget.py
    request_timeout_s: float = 300.0  # a request still unanswered then gets a 503; none waits forever
    retry_after_s: int = 1

    def __post_init__(self):
        if self.request_memory is not None:
            parse_size(self.request_memory)  # an unreadable size is refused when the config is made


@dataclass(frozen=True)
class ServeConfig:
    layout: str = "split"
    source: ModelSource = ModelSource()
    text: StageConfig = StageConfig()
    stage1: StageConfig = StageConfig()
    stage2: StageConfig = StageConfig()
    stage3: StageConfig = StageConfig()
    single: StageConfig = StageConfig()  # the whole cascade in one deployment (--layout single)
    ingress: StageConfig = StageConfig(num_cpus=0.1, max_ongoing_requests=256, max_queued_requests=256)
    limits: Limits = Limits()
    api_key: str | None = field(default=None, repr=False)
    model_name: str = "ifengine-demo"
    safety: bool = True  # run the checkpoints' safety checker on every final image (when they ship one)
    lora_dir: str | None = None  # LoRA files (<name>.safetensors) a request names in its `model` field
    lora_load_timeout_s: float = 60.0  # a LoRA not loaded (read + merged) within this is a 503

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.lora_load_timeout_s <= 0:
            raise ValueError(f"lora_load_timeout_s must be > 0, got {self.lora_load_timeout_s!r}")

    def with_env_key(self) -> ServeConfig:
        """The API key from the environment when none was given."""
        if self.api_key is None and os.environ.get(API_KEY_ENV):
            return dataclasses.replace(self, api_key=os.environ[API_KEY_ENV])
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> ServeConfig:
        """The inverse of ``to_dict`` (the `serve deploy` file carries it as the builder's args)."""
        known = {f.name for f in dataclasses.fields(cls)}
        if "edits" in raw:  # configs written before edits ran through the stage deployments
            raise ValueError(
                "serve config key 'edits' is gone: edits run through the stage deployments (or 'single') now, "
                "batched with generations; remove it and size those deployments instead"
            )
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown serve config keys {sorted(unknown)}; known: {sorted(known)}")
        kinds = {"source": ModelSource, "limits": Limits}
        out = {}
        for key, value in raw.items():
            kind = kinds.get(key, StageConfig if key in (*STAGE_NAMES, "single", "ingress") else None)
            out[key] = kind(**value) if kind is not None and isinstance(value, dict) else value
        return cls(**out)
