"""TensorRT engines: recipe -> build plan -> serialized engines in a cache that cannot go stale.

- ``recipe``: build/*.toml parsed into frozen dataclasses (strict, errors name the key)
- ``specs`` / ``profiles``: the I/O spec of each component and the recipe's min/opt/max profiles
- ``build_plan``: the resolved, JSON-serialisable build plan (``ifengine build --dry-run`` prints it)
- ``exports``: finding export manifests and exporting missing graphs
- ``cache`` / ``builder``: cache keys, manifests, checksums, atomic writes, build locks, the index
- ``io_plan`` / ``bindings``: runtime buffer, binding, scratch and streaming-budget decisions
- ``trt_build`` / ``trt_runtime``: the only modules that call TensorRT (thin; imported lazily)

Nothing here imports TensorRT at import time. See docs/tensorrt.md for what has run on real hardware.
"""
