"""TensorRT engines as ``backends.base.Network``s.

- ``engines``: the thin adapter (``TensorRTEngine`` per context, ``EngineNetwork`` per component)
- ``load``: engine-cache checks before TensorRT, deserialisation, shared scratch (``load_engine_parts``)
"""
