"""Everything a stage needs from the host, drawn and built up front and packed for one upload.

The noise is drawn with ``ifengine.stage.noise`` in exactly the reference order (so the same
generator gives the same images as the eager loop), and travels in the same pinned pack as the
schedule tables and the guidance / noise-level scalars: one host-to-device copy per stage, and no
``torch.tensor(..., device=cuda)`` anywhere, since each of those is a blocking copy that syncs.
"""

from __future__ import annotations

import dataclasses

import torch

from ..stage.noise import StageNoise, ddpm_stage_noise, x4_stage_noise
from ..stage.options import StageOptions
from ..stage.stages import first_kept_step
from ..schedule import ddim_tables, ddpm_tables
from .buffers import HostPack

TABLE_PREFIX = "table."


def host_tables(build, config, opts: StageOptions):
    """The stage's schedule tables on the host (same rule as the eager loop: explicit list or step count)."""
    if opts.timesteps is not None:
        return build(config, timesteps=opts.timesteps)
    return build(config, num_inference_steps=opts.steps)


def table_fields(tables) -> list[str]:
    return [f.name for f in dataclasses.fields(tables) if isinstance(getattr(tables, f.name), torch.Tensor)]


def add_tables(pack: HostPack, tables, rows: int = 0) -> None:
    """The tables' tensors, each per-step one padded to ``rows`` (see ``pad_rows``)."""
    whole = getattr(tables, "_WHOLE_SCHEDULE", ())
    for name in table_fields(tables):
        value = getattr(tables, name)
        pack.add(TABLE_PREFIX + name, value if name in whole else pad_rows(value, rows))


def pad_rows(per_step: torch.Tensor, rows: int) -> torch.Tensor:
    """``per_step`` (one row per step) padded to ``rows`` rows by repeating its last row.

    Padding every per-step table and the per-step noise to one capacity makes the upload's layout, and
    so every view the captured step reads, the same for any step count or strength up to it: a new step
    count replays the graph already captured. The step reads only rows below the device-side counter's
    end, so the padding is never used (the repeated row keeps it finite all the same).
    """
    missing = rows - per_step.shape[0]
    if missing <= 0 or per_step.shape[0] == 0:
        return per_step
    return torch.cat([per_step, per_step[-1:].expand(missing, *per_step.shape[1:])])


def device_tables(tables, views: dict[str, torch.Tensor]):
    """The tables with every tensor field replaced by its view in the uploaded buffer."""
    return dataclasses.replace(tables, **{n: views[TABLE_PREFIX + n] for n in table_fields(tables)})


def static_choices(tables) -> tuple:
    """The non-tensor fields that change the step's code path (part of a graph's identity)."""
    return tuple(
        (f.name, getattr(tables, f.name))
        for f in dataclasses.fields(tables)
        if f.name != "host_timesteps" and not isinstance(getattr(tables, f.name), torch.Tensor)
    )


def _scalars(
    pack: HostPack, opts: StageOptions, dtype: torch.dtype, level_batch: int | None, mixer: float | None = None
) -> None:
    pack.add("guidance", torch.tensor(opts.guidance, dtype=dtype))
    if mixer is not None and opts.cfg:
        pack.add("mixer", torch.tensor(mixer, dtype=dtype))
    if level_batch is not None:
        pack.add("level", torch.full((level_batch,), opts.noise_level, dtype=torch.long))


def branches(opts: StageOptions, mixer: float | None) -> int:
    """U-Net batch multiple: 1 without guidance, [uncond; cond] with it, plus a positive branch with a mixer."""
    return 1 if not opts.cfg else (2 if mixer is None else 3)


def if_stage_pack(
    stage,
    opts: StageOptions,
    shape: tuple[int, ...],
    generator,
    dtype: torch.dtype,
    with_image: bool,
    start=None,
    mixer: float | None = None,
    rows: int = 0,
):
    """(pack, host tables) of an IF stage: noise [init, image, per step], tables, scalars, alphas, edit start.

    ``start`` (img2img / inpainting) trims the schedule to its kept steps before the noise is drawn, as
    the eager loop does, and its source image and mask travel in the same upload. Per-step entries are
    padded to ``rows`` (at least the run's own steps), so the layout does not depend on the step count.
    """
    tables = host_tables(ddpm_tables, stage.scheduler, opts)
    if start is not None:
        tables = tables.from_step(first_kept_step(len(tables), start.strength))
    draws = [t > 0 for t in tables.host_timesteps]
    noise = ddpm_stage_noise(shape, draws, generator, dtype, image_shape=shape if with_image else None)
    rows = max(rows, len(tables))
    pack = _noise_pack(noise, rows)
    add_tables(pack, tables, rows)
    _scalars(pack, opts, dtype, shape[0] * branches(opts, mixer) if with_image else None, mixer)
    if with_image:
        pack.add("noising_alphas", stage.noising.alphas_cumprod())
    if start is not None:
        pack.add("source", start.source.to(dtype=dtype))
        if start.mask is not None:
            pack.add("mask", start.mask.to(dtype=dtype))
    return pack, tables


def x4_stage_pack(
    stage,
    opts: StageOptions,
    latent_shape: tuple[int, ...],
    image_shape: tuple[int, ...],
    generator,
    dtype: torch.dtype,
    rows: int = 0,
):
    """(pack, host tables) of stage III: image noise then start latents, DDIM tables, scalars, alphas."""
    noise = x4_stage_noise(latent_shape, image_shape, generator, dtype)
    tables = host_tables(ddim_tables, stage.scheduler, opts)
    rows = max(rows, len(tables))
    pack = _noise_pack(noise, rows)
    add_tables(pack, tables, rows)
    _scalars(pack, opts, dtype, 2 * latent_shape[0] if opts.cfg else latent_shape[0])
    pack.add("low_res_alphas", stage.low_res.alphas_cumprod())
    return pack, tables


def _noise_pack(noise: StageNoise, rows: int) -> HostPack:
    pack = HostPack()
    pack.add("init", noise.init)
    if noise.image is not None:
        pack.add("image_noise", noise.image)
    pack.add("steps", pad_rows(noise.steps, rows))  # DDIM draws none: zero rows for any step count
    return pack
