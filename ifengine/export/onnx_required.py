"""Imported first by the modules that need onnx and ONNX Runtime: without them, a one-line error naming the
extra that installs them instead of a bare ModuleNotFoundError from deep inside an import."""

from ..errors import require_extra

require_extra(("onnx", "onnxruntime"), "export", "exporting graphs (ifengine export)")
