"""Find a checkpoint (local folder in the Hub layout, or a Hub id) and tell which cascade stage it is."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import IFEngineError, DamagedFileError, read_json

log = logging.getLogger(__name__)

# model_index.json `_class_name` of each stage's diffusers pipelines (editing variants share weights).
STAGE_PIPELINES = {
    1: ("IFPipeline", "IFImg2ImgPipeline", "IFInpaintingPipeline"),
    2: ("IFSuperResolutionPipeline", "IFImg2ImgSuperResolutionPipeline", "IFInpaintingSuperResolutionPipeline"),
    3: ("StableDiffusionUpscalePipeline",),
}
STAGE_NAMES = {1: "stage I (IF-I-*)", 2: "stage II (IF-II-*)", 3: "stage III (stable-diffusion-x4-upscaler)"}
# Files a run needs; used to keep Hub downloads to what ifengine reads.
_HUB_CONFIGS = ["model_index.json", "*/*.json", "*/*.model", "*/*.txt"]


def _hub_patterns(variant: str | None) -> list[str]:
    # a variant repo holds both precisions; fetch only the one that will be loaded
    weights = [f"*/*.{variant}*.safetensors"] if variant else ["*/*.safetensors"]
    return _HUB_CONFIGS + weights


GATED_HINT = (
    "The DeepFloyd IF weights are gated: open the model page on huggingface.co (e.g. "
    "https://huggingface.co/DeepFloyd/IF-I-XL-v1.0), accept the licence, then log in on this machine with "
    "`hf auth login` (or set HF_TOKEN). Alternatively pass a local folder in the Hub layout."
)


class CheckpointError(IFEngineError, ValueError):
    """A checkpoint path or id cannot be used for the stage it was given for."""


# A checkpoint may carry its own run defaults under this key of model_index.json (diffusers ignores keys
# it does not know): {"steps": 20, "guidance": 7.0, "noise_level": 250, "precision": "fp32"}, any subset.
# They travel with the weights: into exported graphs' manifests, from there into engine manifests.
RUN_DEFAULTS_KEY = "ifengine"
_RUN_DEFAULT_TYPES = {"steps": int, "guidance": (int, float), "noise_level": int, "precision": str}


@dataclass(frozen=True)
class Checkpoint:
    """A resolved checkpoint folder and what it contains."""

    root: Path
    stage: int
    pipeline_class: str
    components: tuple[str, ...]

    def has(self, component: str) -> bool:
        return (self.root / component).is_dir() and component in self.components

    def config(self, component: str, filename: str = "config.json") -> dict:
        path = self.root / component / filename
        if not path.is_file():
            raise CheckpointError(f"{self.root} has no {component}/{filename}")
        raw = read_json(path)
        if not isinstance(raw, dict):
            raise DamagedFileError(path, f"holds a JSON {type(raw).__name__}, not an object")
        return raw

    def parsed(self, cls, component: str, filename: str = "config.json"):
        """``cls.from_dict`` of a config file; entries missing or of the wrong type name the file."""
        try:
            return cls.from_dict(self.config(component, filename))
        except (KeyError, TypeError, AttributeError) as err:
            raise DamagedFileError(self.root / component / filename, f"missing or malformed entry {err}") from None


def resolve(source: str | Path, stage: int, variant: str | None = None) -> Checkpoint:
    """A local folder or Hub id → Checkpoint, checking it is a checkpoint of ``stage``."""
    root = _local_or_download(source, variant)
    index_path = root / "model_index.json"
    if not index_path.is_file():
        raise CheckpointError(
            f"{root} is not a diffusers checkpoint folder (no model_index.json); expected the Hub layout of "
            f"{STAGE_NAMES[stage]}: model_index.json, unet/, scheduler/, ..."
        )
    index = read_json(index_path)
    if not isinstance(index, dict):
        raise DamagedFileError(index_path, "not a JSON object")
    cls = index.get("_class_name", "")
    actual = next((s for s, names in STAGE_PIPELINES.items() if cls in names), None)
    if actual != stage:
        seen = STAGE_NAMES.get(actual, f"a {cls or 'unknown'} pipeline")
        raise CheckpointError(f"{root} holds {seen}, but it was given as {STAGE_NAMES[stage]}")
    components = tuple(k for k, v in index.items() if not k.startswith("_") and _present(v))
    return Checkpoint(root=root, stage=stage, pipeline_class=cls, components=components)


def read_run_defaults(root: str | Path) -> dict:
    """The run defaults a checkpoint folder records (``RUN_DEFAULTS_KEY`` in model_index.json); {} when none."""
    path = Path(root) / "model_index.json"
    index = read_json(path)
    entry = index.get(RUN_DEFAULTS_KEY, {}) if isinstance(index, dict) else {}
    if not isinstance(entry, dict):
        raise DamagedFileError(path, f"its {RUN_DEFAULTS_KEY!r} entry is a {type(entry).__name__}, not an object")
    for key, value in entry.items():
        kind = _RUN_DEFAULT_TYPES.get(key)
        if kind is None or isinstance(value, bool) or not isinstance(value, kind):
            accepted = ", ".join(_RUN_DEFAULT_TYPES)
            raise DamagedFileError(path, f"{RUN_DEFAULTS_KEY}.{key} = {value!r} is not a run default ({accepted})")
    return dict(entry)


def _present(entry) -> bool:
    # model_index.json marks absent components as [null, null]
    return isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[0] is not None


def _local_or_download(source: str | Path, variant: str | None) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve()
    text = str(source)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise CheckpointError(f"{text!r} is neither a checkpoint folder nor a Hub id like 'DeepFloyd/IF-I-XL-v1.0'")
    return _download(text, variant)


def _download(repo_id: str, variant: str | None) -> Path:
    from huggingface_hub import snapshot_download  # imported lazily: only Hub ids need it

    log.info("fetching %s from the Hugging Face Hub", repo_id)
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_hub_patterns(variant)))
    except Exception as err:  # the hub raises many types (gated, offline, 404); all mean the same to a user
        raise CheckpointError(f"could not download {repo_id!r} ({type(err).__name__}: {err}). {GATED_HINT}") from err


def source_name(source) -> str:
    """How image metadata names a checkpoint: a Hub id as given, a local folder by its absolute path."""
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else str(source)
