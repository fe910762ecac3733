"""Everything that runs a network or a whole step, behind one interface (``base.Network``).

- ``base``: the interface (static named buffers, ``prepare(dims)``, ``enqueue(stream)`` without a host sync)
  and the typed ``Capture`` rule the GPU runner checks before it records a step in a CUDA graph
- ``static_io``: buffers, views, bind-on-change and capture decisions shared by ONNX Runtime and TensorRT
- ``parts`` / ``assemble``: networks with the torch parts' call signatures; a cascade mixing backends
- ``torch``: torch modules (precision, memory format, torch.compile settings for the U-Nets)
- ``traced``: each stage's whole step as one frozen TorchScript graph (the CPU executor)
- ``onnxruntime``: exported graphs on ONNX Runtime with IO binding (CPU, CUDA, TensorRT providers)
- ``tensorrt``: TensorRT execution contexts (a thin adapter) and verified engine loading
"""
