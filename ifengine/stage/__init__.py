"""The stage core: what one denoising stage is and how it runs, below every other floor but the models.

- ``steps``: the pure step functions (U-Net with CFG, guidance, the scheduler update from tables)
- ``stages``: ``IFStage`` / ``X4Stage`` and the plain torch stage loops
- ``noise``: every random draw of a run, made up front in diffusers' order
- ``options``: per-stage settings, defaults and their validation
- ``sizes``: stage sizes, aspect ratios and the size rules of the U-Nets
- ``components``: loading U-Nets, VAE and text encoders from checkpoints into stages
"""
