"""The cascade on ONNX Runtime, from exported graphs.

- ``session``: one exported graph in an ORT session, called through IO binding on torch tensors
- ``parts``: ORT-backed stand-ins with the torch parts' call signatures
- ``cascade``: ``load_onnx_cascade`` behind ``Cascade.from_artifacts``
"""
