"""The machine an Inductor package is compiled for: device kind, CPU model or GPU, and torch version.

An AOTInductor package holds generated C++ (CPU, OpenMP, the host's vector ISA) or Triton/CUDA kernels
(one GPU architecture) linked against one torch build's ABI, so it does not move between torch versions
or devices. ``InductorTarget`` plays the part ``cache.Target`` plays for TensorRT: its ``slug`` names the
cache folder (``inductor-cpu-x86_64-torch2.13.0+cpu``, ``inductor-sm90-nvidia-h100-torch2.11.0+cu128``),
its JSON goes into every manifest, and ``foreign`` says why a recorded one is not this machine's.
"""

from __future__ import annotations

import platform
import re
from dataclasses import asdict, dataclass

COMPILER = "inductor"


@dataclass(frozen=True)
class InductorTarget:
    device: str  # "cpu" or "cuda"
    name: str  # the CPU architecture or the GPU's name
    compute_capability: str  # "8.9" on CUDA, "" on the CPU
    torch: str  # torch.__version__ (the kernels are linked against this build)

    @property
    def slug(self) -> str:
        where = "cpu" if self.device == "cpu" else f"sm{self.compute_capability.replace('.', '')}"
        name = re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")
        return f"{COMPILER}-{where}-{name}-torch{self.torch}"

    def to_json(self) -> dict:
        return {"compiler": COMPILER, **asdict(self)}

    def foreign(self, built: dict) -> str | None:
        """Why a package whose manifest records ``built`` (a target's JSON) cannot run here; None if it can."""
        if built.get("compiler") != COMPILER:
            return f"was built by {built.get('compiler', 'TensorRT')}, not by Inductor"
        for field, what in (("torch", "torch"), ("device", "device"), ("compute_capability", "GPU compute capability")):
            if built.get(field) != getattr(self, field):
                return f"was built for {what} {built.get(field)!r}, this machine has {getattr(self, field)!r}"
        if built.get("name") != self.name:
            return f"was built for {built.get('name')!r}, this machine is {self.name!r}"
        return None


def current_inductor_target(device: str = "cpu") -> InductorTarget:
    """This machine's target for ``device`` ("cpu", "cuda" or "cuda:N")."""
    import torch

    dev = torch.device(device)
    if dev.type == "cpu":
        return InductorTarget("cpu", platform.machine() or "unknown", "", torch.__version__)
    if dev.type != "cuda" or not torch.cuda.is_available():
        raise ValueError(f"Inductor engines compile for 'cpu' or a visible CUDA GPU ('cuda', 'cuda:N'), not {device!r}")
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return InductorTarget("cuda", torch.cuda.get_device_name(index), f"{major}.{minor}", torch.__version__)


def is_inductor(target_json: dict) -> bool:
    return (target_json or {}).get("compiler") == COMPILER
