"""Fair by construction: a row is one objective. A method alone has no KD term; `<method>+kd`
adds one, with the same knobs and ranges for every method; no space searches a knob another
method owns; and no --set renames the method. Checked on the dry-run plans users see."""

import json
from pathlib import Path

import pytest
from pairs import starts_from_teacher
from typer.testing import CliRunner

from pcbench.cli import app
from pcbench.config import build_config
from pcbench.methods import KD_SUFFIX, base_method, get_method, method_names, split_variant
from pcbench.methods.base import KD_TERM_KNOBS

SUITES = Path(__file__).resolve().parents[1] / "suites"
KD_WEIGHT = "method.w_kd"
PAIR = ("--teacher", "cnn_small", "--student", "cnn_small")  # one width: FSP's too
VARIANTS = [f"{m}{KD_SUFFIX}" for m in method_names()
            if get_method(m).needs_teacher and get_method(m).takes_kd]


@pytest.fixture(autouse=True)
def empty_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def _started(method: str) -> list[str]:
    return ["--init-from-teacher"] if starts_from_teacher(method) else []  # l2sp, delta


def _plan(*args) -> list[dict]:
    result = CliRunner().invoke(app, [*args, "--dry-run", "--json", "--data-dir", "no-data-here"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return json.loads(result.stdout)


def _kd_weight(entry: dict) -> float | None:
    """The entry's KD weight, searched (its range's top) or fixed; None: no KD term."""
    if KD_WEIGHT in entry["knobs"]:
        return entry["knobs"][KD_WEIGHT]["high"]
    return entry["fixed"].get(KD_WEIGHT)


def _check_one_objective_per_row(entries: list[dict]) -> None:
    for e in entries:
        base, plugins = split_variant(e["method"])  # kd+ls is kd's own objective, standardised
        has_kd = base == "kd" or KD_SUFFIX in plugins
        assert (_kd_weight(e) is not None and _kd_weight(e) > 0) == has_kd, e["method"]
        own = set(get_method(base_method(e["method"])).Config.model_fields)
        searched = {k.removeprefix("method.") for k in e["knobs"] if k.startswith("method.")}
        variant_knobs = set(KD_TERM_KNOBS) if e["method"].endswith(KD_SUFFIX) else set()
        assert searched <= own | variant_knobs, (e["method"], searched - own)  # only its own knobs
    variants = [e for e in entries if e["method"].endswith(KD_SUFFIX)]
    kd_knobs = {json.dumps({k: e["knobs"][f"method.{k}"] for k in KD_TERM_KNOBS}, sort_keys=True)
                for e in variants}
    assert len(kd_knobs) <= 1, kd_knobs  # every +kd variant: the same KD knobs and ranges


@pytest.mark.parametrize("method", method_names() + VARIANTS)
def test_a_search_plan_has_a_kd_term_only_for_kd_and_the_kd_variants(method):
    entries = _plan("search", "--method", method, *PAIR, *_started(method))
    _check_one_objective_per_row(entries)
    assert entries[0]["fixed"].get("method.name") is None  # every knob, not the name


def test_every_kd_variant_adds_the_same_kd_knobs():
    entries = [e for m in VARIANTS for e in _plan("search", "--method", m, *PAIR, *_started(m))]
    assert len(entries) == len(VARIANTS) >= 15
    _check_one_objective_per_row(entries)
    first = {(e["first_point"]["method.w_kd"], e["first_point"]["method.kd_temperature"])
             for e in entries if e["method"] != "fcfd+kd"}
    assert first == {(1.0, 4.0)}  # the CRD paper's +KD rows


@pytest.mark.parametrize("suite", ["cifar100.yaml", "cifar100-kd.yaml", "imagenet.yaml", "transfer.yaml",
                                   "transfer-demo.yaml", "transfer-folder.yaml", "demo.yaml"])
def test_every_suite_compares_one_objective_per_row(suite):
    entries = _plan("benchmark", str(SUITES / suite))
    _check_one_objective_per_row(entries)
    methods = {e["method"] for e in entries}
    assert not any(KD_SUFFIX in split_variant(m)[1] for m in methods) or suite == "cifar100-kd.yaml"


def test_fcfd_with_kd_is_the_papers_objective_its_kd_temperature_starting_at_fcfds():
    entries = _plan("benchmark", str(SUITES / "cifar100-kd.yaml"), "--set", "fcfd.temperature=8")
    fcfd = [e["first_point"] for e in entries if e["method"] == "fcfd+kd"]
    assert len(fcfd) == 4 and all(p["method.kd_temperature"] == p["method.temperature"] == 8 for p in fcfd)
    # the per-pair settings of fcfd reach fcfd+kd (one method, one setting)
    weights = {e["student"]: e["first_point"]["method.weight"] for e in entries if e["method"] == "fcfd+kd"}
    assert weights["resnet20"] == 0.02
    alone = build_config({"method": "fcfd"}, {})
    assert not any(k in type(alone.method).model_fields for k in KD_TERM_KNOBS)


def test_overrides_scoped_to_another_method_stay_ignored_and_scoped_to_a_variant_reach_it_alone():
    assert build_config({"method": "kd"}, {"dkd.beta": 2.0, "pc+kd.w_kd": 0.3}).method.w_kd == 0.9
    assert build_config({"method": "pc+kd"}, {"pc+kd.w_kd": 0.3, "pc.tau": 0.1}).method.w_kd == 0.3
    assert build_config({"method": "pc+kd"}, {"pc.tau": 0.1}).method.tau == 0.1


def test_a_variant_trains_its_method_plus_the_kd_term():
    import torch

    from pcbench.methods import DataInfo, Step
    from pcbench.methods.base import kd_loss
    from pcbench.models import create_model, model_info

    torch.manual_seed(0)
    student, teacher = create_model("cnn_small", 10, 1), create_model("cnn_large", 10, 1)
    infos = model_info(student, (1, 8, 8)), model_info(teacher, (1, 8, 8))
    alone = get_method("pc")(build_config({"method": "pc"}, {}).method, *infos, DataInfo(10, 100, 5))
    variant_config = build_config({"method": "pc+kd"}, {"method.kd_temperature": 2.0}).method
    variant = get_method("pc+kd")(variant_config, *infos, DataInfo(10, 100, 5))
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    feats = {"embedding": torch.randn(8, 16), "logits": torch.randn(8, 10)}
    t_feats = {"embedding": torch.randn(8, 16), "logits": torch.randn(8, 10)}
    step = Step(x, y, torch.arange(8), 0, feats, t_feats, student, teacher)
    terms, base = variant(step), alone(step)
    assert set(terms) == set(base) | {"kd"} and "kd" not in base
    assert terms["kd"].item() == pytest.approx(kd_loss(feats["logits"], t_feats["logits"], 2.0).item())
    assert all(torch.equal(terms[k], base[k]) for k in base)
