"""One exported graph on ONNX Runtime, called with torch tensors through IO binding.

``OrtGraph`` loads an artifact (manifest checked: version, files, sizes), opens an ORT session on the
given providers and binds torch tensors' memory directly as inputs and a preallocated torch tensor as
the output, so no numpy copies are made; on CUDA providers the tensors stay on the GPU. Shapes are
checked against the artifact's I/O spec before each run, so a wrong size fails with the dim named.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import numpy as np
import onnx
import torch

from ...export.manifest import ArtifactError, check_files, check_version, read_manifest
from ...export.spec import ComponentSpec, SpecError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
_ELEMENT = {
    torch.float32: np.float32,
    torch.float16: np.float16,
    torch.int64: np.int64,
    torch.bfloat16: onnx.TensorProto.BFLOAT16,
}
_TORCH = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int64": torch.int64}


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


class OrtGraph:
    """An artifact's graph: ``graph(**inputs)`` -> its single output as a torch tensor."""

    def __init__(self, manifest_path: Path, providers: Sequence[Any] = (CPU,), verify: str = "size"):
        self.manifest_path = Path(manifest_path)
        self.manifest = load_manifest(self.manifest_path, verify)
        self.spec = ComponentSpec.from_dict(self.manifest["spec"])
        self.config = self.manifest["config"]
        self.name = self.manifest["component"]
        self.device = binding_device(providers)
        self.session = _session(self.manifest_path.parent / self.manifest["graph"], providers, self.manifest)

    def dims_of(self, inputs: dict[str, torch.Tensor]) -> dict[str, int]:
        """Named dims read off the inputs' shapes, checked for agreement and against the spec's ranges."""
        dims: dict[str, int] = {}
        for t in self.spec.inputs:
            shape = tuple(inputs[t.name].shape)
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
        missing = [n for n in self.spec.input_names if n not in inputs]
        if missing:
            raise SpecError(f"{self.name}: missing inputs {missing}")
        bound = {t.name: inputs[t.name].to(self.device, _TORCH[t.dtype]).contiguous() for t in self.spec.inputs}
        dims = self.dims_of(bound)
        out_spec = self.spec.outputs[0]
        out = torch.empty(
            self.spec.output_shapes(**dims)[out_spec.name], dtype=_TORCH[out_spec.dtype], device=self.device
        )
        binding = self.session.io_binding()
        for name, tensor in bound.items():
            binding.bind_input(name, *_where(tensor), _ELEMENT[tensor.dtype], tuple(tensor.shape), tensor.data_ptr())
        binding.bind_output(out_spec.name, *_where(out), _ELEMENT[out.dtype], tuple(out.shape), out.data_ptr())
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # ORT runs on its own stream
            binding.synchronize_inputs()
        self.session.run_with_iobinding(binding)
        if self.device.type == "cuda":
            binding.synchronize_outputs()
        return out


def _where(t: torch.Tensor) -> tuple[str, int]:
    return t.device.type, t.device.index or 0


def load_manifest(path: Path, verify: str = "size") -> dict[str, Any]:
    """The manifest, checked for this ifengine version and complete files (``verify``: size or hash)."""
    if verify not in ("size", "hash"):
        raise ValueError(f"verify must be 'size' or 'hash', got {verify!r}")
    manifest = read_manifest(path)
    check_version(manifest, path)
    check_files(manifest, Path(path).parent, full=verify == "hash")
    return manifest


def _session(graph: Path, providers: Sequence[Any], manifest: dict[str, Any]):
    import onnxruntime as ort

    if manifest["precision"] == "bf16" and all(n == CPU for n in provider_names(providers)):
        raise ArtifactError(
            f"{graph} is a bf16 graph: ONNX Runtime's CPU provider has no bf16 kernels. Use the "
            "CUDA or TensorRT provider, or fp32/fp16/int8 artifacts on the CPU."
        )
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(graph), options, providers=list(providers))
    except Exception as err:  # ORT raises its own exception types; all mean the graph cannot be loaded
        raise ArtifactError(
            f"ONNX Runtime cannot load {graph} ({type(err).__name__}: {err}); export the artifact again"
        ) from err
