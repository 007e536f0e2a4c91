"""Configs from dotted overrides, one-line errors, and every search space."""

import optuna
import pytest

from pcbench.config import build_config, parse_overrides
from pcbench.errors import UserError
from pcbench.methods import method_names
from pcbench.spaces import default_space_path, load_space


def test_overrides_reach_nested_fields_and_parse_as_yaml():
    config = build_config({"method": "pc"}, parse_overrides(
        ["method.tau=0.05", "train.epochs=3", "method.delta=euclidean", "data.augment=false"]))
    assert (config.method.tau, config.train.epochs, config.method.delta, config.data.augment) == \
        (0.05, 3, "euclidean", False)


def test_method_scoped_overrides_apply_to_their_method_only():
    overrides = parse_overrides(["pc.tau=0.2", "ot.weight=3"])
    assert build_config({"method": "pc"}, overrides).method.tau == 0.2
    assert build_config({"method": "ot"}, overrides).method.weight == 3.0


def test_ot_taps_accept_a_comma_separated_string():
    config = build_config({"method": "ot"}, {"method.taps": "stage2,stage3"})
    assert config.method.taps == ["stage2", "stage3"]


def test_config_hash_ignores_the_seed_but_not_the_knobs():
    a = build_config({"method": "pc", "seed": 1}, {})
    assert a.hash == build_config({"method": "pc", "seed": 2}, {}).hash
    assert a.hash != build_config({"method": "pc"}, {"method.tau": 0.1}).hash


@pytest.mark.parametrize("overrides, message", [
    ({"method.temperature": -1}, "method.temperature: Input should be greater than 0"),
    ({"method.tau": 0}, "method.tau: Input should be greater than 0"),
    ({"method.tap": "stage9"}, "tap 'stage9' does not exist in student cnn_small; valid taps: stem, stage1"),
    ({"method.nope": 1}, "method.nope: not a knob of method 'pc'; its knobs are: w_ce"),
    ({"data.name": "mnist"}, "unknown data set 'mnist'; choose one of cifar10, cifar100, digits"),
    ({"train.bogus": 1}, "train.bogus: unknown setting"),
])
def test_bad_values_give_one_line_naming_the_fix(overrides, message):
    with pytest.raises(UserError) as error:
        build_config({"method": "pc"}, overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_unknown_method_lists_the_registered_ones():
    with pytest.raises(UserError, match="unknown method .pcx.: choose one of at, ce, crd, dkd, fcfd, fitnet"):
        build_config({"method": "pcx"}, {})


@pytest.mark.parametrize("method", method_names())
def test_every_space_loads_starts_at_the_default_and_samples_valid_configs(method):
    space = load_space(default_space_path(method))
    template = space.validate({"method": method}, {})
    first = space.first_point(template)
    assert build_config({"method": method}, first).hash == template.hash  # defaults first
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    for _ in range(5):
        trial = study.ask(space.distributions)
        build_config({"method": method}, trial.params)  # every sample is a valid trial
        study.tell(trial, 0.5)


def test_a_space_naming_an_unknown_knob_is_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("knobs:\n  method.sharpness: {type: float, low: 0.1, high: 1}\n")
    with pytest.raises(UserError, match="knob 'method.sharpness' is not a setting of method 'pc'"):
        load_space(path).validate({"method": "pc"}, {})


def test_a_space_that_excludes_the_default_is_rejected(tmp_path):
    path = tmp_path / "narrow.yaml"
    path.write_text("knobs:\n  method.tau: {type: float, low: 0.6, high: 1.0}\n")
    with pytest.raises(UserError, match="method.tau=0.5 .the method.s default or your --set. lies outside"):
        load_space(path).validate({"method": "pc"}, {})
