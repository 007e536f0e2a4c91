"""Configs from dotted overrides, one-line errors, and every search space."""

import optuna
import pytest
from pairs import started_from_teacher, starts_from_teacher

from pcbench.config import build_config
from pcbench.errors import UserError
from pcbench.methods import method_names
from pcbench.overrides import parse_overrides
from pcbench.spaces import prepare_search


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
    ({"method.weight": -1}, "method.weight: Input should be greater than or equal to 0"),
    ({"method.w_kd": 0.5}, "method.w_kd: not a knob of method 'pc' (the KD term is the variant's: "
                           "--method pc+kd)"),
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
    with pytest.raises(UserError, match="unknown method .pcx.: choose one of ") as error:
        build_config({"method": "pcx"}, {})
    assert ", ".join(method_names()) in str(error.value)


@pytest.mark.parametrize("method", method_names())
def test_every_space_loads_starts_at_the_default_and_samples_valid_configs(method):
    base, started = started_from_teacher(method)
    template, space = prepare_search(base, started)
    first = space.first_point(template)
    assert build_config(base, {**started, **first}).hash == template.hash  # defaults first
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    for _ in range(5):
        trial = study.ask(space.distributions)
        build_config(base, {**started, **trial.params})  # every sample is a valid trial
        study.tell(trial, 0.5)


PAIRS = [("cnn_large", "cnn_small"), ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8"),
         ("resnet34", "resnet18")]


@pytest.mark.parametrize("teacher, student", PAIRS)
def test_spaces_differ_only_in_their_own_method_knobs(teacher, student):
    """Equal searches: every method searches the same training knobs over the same ranges,
    and nothing else but its own method.* knobs."""
    shared = {}
    for method in method_names():
        started = starts_from_teacher(method)  # then the teacher's architecture, from its weights
        _, space = prepare_search({"method": method, "teacher": student if started else teacher,
                                   "student": student}, {"train.init_from_teacher": True} if started else {})
        others = {k: d for k, d in space.distributions.items() if not k.startswith("method.")}
        shared[method] = others
    reference = shared["ce"]
    assert set(reference) == {"train.lr", "train.weight_decay"}
    for method, others in shared.items():
        assert others == reference, method


def test_a_method_space_may_not_carry_training_knobs(tmp_path):
    path = tmp_path / "kd.yaml"
    path.write_text("knobs:\n  train.lr: {type: float, low: 0.01, high: 0.1}\n")
    with pytest.raises(UserError, match="'train.lr' is not a method knob.*training.yaml"):
        prepare_search({"method": "kd"}, {}, path)


def test_training_ranges_follow_the_trials_own_setting():
    _, space = prepare_search({"method": "kd"}, {"train.lr": 0.01})
    lr = space.distributions["train.lr"]
    assert (lr.low, lr.high, lr.log) == pytest.approx((0.0025, 0.04, True))


def test_layer_roles_resolve_to_the_pairs_taps():
    _, four = prepare_search({"method": "ot", "teacher": "vgg13", "student": "vgg8"}, {})
    assert four.distributions["method.taps"].choices == (
        "stage4", "stage3,stage4", "stage1,stage2,stage3,stage4", "embedding")
    _, three = prepare_search({"method": "ot", "teacher": "resnet32x4", "student": "resnet8x4"}, {})
    assert three.distributions["method.taps"].choices == (
        "stage3", "stage2,stage3", "stage1,stage2,stage3", "embedding")
    template, fitnet = prepare_search({"method": "fitnet", "teacher": "vgg13", "student": "vgg8"}, {})
    assert template.method.tap == "stage2"  # FitNets' middle stage
    assert fitnet.distributions["method.tap"].choices == ("stage2", "stage1", "stage3", "stage4")
    assert prepare_search({"method": "at", "teacher": "vgg13", "student": "vgg8"}, {})[0].method.taps \
        == ["stage1", "stage2", "stage3", "stage4"]


def test_pairs_of_different_stage_counts_count_on_the_shorter_model():
    template, space = prepare_search({"method": "sp", "teacher": "resnet56", "student": "vgg8"}, {})
    assert template.method.tap == "stage3"  # resnet56 has 3 stages, vgg8 has 4
    assert "stage4" not in space.distributions["method.tap"].choices
    with pytest.raises(UserError, match="fcfd pairs stage with stage: teacher resnet56 has 3 stages"):
        build_config({"method": "fcfd", "teacher": "resnet56", "student": "vgg8"}, {})


def test_a_role_is_recorded_as_the_concrete_tap():
    config = build_config({"method": "pc", "teacher": "vgg13", "student": "vgg8"},
                          {"method.tap": "last_stage"})
    assert config.method.tap == "stage4" and config.flat()["method.tap"] == "stage4"


def test_a_space_naming_an_unknown_knob_is_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("knobs:\n  method.sharpness: {type: float, low: 0.1, high: 1}\n")
    with pytest.raises(UserError, match="knob 'method.sharpness' is not a setting of method 'pc'"):
        prepare_search({"method": "pc"}, {}, path)


def test_a_space_that_excludes_the_default_is_rejected(tmp_path):
    path = tmp_path / "narrow.yaml"
    path.write_text("knobs:\n  method.tau: {type: float, low: 0.6, high: 1.0}\n")
    with pytest.raises(UserError, match="method.tau=0.5 .the method.s default.*lies outside"):
        prepare_search({"method": "pc"}, {}, path)


@pytest.mark.parametrize("batch, workers", [(2, 1), (4, 2), (5, 2)])
def test_pc_refuses_per_worker_batches_of_two_or_fewer(batch, workers):
    with pytest.raises(UserError, match=f"pc needs at least 3 samples per worker's batch, and "
                                        f"data.batch_size={batch} over train.workers={workers}"):
        build_config({"method": "pc"}, {"data.batch_size": batch, "train.workers": workers})
    build_config({"method": "pc"}, {"data.batch_size": 3 * workers, "train.workers": workers})


@pytest.mark.parametrize("method, smallest", [("rkd", 3), ("sp", 2), ("pkt", 2), ("cc", 2)])
def test_batch_relational_losses_refuse_a_per_worker_batch_they_are_not_defined_on(method, smallest):
    with pytest.raises(UserError, match=f"{method} needs at least {smallest} samples per worker's batch"):
        build_config({"method": method}, {"data.batch_size": 2 * (smallest - 1), "train.workers": 2})
    build_config({"method": method}, {"data.batch_size": 2 * smallest, "train.workers": 2})
