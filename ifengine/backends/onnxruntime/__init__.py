"""Exported graphs on ONNX Runtime (CPU provider here; CUDA and TensorRT providers of onnxruntime-gpu).

- ``session``: one artifact and its ORT session (``OrtGraph``), dims checked against its I/O spec
- ``network``: ``OrtNetwork``, the ``backends.base.Network`` over a session (IO binding to static buffers)
- ``load``: ``load_onnx_parts``, what ``open_cascade`` runs for exported graphs (providers cpu, cuda, tensorrt)
"""

from ...errors import require_extra

# every module here needs onnx and an ONNX Runtime (onnxruntime, or onnxruntime-gpu: same import name)
require_extra(("onnx", "onnxruntime"), "export", "running exported graphs (--artifacts, Cascade.from_artifacts)")
