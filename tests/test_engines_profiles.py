"""Profiles: recipe batch range and image sizes -> min/opt/max per input, or static shapes."""

import pytest

from ifengine.engines.errors import RecipeError
from ifengine.engines.profiles import batch_values, make_profiles
from ifengine.engines.recipe import BatchRange, ShapeSet
from ifengine.export.spec import if_unet_spec, t5_spec, vae_decoder_spec, x4_unet_spec
from ifengine.models.presets import unet_preset, vae_preset

SIZES = ShapeSet(base=64, aspects=("1:1", "16:9", "9:16")).stage1_sizes()  # (64,64), (64,112), (112,64)
BATCH = BatchRange(1, 1, 2)


def test_unet1_profile_covers_every_size_and_the_guidance_batch():
    spec = if_unet_spec(unet_preset("IF-I-XL"), 1)
    (profile,) = make_profiles("unet1", spec, BATCH, SIZES)
    assert profile.label == "dynamic" and not profile.static
    assert profile.shapes["sample"] == ((1, 3, 64, 64), (2, 3, 64, 64), (4, 3, 112, 112))
    assert profile.shapes["timestep"] == ((1,), (2,), (4,))
    assert profile.shapes["encoder_hidden_states"] == ((1, 77, 4096), (2, 77, 4096), (4, 77, 4096))
    assert profile.contains({"sample": (2, 3, 64, 112), "timestep": (2,), "encoder_hidden_states": (2, 77, 4096)})
    assert not profile.contains({"sample": (2, 3, 128, 64), "timestep": (2,), "encoder_hidden_states": (2, 77, 4096)})


def test_later_stages_scale_sizes_and_the_vae_keeps_the_image_batch():
    unet2 = make_profiles("unet2", if_unet_spec(unet_preset("IF-II-L"), 2), BATCH, SIZES)[0]
    assert unet2.shapes["sample"] == ((1, 6, 256, 256), (2, 6, 256, 256), (4, 6, 448, 448))
    assert unet2.shapes["class_labels"] == ((1,), (2,), (4,))
    x4 = make_profiles("x4_unet", x4_unet_spec(unet_preset("x4-upscaler")), BATCH, SIZES)[0]
    assert x4.shapes["sample"][2] == (4, 7, 448, 448)
    vae = make_profiles("vae_decoder", vae_decoder_spec(vae_preset("x4-vae")), BATCH, SIZES)[0]
    assert vae.shapes == {"latents": ((1, 4, 256, 256), (1, 4, 256, 256), (2, 4, 448, 448))}
    t5 = make_profiles("t5", t5_spec(), BatchRange(1, 2, 4), SIZES)[0]
    assert t5.shapes["input_ids"] == ((1, 77), (4, 77), (8, 77))


def test_batch_doubles_only_for_guidance_batches():
    assert batch_values("unet1", BatchRange(1, 2, 4)) == (1, 4, 8)
    assert batch_values("vae_decoder", BatchRange(1, 2, 4)) == (1, 2, 4)
    assert batch_values("step1", BatchRange(1, 2, 4)) == (1, 2, 4)


def test_static_shapes_give_one_pinned_profile_per_size():
    spec = if_unet_spec(unet_preset("IF-I-XL"), 1)
    profiles = make_profiles("unet1", spec, BatchRange(1, 1, 4), SIZES, static=True)
    assert [p.label for p in profiles] == ["b2-64x64", "b2-112x64", "b2-64x112"]
    assert all(p.static for p in profiles)
    assert profiles[1].shapes["sample"] == ((2, 3, 64, 112),) * 3
    (text,) = make_profiles("t5", t5_spec(), BatchRange(1, 1, 4), SIZES, static=True)
    assert text.label == "b2" and text.shapes["input_ids"] == ((2, 77),) * 3


def test_static_shapes_for_each_batch_pin_every_batch_of_the_range_at_every_size():
    """Inductor's static packages: one per batch value and size, so the whole recipe range is served by
    static packages (measured faster than one package with a dynamic batch)."""
    from ifengine.engines.bindings import select
    from ifengine.engines.io_plan import IOPlan

    spec = if_unet_spec(unet_preset("IF-I-XL"), 1)
    profiles = make_profiles("unet1", spec, BatchRange(1, 1, 2), SIZES[:2], static=True, each_batch=True)
    assert [p.label for p in profiles] == [f"b{b}-{s}" for b in (1, 2, 3, 4) for s in ("64x64", "112x64")]
    assert all(p.static for p in profiles)
    plans = [IOPlan("unet1", spec, p.dims, {t.name: "float32" for t in spec.inputs + spec.outputs}) for p in profiles]
    assert select(plans, {"batch": 3, "height": 64, "width": 112, "tokens": 77}) == 5  # the exact static package
    (vae,) = make_profiles(
        "vae_decoder", vae_decoder_spec(vae_preset("x4-vae")), BatchRange(1, 1, 1), SIZES[:1], True, True
    )
    assert vae.label == "b1-256x256"


def test_sizes_the_graph_cannot_take_are_refused_with_the_reason():
    spec = if_unet_spec(unet_preset("IF-I-XL"), 1)
    with pytest.raises(RecipeError, match="unet1: width 100 .* not a multiple of 8"):
        make_profiles("unet1", spec, BATCH, ((64, 64), (64, 100)))
    with pytest.raises(RecipeError, match="unet1: width 192 .* outside the range 32..128"):
        make_profiles("unet1", spec, BATCH, ((64, 192),))
    with pytest.raises(RecipeError, match="batch 32 .* outside the range 1..16"):
        make_profiles("unet1", spec, BatchRange(1, 1, 16), SIZES)


def test_profile_json_lists_min_opt_max_per_input():
    (profile,) = make_profiles("vae_decoder", vae_decoder_spec(vae_preset("x4-vae")), BATCH, SIZES)
    assert profile.to_json() == {
        "label": "dynamic",
        "inputs": {"latents": {"min": [1, 4, 256, 256], "opt": [1, 4, 256, 256], "max": [2, 4, 448, 448]}},
    }
