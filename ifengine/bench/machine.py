"""Describe the machine a benchmark ran on: hardware, driver, library versions, source revision."""

from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from ..memory.sizes import GiB
from ..errors import IFEngineError

log = logging.getLogger(__name__)
_LIBRARIES = ("torch", "diffusers", "transformers", "onnxruntime", "onnxruntime-gpu", "tensorrt", "ifengine")


def describe(device: torch.device | str = "cpu") -> dict:
    """Everything a reader needs to compare two result files, as plain JSON data."""
    device = torch.device(device)
    info = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(device),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": versions(),
        "git": git_revision(),
    }
    if device.type == "cuda":
        info["gpu"] = gpu_info(device)
    return info


def summary_line(info: dict) -> str:
    """One line for tables and charts: GPU (or CPU), driver, torch and CUDA versions."""
    torch_v = info["versions"].get("torch", "?")
    if "gpu" in info:
        gpu = info["gpu"]
        return (
            f"{gpu['name']} ({gpu['memory_gib']:.0f} GiB), driver {gpu.get('driver', '?')}, "
            f"CUDA {gpu.get('cuda', '?')}, torch {torch_v}"
        )
    return f"{info['cpu']} ({info['cpu_cores']} cores, {info['torch_threads']} torch threads), torch {torch_v}"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    found = {}
    for name in _LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def gpu_info(device: torch.device) -> dict:
    props = torch.cuda.get_device_properties(device)
    return {
        "name": props.name,
        "memory_gib": props.total_memory / GiB,
        "capability": f"{props.major}.{props.minor}",
        "multiprocessors": props.multi_processor_count,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "driver": nvidia_driver(),
    }


def nvidia_driver() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def git_revision() -> str | None:
    """The source revision of this checkout (with '-dirty' when it has local changes), if it is one."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists() or not shutil.which("git"):
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


class NoCudaError(IFEngineError, ValueError):
    """A GPU benchmark was asked for on a machine without CUDA (a setup problem the user can act on)."""


def require_cuda(what: str) -> torch.device:
    """The CUDA device, or a clear error naming the CPU alternative."""
    if not torch.cuda.is_available():
        raise NoCudaError(
            f"{what} needs a CUDA GPU and this machine has none (torch {torch.__version__}, "
            f"CUDA build: {torch.version.cuda or 'no'}); pass --device cpu for a CPU smoke run "
            "with --preset tiny"
        )
    return torch.device("cuda")
