"""Which optional packages are installed, read from their distribution metadata without importing them.

``onnxruntime`` and ``onnxruntime-gpu`` install the same ``onnxruntime`` module; with both present the
files of whichever was installed last win and the CUDA/TensorRT providers may vanish. pip cannot keep
them apart (extras cannot exclude each other), so ifengine says so where it matters.
"""

from __future__ import annotations

from importlib import metadata

ORT_PACKAGES = ("onnxruntime", "onnxruntime-gpu")
ORT_FIX = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"


def version_of(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def ort_conflict() -> str | None:
    """A warning when both ONNX Runtime packages are installed, else None."""
    versions = {name: version_of(name) for name in ORT_PACKAGES}
    if not all(versions.values()):
        return None
    both = " and ".join(f"{n} {v}" for n, v in versions.items())
    return (
        f"{both} are both installed: they share the `onnxruntime` module and the CPU build hides the CUDA "
        f"and TensorRT providers. Keep one (GPU machine: `{ORT_FIX}`; CPU machine: uninstall onnxruntime-gpu)"
    )


# distribution names of what the extras install (pyproject.toml), reported by `ifengine info --system`
REPORTED = (
    "ifengine",
    "torch",
    "transformers",
    "tokenizers",
    "sentencepiece",
    "protobuf",
    "safetensors",
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "tensorrt",
    "ray",
    "diffusers",
    "ftfy",
    "beautifulsoup4",
)


def system_report() -> dict:
    """Versions (None: not installed), ONNX Runtime's providers and the CUDA devices torch sees."""
    report: dict = {name: version_of(name) for name in REPORTED}
    report["onnxruntime_providers"] = _ort_providers()
    report["cuda_devices"] = _cuda_devices()
    return report


def _ort_providers() -> list[str] | None:
    if not any(version_of(n) for n in ORT_PACKAGES):
        return None
    import onnxruntime  # imported only to list providers; installed, per the metadata above

    return list(onnxruntime.get_available_providers())


def _cuda_devices() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
