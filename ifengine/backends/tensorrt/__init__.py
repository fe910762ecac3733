"""TensorRT engines behind the runtime: deserialised once, sharing one scratch allocation (``engines``)."""
