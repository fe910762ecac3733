"""Everything that runs a network or a whole step, per execution backend.

- ``torch``: torch modules (precision, memory format, torch.compile settings for the U-Nets)
- ``traced``: each stage's whole step as one frozen TorchScript graph (the CPU executor)
- ``onnxruntime``: exported graphs on ONNX Runtime with IO binding (CPU, CUDA, TensorRT providers)
- ``tensorrt``: TensorRT engines sharing one scratch allocation (a thin adapter)
"""
