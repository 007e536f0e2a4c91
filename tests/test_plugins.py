"""Plug-ins: a user's method (the tutorial's examples/my_method.py), model, data set and
recipe, registered with pcbench's own decorators and loaded by --plugin, a suite's `plugins:`
or the Python API; trials on the real local Ray instance import them in their own processes."""

import shutil
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import pcbench
from pcbench import plugins
from pcbench.cli import app

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "my_method.py"


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """An empty folder outside the repository, the tutorial's plug-in copied in as mymethod.py.
    Each test's plug-in modules are its own: forgotten when it ends (a user's process imports
    its plug-ins once; these tests import files of the same names from different folders)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    shutil.copy(EXAMPLE, tmp_path / "mymethod.py")
    yield tmp_path
    _forget(("mymethod", "bad", "parts"))


def _forget(modules: tuple[str, ...]) -> None:
    """What these test plug-ins registered, and their modules: the registries are the
    process's, and other tests list them whole."""
    import pcbench.data as data
    import pcbench.methods as methods
    import pcbench.models as models
    import pcbench.recipes as recipes

    for registry, module_of in ((methods._REGISTRY, lambda cls: cls.__module__),
                                (methods._VARIANTS, lambda cls: cls.__module__),
                                (models._ZOO, lambda entry: entry.model_class.__module__),
                                (data._DATASETS, lambda entry: entry.load.__module__),
                                (recipes._MAKERS, lambda make: make.__module__)):
        for name in [n for n, value in registry.items() if module_of(value) in modules]:
            del registry[name]
            if registry is recipes._MAKERS:
                del recipes.RECIPES[name]
    for name in modules:
        sys.modules.pop(name, None)
    plugins._loaded.clear()


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_the_tutorials_method_is_searched_on_ray_from_its_own_folder(folder, teacher_store, local_ray):
    result = _invoke("search", "--plugin", "./mymethod.py", "--method", "mine", "--method", "kd",
                     "--samples", 2, "--epochs", 2, "--concurrent", 2, "--teachers", teacher_store.root)
    assert result.exit_code == 0, result.output + repr(result.exception)
    trials = pd.read_parquet(folder / "pcbench-results" / "trials")
    mine = trials[trials.method == "mine"]
    assert len(mine) == 2 and mine.val_acc.notna().all() and (mine.status != "error").all()
    assert all(str(folder / "mymethod.py") in config for config in mine.config)  # what it needs
    listed = _invoke("methods", "--plugin", "./mymethod.py")
    assert listed.exit_code == 0
    assert any(line.split() == ["mine", "plugin", "mymethod"] for line in listed.stdout.splitlines())


def test_the_python_api_searches_a_plugin_and_reads_its_trials(folder, teacher_store, local_ray):
    result = pcbench.search(method="mine", plugins=["./mymethod.py"], samples=2, epochs=2,
                            teachers=teacher_store.root)
    assert result.failed == 0 and result.trials == 2
    trials = pcbench.read_trials()
    assert len(trials) == 2 and set(trials.method) == {"mine"}
    assert len(result.read_trials()) == 2
    board = pcbench.read_leaderboard()
    assert list(board.method) == ["mine"] and board.val_acc.notna().all()


def test_a_plugin_method_gets_the_checks_and_the_shared_training_knobs(folder):
    plan = pcbench.search(["mine", "kd"], plugins=["mymethod.py"], teacher="vgg13", student="vgg8",
                          dataset="cifar100", data_dir="nowhere", dry_run=True)
    by = {e["method"]: e for e in plan.entries}
    assert by["mine"]["knobs"]["method.tap"]["choices"] == ["embedding", "stage4"]  # roles resolved
    assert {k for k in by["mine"]["knobs"] if k.startswith("train.")} == \
        {k for k in by["kd"]["knobs"] if k.startswith("train.")}
    assert by["mine"]["first_point"]["method.weight"] == 1.0
    plan = pcbench.search("mine+kd", plugins=["mymethod.py"], dry_run=True)  # a +kd variant too
    assert plan.entries[0]["first_point"]["method.w_kd"] == 1.0


def test_a_suite_names_its_plugins_relative_to_itself(folder):
    (folder / "suite.yaml").write_text(textwrap.dedent("""\
        name: mine-vs-kd
        dataset: digits
        recipe: digits
        plugins: [mymethod.py]
        pairs: [{teacher: cnn_large, student: cnn_small}]
        methods: [mine, kd]
        budget: {trials: 2, epochs: 2}
    """))
    other = folder / "elsewhere"
    other.mkdir()
    plan = pcbench.benchmark(folder / "suite.yaml", dry_run=True, results=str(other / "r"))
    assert [e["method"] for e in plan.entries] == ["mine", "kd"]


PARTS = textwrap.dedent("""\
    from typing import ClassVar
    import torch
    from torch import nn
    from pcbench.data import register_dataset
    from pcbench.data.digits import load as load_digits
    from pcbench.models import register_model
    from pcbench.models.base import TapModel
    from pcbench.recipes import register_recipe

    @register_model("tiny", num_classes=10, in_channels=1)
    class Tiny(TapModel):
        TAP_NODES: ClassVar[dict[str, str]] = {"stem": "stem", "stage1": "stage", "embedding": "pool",
                                               "logits": "fc"}

        def __init__(self, num_classes=10, in_channels=1):
            super().__init__()
            self.stem = nn.Conv2d(in_channels, 4, 3, padding=1)
            self.stage = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU())
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(8, num_classes)

        def forward_stem(self, x):
            return self.stem(x)

        def stage_blocks(self):
            return [self.stage]

        def head(self, h):
            return self.fc(self.pool(h))

    @register_dataset("digits-low", input_shape=(1, 8, 8), num_classes=3, val_fraction=0.2, embedded=True)
    def low_digits(root, val_fraction, split_seed, loader_workers):
        return load_digits(val_fraction, split_seed, range(3))

    @register_recipe("quick")
    def quick():
        return {"data": {"batch_size": 32}, "train": {"epochs": 2, "lr": 0.1, "schedule": "cosine"}}
""")


def test_a_plugin_model_data_set_and_recipe_train_a_run(folder):
    (folder / "parts.py").write_text(PARTS)
    result = pcbench.run("ce", plugins=["parts.py"], student="tiny", dataset="digits-low", recipe="quick",
                         ray=False)
    trials = result.read_trials()
    assert result.failed == 0 and len(trials) == 1
    row = trials.iloc[0]
    assert (row.student, row.dataset, row.recipe, row.epochs_run) == ("tiny", "digits-low", "quick", 2)
    assert 0.0 <= row.test_acc <= 1.0


@pytest.mark.parametrize("source, command, message", [
    (None, ["methods", "--plugin", "./missing.py"], "plugin ./missing.py: no such file or folder"),
    ("import nonexistent_package\n", ["methods", "--plugin", "./bad.py"],
     "failed to import: ModuleNotFoundError: No module named 'nonexistent_package' (bad.py, line 1)"),
    ("raise ValueError('the lab server is down')\n", ["methods", "--plugin", "./bad.py"],
     "failed to import: ValueError: the lab server is down"),
    ("from pcbench.methods import register\nfrom pcbench.methods.kd import KD\n"
     "@register\nclass Mine(KD):\n    name = 'kd'\n", ["methods", "--plugin", "./bad.py"],
     "method 'kd' is already registered by pcbench; give yours another name"),
    ("from pcbench.methods import register\n@register\nclass Mine:\n    name = 'mine'\n",
     ["methods", "--plugin", "./bad.py"], "is not a subclass of pcbench.methods.Method"),
    ("from typing import Literal\nfrom pcbench.methods import Method, MethodConfig, register\n"
     "class C(MethodConfig):\n    name: Literal['nospace'] = 'nospace'\n"
     "@register\nclass M(Method):\n    name = 'nospace'\n    Config = C\n",
     ["search", "--plugin", "./bad.py", "--method", "nospace", "--dry-run"],
     "has no search space: give its class a `space` mapping of knobs, or put nospace.yaml beside"),
    (None, ["search", "--plugin", "no_such_module_anywhere", "--method", "kd", "--dry-run"],
     "no module named 'no_such_module_anywhere' on the Python path"),
])
def test_a_bad_plugin_is_one_line_and_exit_2(folder, source, command, message):
    if source is not None:
        (folder / "bad.py").write_text(source)
    before = sorted(p.name for p in folder.iterdir())
    result = _invoke(*command)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (result.output, result.exception)
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert sorted(p.name for p in folder.iterdir() if p.name != "__pycache__") == before


def test_the_tutorial_shows_the_example_as_it_is():
    tutorial = (Path(__file__).resolve().parents[1] / "docs" / "tutorial.md").read_text()
    shown = tutorial.split("```python\n")[1].split("```")[0]
    example = EXAMPLE.read_text()
    missing = [line for line in shown.splitlines() if line.strip() and line.rstrip() not in example]
    assert not missing, missing


def test_a_suite_may_use_a_recipe_its_own_plugin_registers(folder):
    (folder / "parts.py").write_text(PARTS)
    (folder / "suite.yaml").write_text(textwrap.dedent("""\
        name: tiny
        dataset: digits-low
        recipe: quick
        plugins: [parts.py]
        pairs: [{teacher: tiny, student: tiny}]
        methods: [ce]
        budget: {trials: 2}
    """))
    plan = pcbench.benchmark("suite.yaml", dry_run=True)
    assert plan.entries[0]["budget"] == {"trials": 2, "epochs": 2}  # the plug-in recipe's length


def test_a_plugin_method_may_not_take_a_settings_section_name(folder):
    (folder / "bad.py").write_text("from pcbench.methods.kd import KD\nfrom pcbench.methods import register\n"
                                   "@register\nclass Train(KD):\n    name = 'train'\n")
    result = _invoke("methods", "--plugin", "bad.py")
    assert result.exit_code == 2 and "'train' names a section of a trial's settings" in result.stderr


def test_one_plugin_given_as_a_string_is_one_plugin(folder):
    assert ("mine", "plugin mymethod") in pcbench.api.methods("mymethod.py")
