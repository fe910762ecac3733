"""Recipes: the shipped ones parse, and every malformed recipe fails naming the file, table and key."""

import pytest

from ifengine.engines.errors import RecipeError
from ifengine.engines.recipe import ComponentRecipe, ShapeSet, find_recipe, load_recipe, parse_recipe, shipped_recipes

SHIPPED = ("24gb", "16gb", "8-12gb", "datacenter")
CASCADE = {"t5", "unet1", "unet2", "x4_unet", "vae_decoder", "clip"}


def test_the_four_common_cases_are_shipped_and_cover_the_cascade():
    assert {p.stem for p in shipped_recipes()} >= set(SHIPPED)
    for name in SHIPPED:
        recipe = load_recipe(name)
        assert recipe.name == name and recipe.description
        assert {c.name for c in recipe.components} == CASCADE
        t5 = next(c for c in recipe.components if c.name == "t5")
        assert t5.precision != "fp16"  # T5 v1.1 overflows in fp16: bf16 or int8 (fp32 activations)


def test_int8_is_allowed_exactly_where_the_exporter_writes_int8_graphs():
    from ifengine.engines.recipe import COMPONENTS, INT8_COMPONENTS
    from ifengine.export import precision

    assert {c for c in COMPONENTS if precision.supports(c, "int8")} == set(INT8_COMPONENTS)


def test_small_cards_stream_an_int8_t5_and_datacenter_batches_more():
    small = {c.name: c for c in load_recipe("8-12gb").components}
    assert small["t5"] == ComponentRecipe("t5", "int8", weight_streaming=True, stream_budget=1.0)
    assert load_recipe("16gb").batch.max == 1
    big = load_recipe("datacenter")
    assert big.batch.max == 8 and big.build.optimization_level == 4
    assert all(c.precision == "bf16" for c in big.components)


def test_find_recipe_accepts_paths_and_names_and_lists_the_shipped_ones(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[components]\nunet1 = "fp16"\n')
    assert find_recipe(path) == path
    recipe = load_recipe(path)
    assert recipe.name == "mine" and recipe.components == (ComponentRecipe("unet1", "fp16"),)
    with pytest.raises(RecipeError, match="24gb"):
        find_recipe("no-such-recipe")


def test_shapes_turn_aspects_and_sizes_into_stage1_sizes_opt_first():
    shapes = ShapeSet(base=64, aspects=("1:1", "16:9", "9:16"), sizes=("96x64", "64x64"), opt="96x64")
    assert shapes.stage1_sizes() == ((64, 96), (64, 64), (64, 112), (112, 64))


def _recipe(**tables):
    raw = {"components": {"unet1": {"precision": "fp16"}}}
    raw.update(tables)
    return raw


@pytest.mark.parametrize(
    "raw, message",
    [
        (_recipe(bogus=1), "the top level has unknown key 'bogus'"),
        ({"components": {"unet1": {"precison": "fp16"}}}, r"\[components.unet1\] has unknown key 'precison'"),
        ({"components": {"unet1": {"precision": "fp8"}}}, "precision = 'fp8' is invalid: expected one of fp32"),
        ({"components": {"vae_decoder": "int8"}}, "'int8' is not exported for vae_decoder"),
        ({"components": {"clip": {"precision": "int8"}}}, "'int8' is not exported for clip"),
        ({"components": {"unet3": "fp16"}}, "component = 'unet3' is invalid"),
        ({"components": {"unet1": {}}}, r"\[components.unet1\] needs 'precision'"),
        ({"components": {}}, "at least one of t5"),
        ({"components": {"unet1": {"precision": "fp16", "stream_budget": "auto"}}}, "only with weight_streaming"),
        (
            {"components": {"t5": {"precision": "int8", "weight_streaming": True, "stream_budget": -1}}},
            "stream_budget = -1 is invalid",
        ),
        (
            {"components": {"unet1": {"precision": "fp16", "weight_streaming": 1}}},
            "weight_streaming = 1 should be bool",
        ),
        (_recipe(batch={"min": 2, "opt": 1, "max": 4}), r"\[batch\] min/opt/max"),
        (_recipe(batch={"max": True}), "max = True should be int"),
        (_recipe(build={"optimization_level": 7}), "optimization_level = 7 is invalid: expected an integer 0..5"),
        (_recipe(build={"workspace_gib": 0}), "workspace_gib = 0 is invalid"),
        (_recipe(build={"static": True}), r"\[build\] has unknown key 'static'"),
        (_recipe(shapes={"aspects": ["wide"]}), "aspects entry 'wide' is not usable"),
        (_recipe(shapes={"sizes": ["64x"]}), "sizes entry '64x' is not usable"),
        (_recipe(shapes={"aspects": ["1:1"], "opt": "4:3"}), "opt = '4:3' is invalid"),
        (_recipe(shapes={"base": 60}), "base = 60 is invalid"),
        (_recipe(models={"stage4": "x"}), r"\[models\] has unknown key 'stage4'"),
        (_recipe(build=3), "build = 3 is invalid: expected a \\[build\\] table"),
    ],
)
def test_bad_recipes_name_the_key_and_value(raw, message):
    with pytest.raises(RecipeError, match=message) as err:
        parse_recipe(raw, "build/mine.toml")
    assert str(err.value).startswith("build/mine.toml: ")


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[components\nunet1 = 'fp16'\n")
    with pytest.raises(RecipeError, match="broken.toml: not valid TOML"):
        load_recipe(path)


def test_a_whole_number_stream_budget_stays_gib():
    recipe = parse_recipe({"components": {"t5": {"precision": "int8", "weight_streaming": True, "stream_budget": 2}}})
    assert recipe.components[0].stream_budget == 2.0 and isinstance(recipe.components[0].stream_budget, float)


def test_component_refittable_overrides_the_build_default():
    recipe = parse_recipe(
        {
            "build": {"refittable": True},
            "components": {"unet1": "fp16", "unet2": {"precision": "fp16", "refittable": False}},
        }
    )
    unet1, unet2 = recipe.components
    assert recipe.refittable(unet1) and not recipe.refittable(unet2)
