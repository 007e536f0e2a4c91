"""`--dry-run`: the plan of a benchmark or search before anything is spent. It starts and
writes nothing, works before the data and the teachers exist, and shows every knob as it is
resolved for the pair, from the pair's published starting point."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pcbench.cli import app

SUITES = Path(__file__).resolve().parents[1] / "suites"


@pytest.fixture
def empty_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path


def _plan(*args):
    result = CliRunner().invoke(app, [*args, "--dry-run", "--json", "--data-dir", "no-data-here"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return json.loads(result.stdout), result.stderr


def test_cifar100_plan_resolves_layers_and_starts_from_the_published_settings(empty_dir):
    entries, stderr = _plan("benchmark", str(SUITES / "cifar100.yaml"))
    assert list(empty_dir.iterdir()) == []  # nothing written: no store, no results, no download
    assert "this machine has no CUDA GPU" in stderr or "CUDA" not in stderr
    assert "cifar100 not found" in stderr and "no vgg13 teacher for cifar100" in stderr
    by = {(e["teacher"], e["student"], e["method"]): e for e in entries}
    assert len(by) == 4 * 29
    # equal budgets: the same trials x epochs for every method and pair
    assert {(e["budget"]["trials"], e["budget"]["epochs"]) for e in entries} == {(16, 60)}
    assert {json.dumps(e["final"]) for e in entries} == {json.dumps({"seeds": [1, 2, 3], "epochs": 240})}
    # four-stage VGG: the layer choices name stage4
    vgg = by["vgg13", "vgg8", "ot"]["knobs"]["method.taps"]
    assert vgg == {"type": "categorical",
                   "choices": ["stage4", "stage3,stage4", "stage1,stage2,stage3,stage4", "embedding"]}
    assert "stage4" in by["vgg13", "vgg8", "pc"]["knobs"]["method.tap"]["choices"]
    assert by["vgg13", "vgg8", "at"]["first_point"]["method.taps"] == "stage1,stage2,stage3,stage4"
    assert "stage4" not in json.dumps(by["resnet56", "resnet20", "ot"]["knobs"])
    # the authors' per-pair settings are the first points (FCFD's and mdistiller's configs)
    fcfd = {pair: (by[(*pair, "fcfd")]["first_point"]["method.weight"],
                   by[(*pair, "fcfd")]["first_point"]["method.w_mix"],
                   by[(*pair, "fcfd")]["first_point"]["method.temperature"])
            for pair in [("wrn_40_2", "wrn_16_2"), ("resnet56", "resnet20"),
                         ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8")]}
    assert fcfd == {("wrn_40_2", "wrn_16_2"): (5.0, 0.2, 4.0), ("resnet56", "resnet20"): (0.02, 1.0, 4.0),
                    ("resnet32x4", "resnet8x4"): (5.0, 1.0, 4.0), ("vgg13", "vgg8"): (5.0, 1.0, 4.0)}
    assert {pair: by[(*pair, "reviewkd")]["first_point"]["method.weight"] for pair in fcfd} == {
        ("wrn_40_2", "wrn_16_2"): 5.0, ("resnet56", "resnet20"): 0.6, ("resnet32x4", "resnet8x4"): 5.0,
        ("vgg13", "vgg8"): 5.0}  # ReviewKD's script/reviewKD.sh
    beta = {pair: by[(*pair, "dkd")]["first_point"]["method.beta"] for pair in fcfd}
    assert beta == {("wrn_40_2", "wrn_16_2"): 6.0, ("resnet56", "resnet20"): 2.0,
                    ("resnet32x4", "resnet8x4"): 8.0, ("vgg13", "vgg8"): 6.0}
    # the shared training block, relative to the recipe's lr 0.05
    lr = by["vgg13", "vgg8", "kd"]["knobs"]["train.lr"]
    assert (lr["low"], lr["high"], lr["log"]) == (pytest.approx(0.0125), pytest.approx(0.2), True)
    assert by["vgg13", "vgg8", "ce"]["first_point"] == {"train.lr": 0.05, "train.weight_decay": 0.0005}


def test_imagenet_plan_starts_fcfd_and_dkd_from_their_imagenet_settings(empty_dir):
    entries, _ = _plan("benchmark", str(SUITES / "imagenet.yaml"))
    by = {e["method"]: e["first_point"] for e in entries}
    fcfd, dkd = by["fcfd"], by["dkd"]
    assert (fcfd["method.temperature"], fcfd["method.weight"], fcfd["method.warmup_share"]) \
        == (1.0, 0.02, 0.05)  # FCFD's L2 warm-up of 5 of 100 epochs
    assert (dkd["method.temperature"], dkd["method.beta"], dkd["method.warmup_share"]) == (1.0, 0.5, 0.01)
    # the setting of the KD number shown beside it (mdistiller's r34_r18 kd.yaml)
    kd = by["kd"]
    assert (kd["method.temperature"], kd["method.w_ce"], kd["method.w_kd"]) == (1.0, 0.5, 0.5)


def test_search_plan_as_text(empty_dir):
    result = CliRunner().invoke(app, ["search", "--method", "pc", "--dataset", "cifar100",
                                      "--teacher", "vgg13", "--student", "vgg8", "--samples", "5",
                                      "--dry-run", "--data-dir", "no-data-here"])
    assert result.exit_code == 0, result.output
    assert "vgg13 -> vgg8  pc: 5 trials x 20 epochs" in result.stdout
    assert "{embedding, stage4, stage3}" in result.stdout and "first embedding" in result.stdout
    assert "dry run: nothing started, nothing written" in result.stderr
    assert list(empty_dir.iterdir()) == []
