"""`GrowthSpec`: what no source could satisfy is refused once, as one line naming the option; `grow expand`'s flags
and a family recipe's `grow:` keys are its fields."""

from __future__ import annotations

import dataclasses
import inspect
import typing

import pytest
import yaml

from grow_cli.commands import expand as expand_command
from grow_cli.errors import OptionError, UsageError
from grow_cli.family.recipe import GROW_RESERVED, load_recipe
from grow_cli.field_types import flag
from grow_cli.growth.spec import GrowthSpec, field_types
from grow_cli.operators.registry import method_help

FIELDS = [f.name for f in dataclasses.fields(GrowthSpec)]


@pytest.mark.parametrize(
    "options, option, fragment",
    [
        ({}, None, "nothing to grow"),
        ({"width_method": "fpi"}, None, "nothing to grow"),
        ({"layers": 8, "depth_factor": 2}, "depth_factor", "not both"),
        ({"depth_factor": 0}, "depth_factor", "positive"),
        ({"depth_factor": float("nan")}, "depth_factor", "positive"),
        ({"depth_factor": float("inf")}, "depth_factor", "finite positive number, got inf"),
        ({"depth_method": "warp", "layers": 8}, "depth_method", "unknown depth method 'warp'; choose one of stack"),
        ({"dus_overlap": 1, "layers": 8}, "dus_overlap", "only to --depth-method dus"),
        ({"width_method": "net2net", "width_factor": 2}, "width_method", "unknown width method"),
        ({"width_factor": 0.5}, "width_factor", "at least 1"),
        (
            {"width_factor": float("inf")},
            "width_factor",
            "finite number of at least 1 (width growth only adds units), got inf",
        ),
        ({"hidden_size": 0}, "hidden_size", "--hidden-size must be at least 1"),
        ({"num_kv_heads": -2}, "num_kv_heads", "--num-kv-heads must be at least 1"),
        ({"width_factor": 2, "noise_snr_db": 10}, "noise_snr_db", "only to --width-method hypercloning"),
        ({"width_factor": 2, "depth_method": "identity"}, "depth_method", "--depth-method identity applies only with"),
        ({"layers": 8, "width_method": "zero"}, "width_method", "--width-method zero applies only with a width"),
        ({"layers": 8, "width_method": "hypercloning", "noise_snr_db": 10}, "width_method", "applies only with a"),
        ({"width_method": "hypercloning", "width_factor": 2, "noise_snr_db": float("nan")}, "noise_snr_db", "got nan"),
        ({"experts": 4, "router_noise": 2e99}, "router_noise", "from 0 to 1, got 2e+99"),
        ({"experts": 4, "router_noise": float("nan")}, "router_noise", "from 0 to 1, got nan"),
        ({"layers": 8, "dtype": "fp64"}, "dtype", "--dtype must be one of bf16, fp16, fp32"),
        ({"layers": 8, "shard_size": "lots"}, "shard_size", "--shard-size: cannot read size"),
        ({"layers": 0}, "layers", "--layers must be at least 1, got 0"),  # no source has fewer: refused here
        ({"layers": -4}, "layers", "--layers must be at least 1, got -4"),
        ({"depth_method": "dus", "dus_overlap": -1}, "dus_overlap", "--dus-overlap must be at least 0, got -1"),
        ({"layerz": 8}, "layerz", "GrowthSpec has no option 'layerz'; did you mean 'layers'?"),  # was a TypeError
    ],
)
def test_impossible_specs_are_one_line_naming_the_option(options, option, fragment):
    with pytest.raises(OptionError) as info:
        GrowthSpec(**options)
    assert info.value.option == option
    assert fragment in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, UsageError)  # exit code 2 on the CLI


@pytest.mark.parametrize("snr_db", [-1000.0, -20.0, 1e308])
def test_hypercloning_noise_beyond_its_range_is_refused(snr_db):
    """`--noise-snr-db` took any finite number: at -1000 dB `grow expand` wrote weights of inf and NaN, exit 0, its
    report and grow.json calling the growth exact; at -20 dB the noise (10× the weights) cancelled only up to a
    float error that `--verify` failed; at 1e308 dB `10 ** (S / 10)` overflowed into `error: OverflowError`. A value
    outside 0-120 dB is now refused as one line naming the option, before anything is read."""
    with pytest.raises(OptionError) as info:
        GrowthSpec(width_method="hypercloning", width_factor=2, noise_snr_db=snr_db)
    assert info.value.option == "noise_snr_db"
    assert "--noise-snr-db must be from 0 dB" in str(info.value) and "try 10" in str(info.value)
    for kept in (0.0, 10.0, 120.0):  # the ends of the range are taken
        assert GrowthSpec(width_method="hypercloning", width_factor=2, noise_snr_db=kept).noise_snr_db == kept


@pytest.mark.parametrize(
    "options, option, fragment",
    [
        ({"layers": "8"}, "layers", "GrowthSpec.layers: expected int, found '8' (str)"),
        ({"layers": True}, "layers", "GrowthSpec.layers: expected int, found True (bool)"),
        ({"layers": 8.0}, "layers", "GrowthSpec.layers: expected int, found 8.0 (float)"),
        ({"depth_factor": "2"}, "depth_factor", "GrowthSpec.depth_factor: expected int or float, found '2' (str)"),
        ({"layers": 8, "depth_method": 1}, "depth_method", "GrowthSpec.depth_method: expected str, found 1 (int)"),
        ({"layers": 8, "shared_expert": 1}, "shared_expert", "GrowthSpec.shared_expert: expected bool, found 1"),
        ({"layers": 8, "shard_size": 2.5}, "shard_size", "GrowthSpec.shard_size: expected str or int, found 2.5"),
        ({"layers": 8, "seed": None}, "seed", "GrowthSpec.seed: expected int, found None"),
    ],
)
def test_field_types_are_checked_at_construction(options, option, fragment):
    """The Python API's mistakes (a string for a number, True for 1) are refused at once, naming the field — not a
    TypeError later, nor True read as 1 layer."""
    with pytest.raises(OptionError) as info:
        GrowthSpec(**options)
    assert info.value.option == option and fragment in str(info.value), str(info.value)


def test_field_types_accept_what_the_fields_say():
    """The negative control: an int where a float is expected, None for an optional field, an int shard size."""
    spec = GrowthSpec(depth_factor=2, width_factor=2.0, hidden_size=None, shard_size=10**9, shared_expert=False)
    assert spec.grows_depth and spec.grows_width and spec.max_shard_bytes == 10**9


def test_a_valid_spec_says_what_it_grows():
    depth = GrowthSpec(layers=8, dtype="BF16", shard_size="2GB")
    assert depth.grows_depth and not depth.grows_width
    assert depth.out_dtype == "BF16" and depth.max_shard_bytes == 2 * 10**9
    width = GrowthSpec(width_factor=2, width_method="hypercloning", noise_snr_db=10)
    assert width.grows_width and not width.grows_depth and width.out_dtype is None
    assert GrowthSpec(depth_method="dus", dus_overlap=2).grows_depth  # dus changes the depth by itself


def test_from_options_takes_the_fields_and_ignores_the_rest():
    spec = GrowthSpec.from_options({"layers": 6, "depth_method": "identity", "force": True, "source": "x"})
    assert spec == GrowthSpec(layers=6, depth_method="identity")


def test_every_field_is_a_grow_expand_flag_with_the_same_default():
    """A new option is one field plus its flag: the command must have a parameter of the field's name."""
    parameters = inspect.signature(expand_command.expand).parameters
    for f in dataclasses.fields(GrowthSpec):
        assert f.name in parameters, f"GrowthSpec.{f.name} has no {flag(f.name)} flag in grow expand"
        assert parameters[f.name].default == f.default, f.name


def test_method_flags_are_documented_from_the_registry(cli):
    hints = typing.get_type_hints(expand_command.expand, include_extras=True)
    for kind in ("depth", "width"):
        option = hints[f"{kind}_method"].__metadata__[0]
        assert option.help == method_help(kind)
    assert cli("expand", "--help").code == 0


def _recipe(tmp_path, grow, **top):
    path = tmp_path / "family.yaml"
    members = [{"name": "a", "source": "m"}, {"name": "b", "grow": grow}]
    path.write_text(yaml.safe_dump({"members": members, **top}))
    return path


@pytest.mark.parametrize("key", [name for name in FIELDS if name not in GROW_RESERVED])
def test_recipe_grow_keys_are_the_spec_fields_with_their_types(tmp_path, key):
    """Every field the family does not decide itself is a key the recipe knows, checked against the field's type at
    its location."""
    wrong = [] if str not in field_types()[key] else 12.5  # a list is never valid; a float is not a str
    with pytest.raises(UsageError) as info:
        load_recipe(_recipe(tmp_path, {"layers": 8, key: wrong} if key != "layers" else {key: wrong}))
    assert f"members[1].grow.{key}: expected" in str(info.value)


def test_recipe_grow_block_is_a_spec_checked_at_load(tmp_path):
    recipe = load_recipe(_recipe(tmp_path, {"depth_factor": 2, "width_factor": 2, "width_method": "zero"}, seed=7))
    assert recipe.members[1].spec == GrowthSpec(depth_factor=2, width_factor=2, width_method="zero", seed=7)
    assert recipe.members[1].grow == {"depth_factor": 2, "width_factor": 2, "width_method": "zero"}
    own_seed = load_recipe(_recipe(tmp_path, {"layers": 8, "seed": 3}, seed=7)).members[1].spec
    assert own_seed.seed == 3
    for grow, fragment in [
        ({"layers": 8, "dus_overlap": 2}, "members[1].grow.dus_overlap: --dus-overlap applies only"),
        ({"layers": 8, "depth_methd": "stack"}, "members[1].grow.depth_methd: unknown key"),
        ({}, "members[1].grow: nothing to grow"),
        ({"layers": 8, "depth_method": "warp"}, "members[1].grow.depth_method: unknown depth method"),
    ]:
        with pytest.raises(UsageError) as info:
            load_recipe(_recipe(tmp_path, grow))
        assert fragment in str(info.value), str(info.value)


def test_a_method_named_at_its_default_without_its_target_is_refused_when_given():
    """The fields cannot tell `depth_method="stack"` from the default; a caller that knows what was given can."""
    GrowthSpec(width_factor=2, depth_method="stack")  # only values: accepted
    with pytest.raises(OptionError, match="--depth-method stack applies only with --layers or --depth-factor"):
        GrowthSpec(width_factor=2).check_given({"depth_method"})
    with pytest.raises(OptionError, match="--width-method fpi applies only with a width target"):
        GrowthSpec(layers=8).check_given({"width_method", "layers"})
    GrowthSpec(layers=8, width_factor=2).check_given({"depth_method", "width_method"})  # each has its target


def test_check_given_refuses_a_name_that_is_no_field():
    """A misspelt name passed its check unseen: `check_given({"depth_methd"})` refused nothing."""
    with pytest.raises(
        OptionError, match="'depth_methd' is no field of GrowthSpec; did you mean 'depth_method'"
    ) as info:
        GrowthSpec(width_factor=2).check_given({"depth_methd"})
    assert info.value.option == "depth_methd"


def test_a_method_named_alone_is_refused_as_a_method_without_its_target():
    """`grow expand SRC OUT --depth-method stack` said "nothing to grow", as if no option had been typed: the method
    named is the mistake to name, as it is beside another axis's target."""
    for given, fragment in [
        ({"depth_method": "stack"}, "--depth-method stack applies only with --layers or --depth-factor"),
        ({"width_method": "fpi"}, "--width-method fpi applies only with a width target"),
    ]:
        with pytest.raises(OptionError, match=fragment) as info:
            GrowthSpec.from_options({**given, "force": False}, given=[*given, "force"])  # (a command's other options)
        assert info.value.option == next(iter(given))
    with pytest.raises(OptionError, match="nothing to grow"):  # named nothing: the general refusal
        GrowthSpec.from_options({"depth_method": "stack", "width_method": "fpi"}, given=["dtype"])


def test_identity_repeats_beside_a_mergekit_config_names_how_the_config_says_it():
    """A mergekit config is a layer map too, so "--identity-repeats applies only with --layer-map (for --layers, use
    --depth-method identity)" sent its user nowhere: the config says it with scale 0 on o_proj and down_proj."""
    with pytest.raises(
        OptionError, match=r"a mergekit config makes its repeats identity blocks with scale 0 on o_proj"
    ):
        GrowthSpec(mergekit_config="solar.yml", identity_repeats=True)
