"""Image metadata other tools read: an A1111-style ``parameters`` text and ifengine's settings as JSON.

PNG readers of the Stable Diffusion world (A1111/Forge "PNG info", civitai, image browsers) look for a
``parameters`` tEXt chunk in this shape::

    <prompt>
    Negative prompt: <negative prompt>
    Steps: 100, CFG scale: 7.0, Seed: 3, Size: 1024x1024, Model hash: 1a2b3c4d5e, Model: DeepFloyd/IF-I-XL-v1.0,
    Scheduler: DDPM, ...

The last line is ``key: value`` pairs separated by ", "; a value holding a comma, colon or newline is
written as a JSON string (A1111's own quoting rule), so the line splits back unambiguously. Stage I's
settings take A1111's standard keys (Steps, CFG scale, Seed, Size, Model hash, Model); stages II and III add
prefixed keys. No ``Sampler`` is written: A1111's samplers (Euler a, DPM++ 2M, DDIM, ...) are k-diffusion
and LDM samplers, none of them IF's DDPM with learned variance, and a reader given an unknown name falls
back to its own default; the scheduler goes under ``Scheduler`` instead. ``Model hash`` is A1111's
(AutoV2): the first 10 hex digits of the sha256 of the stage's U-Net weights file (of the shards' sha256s
joined, for a sharded one). ``LoRA`` lists ``stage:file name:weight``.
ifengine's full settings go, as JSON, under the ``ifengine`` key: that is what ``ifengine info`` prints and
``ifengine generate --from`` re-runs. No ``prompt`` chunk is written: ComfyUI reads that key as a JSON
graph, and plain text there breaks its loader.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any
from ..errors import IFEngineError
from ..export.hashing import sha256_file
from .. import __version__

PARAMETERS_KEY = "parameters"
SETTINGS_KEY = "ifengine"
STAGE_NAMES = ("", "Stage II", "Stage III")
SCHEDULERS = ("DDPM", "DDPM", "DDIM")  # the schedulers of IF-I, IF-II and the x4 upscaler
_HASHES: dict[tuple, str] = {}  # (weights file, size, mtime) -> sha256: each file is hashed once per process


class MetadataError(IFEngineError, ValueError):
    """An image without ifengine or A1111 metadata, or one that cannot be read."""


def run_facts(pipe, last_stage: int) -> dict[str, Any]:
    """What a run's settings record about the cascade: model sources and active LoRA adapters."""
    sources = pipe.sources
    facts: dict[str, Any] = {
        "models": [sources.get(n) for n in range(1, last_stage + 1)],
        "model_hashes": [model_hash(sources.get(n)) for n in range(1, last_stage + 1)],
        "dtype": str(pipe.dtype).removeprefix("torch."),
    }
    lora = [
        {"stage": n, "name": name, "weight": w, "source": a.sources.get(name, ""), "file": a.files.get(name, "")}
        for n, a in sorted(getattr(pipe, "_lora_state", {}).items())
        if n <= last_stage
        for name, w in a.weights().items()
    ]
    if lora:
        facts["lora"] = lora
    return facts


def image_settings(settings: dict, index: int) -> dict:
    """The settings of image ``index`` of a run: the run's settings plus which image it is."""

    return {**settings, "image_index": index, "ifengine_version": __version__}


def parameters_text(settings: dict, index: int = 0) -> str:
    """The A1111 ``parameters`` text of image ``index`` of a run."""
    prompts = settings.get("prompt") or [""]
    negatives = settings.get("negative_prompt") or [""]
    per_prompt = max(1, int(settings.get("num_images_per_prompt", 1)))
    which = min(index // per_prompt, len(prompts) - 1)
    lines = [prompts[which]]
    negative = negatives[min(which, len(negatives) - 1)] if isinstance(negatives, list) else negatives
    if negative:
        lines.append(f"Negative prompt: {negative}")
    lines.append(", ".join(f"{k}: {quote(v)}" for k, v in _pairs(settings)))
    return "\n".join(lines)


def _pairs(settings: dict) -> list[tuple[str, Any]]:
    stages = settings.get("stages") or []
    models = settings.get("models") or []
    pairs: list[tuple[str, Any]] = []
    if not stages:  # generate_many's settings: the values as given
        first = lambda v: v[0] if isinstance(v, (list, tuple)) else v  # noqa: E731
        pairs += [("Steps", first(settings.get("steps"))), ("Scheduler", SCHEDULERS[0])]
        pairs += [("CFG scale", first(settings.get("guidance"))), ("Seed", settings.get("seed"))]
    for number, opts in enumerate(stages, start=1):
        prefix = STAGE_NAMES[number - 1]
        key = lambda name: f"{prefix} {name.lower()}" if prefix else name  # noqa: E731, B023
        pairs += [(key("Steps"), opts.get("steps")), (key("Scheduler"), SCHEDULERS[number - 1])]
        pairs.append((key("CFG scale"), opts.get("guidance")))
        if number == 1:
            pairs.append(("Seed", settings.get("seed")))
        if number == 1 and "height" in settings:
            pairs.append(("Size", _size(settings)))
        if isinstance(opts.get("timesteps"), str):
            pairs.append((key("Timesteps"), opts["timesteps"]))
        if opts.get("noise_level") is not None:
            pairs.append((key("Noise level"), opts["noise_level"]))
        hashes = settings.get("model_hashes") or []
        if number <= len(hashes) and hashes[number - 1]:
            pairs.append((key("Model hash"), hashes[number - 1]))
        if number <= len(models) and models[number - 1]:
            pairs.append((key("Model"), _model_name(models[number - 1])))
    if settings.get("strength"):
        pairs.append(("Denoising strength", settings["strength"][0]))
    if settings.get("lora"):
        pairs.append(("LoRA", ", ".join(f"{a['stage']}:{_lora_name(a)}:{a['weight']:g}" for a in settings["lora"])))

    pairs.append(("Version", f"ifengine {__version__}"))
    return [(k, v) for k, v in pairs if v is not None]


def _lora_name(entry: dict) -> str:
    """The LoRA's file name (what LoRA browsers match); the adapter name for a state dict."""
    return entry.get("file") or entry["name"]


def model_hash(source: str | None) -> str | None:
    """A1111's "Model hash" of a checkpoint's U-Net weights; None when they are not found locally
    (exported graphs, engines, a Hub id not in the local Hub cache)."""
    files = _unet_files(source) if source else []
    if not files:
        return None
    digests = [_sha256(f) for f in files]
    joined = digests[0] if len(digests) == 1 else hashlib.sha256("".join(digests).encode()).hexdigest()
    return joined[:10]


def _unet_files(source: str) -> list[Path]:
    root = Path(source)
    if not root.is_dir() and source.count("/") == 1 and not source.startswith((".", "/", "~")):
        try:  # a Hub id: its snapshot in the local cache, never a download
            from huggingface_hub import snapshot_download

            root = Path(snapshot_download(source, local_files_only=True))
        except Exception:  # noqa: BLE001 - any failure only means no hash is written
            return []
    files = sorted((root / "unet").glob("*.safetensors"))
    plain = [f for f in files if re.fullmatch(r"diffusion_pytorch_model(-\d+-of-\d+)?\.safetensors", f.name)]
    return plain or files  # the non-variant weights when present (what loads without --variant)


def _sha256(path: Path) -> str:
    real = path.resolve()
    if re.fullmatch(r"[0-9a-f]{64}", real.name):  # the Hub cache names each LFS blob by its sha256
        return real.name
    stat = real.stat()
    key = (str(real), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(real)
    return _HASHES[key]


def _size(settings: dict) -> str:
    """The final image's WxH: stage I's size times 4 per super-resolution stage."""
    factor = 4 ** (len(settings.get("stages") or [1]) - 1)
    return f"{settings['width'] * factor}x{settings['height'] * factor}"


def _model_name(source: str) -> str:
    """A Hub id as given; a local folder by its name (A1111's Model is a checkpoint name, not a path)."""
    path = Path(source)
    return source if not path.is_absolute() and source.count("/") == 1 else path.name


def quote(value: Any) -> str:
    """A1111's rule: text with a comma, colon or newline becomes a JSON string."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def read_image(path: str | Path) -> tuple[str | None, dict | None]:
    """(parameters text, ifengine settings) of a PNG; MetadataError when it has neither."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            text = dict(getattr(img, "text", {}) or {})
    except OSError as err:
        raise MetadataError(f"cannot read {path}: {err}") from err
    raw = text.get(SETTINGS_KEY)
    try:
        settings = json.loads(raw) if raw else None
    except json.JSONDecodeError as err:
        raise MetadataError(f"{path}: the {SETTINGS_KEY!r} metadata is not JSON ({err})") from err
    parameters = text.get(PARAMETERS_KEY)
    if settings is None and parameters is None:
        raise MetadataError(f"{path} carries no generation settings (no {PARAMETERS_KEY!r} or {SETTINGS_KEY!r} text)")
    return parameters, settings
