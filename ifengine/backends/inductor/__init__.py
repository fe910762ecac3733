"""AOTInductor packages (``ifengine build --compiler inductor``) as ``backends.base.Network``s.

- ``network``: ``InductorPackage`` (one ``.pt2`` behind static buffers) and ``InductorNetwork`` (a
  component's packages; ``prepare`` picks the one whose profile covers the dims)
- ``load``: the engine-cache checks (target, staleness, checksum) before any package is loaded
"""
