"""torch -> ONNX for every network of the cascade and one whole denoising step per stage.

Entry points: ``api.export_artifacts`` (and ``ifengine export``), ``manifest.read_manifest``. The I/O
contract lives in ``spec.py`` / ``step_spec.py``; precision variants in ``precision.py`` / ``quantize.py``;
the artifacts folder layout and its atomic updates in ``artifacts.py``. Submodules are imported lazily.
"""
