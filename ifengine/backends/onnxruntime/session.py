"""One exported graph on ONNX Runtime: the artifact (manifest checked: version, files, hashes) and its session.

``OrtGraph`` opens an ORT session on the given providers and reads named dims off input shapes, checked
against the artifact's I/O spec, so a wrong size fails with the dim named. Running it goes through
``network.OrtNetwork`` (IO binding to static torch buffers, no numpy copies; on CUDA providers the
tensors stay on the GPU); ``graph(**inputs)`` is the one-off convenience form of that.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import torch

from ...errors import IFEngineError
from ...export.artifacts import HASH_CACHE
from ...export.hashing import HashCache
from ...export.manifest import ArtifactError, check_files, check_version, read_manifest
from ...export.spec import ComponentSpec, SpecError
from ...export.verify import session_options
from ...installed import ORT_FIX, ort_conflict
from ..base import call

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def provider_names(providers: Sequence[Any]) -> list[str]:
    return [p[0] if isinstance(p, (tuple, list)) else p for p in providers]


def binding_device(providers: Sequence[Any]) -> torch.device:
    """Where bound tensors live: the GPU for CUDA/TensorRT providers, else the CPU."""
    names = provider_names(providers)
    if any(n in GPU_PROVIDERS for n in names):
        for p in providers:
            if isinstance(p, (tuple, list)) and "device_id" in p[1]:
                return torch.device("cuda", int(p[1]["device_id"]))
        return torch.device("cuda", 0)
    return torch.device("cpu")


class ProviderError(IFEngineError, ValueError):
    """Requested ONNX Runtime providers or devices that this machine does not have."""


def check_providers(providers: Sequence[Any]) -> None:
    """Every requested provider exists in this ONNX Runtime, and a GPU provider's device in torch (bound
    tensors live there): refused with what is available, before any graph is opened. Unchecked, ORT warns,
    falls back to the CPU, and binding to a CUDA tensor fails later with a traceback."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    missing = [n for n in provider_names(providers) if n not in available]
    if missing:
        raise ProviderError(
            f"ONNX Runtime {ort.__version__} here has no {', '.join(missing)}; available: {', '.join(available)}"
            f"{_gpu_hint(missing)}"
        )
    device = binding_device(providers)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if device.index >= count:
            where = f"{count} CUDA device(s)" if count else "no CUDA device (torch.cuda.is_available() is False)"
            raise ProviderError(
                f"the {'/'.join(n for n in provider_names(providers) if n in GPU_PROVIDERS)} provider is asked to "
                f"run on cuda:{device.index}, but torch sees {where}; use --providers cpu, or a CUDA build of torch"
            )


def _gpu_hint(missing: list[str]) -> str:
    if not any(n in GPU_PROVIDERS for n in missing):
        return ""

    conflict = ort_conflict()
    if conflict:
        return f" ({conflict})"
    return f". The CUDA and TensorRT providers come with onnxruntime-gpu, alone: `{ORT_FIX}` (or the gpu extra)"


class OrtGraph:
    """An artifact's graph: ``graph(**inputs)`` -> its single output as a torch tensor."""

    def __init__(self, manifest_path: Path, providers: Sequence[Any] = (CPU,), verify: str = "hash"):
        check_providers(providers)
        self.manifest_path = Path(manifest_path)
        self.manifest = load_manifest(self.manifest_path, verify)
        self.spec = ComponentSpec.from_dict(self.manifest["spec"])
        self.config = self.manifest["config"]
        self.name = self.manifest["component"]
        self.device = binding_device(providers)
        self.session = _session(self.manifest_path.parent / self.manifest["graph"], providers, self.manifest)
        self._network = None

    def dims_of(self, inputs: dict[str, torch.Tensor]) -> dict[str, int]:
        """Named dims read off the inputs' shapes, checked for agreement and against the spec's ranges."""
        return self.dims_of_shapes({n: tuple(v.shape) for n, v in inputs.items()})

    def dims_of_shapes(self, shapes) -> dict[str, int]:
        missing = [n for n in self.spec.input_names if n not in shapes]
        if missing:
            raise SpecError(f"{self.name}: missing inputs {missing}")
        dims: dict[str, int] = {}
        for t in self.spec.inputs:
            shape = tuple(shapes[t.name])
            if len(shape) != len(t.dims):
                raise SpecError(f"{self.name}: {t.name} has shape {shape}, the graph takes dims {t.dims}")
            for size, dim in zip(shape, t.dims, strict=True):
                fixed = isinstance(dim, int)
                if (size != dim) if fixed else (dims.setdefault(dim, size) != size):
                    raise SpecError(
                        f"{self.name}: {t.name} has shape {shape}, inconsistent with dims {t.dims} "
                        f"(other inputs give {dims})"
                    )
        named = {k: v for k, v in dims.items() if k in self.spec.ranges}
        self.spec.check_dims(self.spec.complete(named))
        return named

    def __call__(self, **inputs: torch.Tensor) -> torch.Tensor:
        """One call, outside any runner: through this graph's ``OrtNetwork`` (static buffers), copied out."""
        from .network import OrtNetwork  # imported here: network.py imports this module

        if self._network is None:
            self._network = OrtNetwork(self)
        (out,) = call(self._network, inputs).values()
        return out.clone()


VERIFY = ("hash", "size", "full")


def load_manifest(path: Path, verify: str = "hash") -> dict[str, Any]:
    """The manifest, checked for this ifengine version and its files: ``verify`` "hash" (the default)
    compares every file's sha256 with the manifest, remembering digests by size and mtime in the artifacts
    folder's hash cache so an unchanged graph is hashed once; "full" re-hashes regardless; "size" only
    compares sizes."""
    if verify not in VERIFY:
        raise ValueError(f"verify must be one of {', '.join(VERIFY)}, got {verify!r}")
    path = Path(path)
    manifest = read_manifest(path)
    check_version(manifest, path)
    hashes = _hash_cache(path) if verify == "hash" else None
    check_files(manifest, path.parent, full=verify == "full", hashes=hashes)
    if hashes is not None:
        hashes.save_if_possible()
    return manifest


def _hash_cache(manifest_path: Path) -> HashCache:
    # ARTIFACTS/<component>/<precision>/manifest.json: the exporter's cache lives in ARTIFACTS/
    root = manifest_path.resolve().parent.parent.parent
    return HashCache(root / HASH_CACHE)


def _session(graph: Path, providers: Sequence[Any], manifest: dict[str, Any]):
    import onnxruntime as ort

    if manifest["precision"] == "bf16" and all(n == CPU for n in provider_names(providers)):
        raise ArtifactError(
            f"{graph} is a bf16 graph: ONNX Runtime's CPU provider has no bf16 kernels. Use the "
            "CUDA or TensorRT provider, or fp32/fp16/int8 artifacts on the CPU."
        )
    try:
        return ort.InferenceSession(str(graph), session_options(), providers=list(providers))
    except Exception as err:  # ORT raises its own exception types; all mean the graph cannot be loaded
        raise ArtifactError(
            f"ONNX Runtime cannot load {graph} ({type(err).__name__}: {err}); export the artifact again"
        ) from err
