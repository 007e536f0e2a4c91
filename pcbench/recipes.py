"""Training recipes as named profiles: the published schedules, applied as the defaults of a
trial's `data` and `train` sections (a --set or a suite still overrides any of them)."""

from typing import Any, Callable

from pcbench import plugins
from pcbench.errors import UserError

# RepDistiller / CRD / FCFD / DKD on CIFAR-100: 240 epochs, batch 64, x0.1 at 150/180/210.
# Their scripts use lr 0.01 for the MobileNetV2 and ShuffleNet students.
_CIFAR = {"data": {"batch_size": 64},
          "train": {"epochs": 240, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
                    "schedule": "step", "milestones": [150, 180, 210], "gamma": 0.1}}
_CIFAR_SMALL_LR_STUDENTS = {"MobileNetV2", "ShuffleV1", "ShuffleV2"}

# torchvision's ImageNet reference (and CRD's): 100 epochs, batch 256, x0.1 at 30/60/90.
_IMAGENET = {"data": {"batch_size": 256},
             "train": {"epochs": 100, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4,
                       "schedule": "step", "milestones": [30, 60, 90], "gamma": 0.1}}

# The embedded default: digits, a few seconds an epoch on a CPU.
_DIGITS = {"data": {"batch_size": 64},
           "train": {"epochs": 20, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
                     "schedule": "cosine"}}

RECIPES = {"cifar100-crd": _CIFAR, "imagenet": _IMAGENET, "digits": _DIGITS}


def _built_in() -> dict[str, Any]:
    """Stands for pcbench's own recipes where a plug-in's would clash with one."""
    raise NotImplementedError


_MAKERS: dict[str, Callable] = {name: _built_in for name in RECIPES}  # who registered each


def register_recipe(name: str):
    """Decorator for a plug-in's recipe: a function returning its `data` and `train` settings
    ({"data": {"batch_size": 128}, "train": {"epochs": 90, "lr": 0.1, ...}})."""
    def decorate(make: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        fragment = make()
        if not isinstance(fragment, dict) or not set(fragment) <= {"data", "train"}:
            raise UserError(f"recipe '{name}': {make.__qualname__} must return a dict with 'data' "
                            f"and/or 'train' settings")
        plugins.check_unique("recipe", name, make, _MAKERS.get(name))
        RECIPES[name], _MAKERS[name] = fragment, make
        return make
    return decorate


def recipe_names() -> list[str]:
    return sorted(RECIPES)


def recipe(name: str, student: str | None = None) -> dict[str, Any]:
    """The recipe's `data` and `train` settings for this student, as a config fragment."""
    if name not in RECIPES:
        raise UserError(f"unknown recipe '{name}': choose one of {', '.join(recipe_names())}")
    fragment = {section: dict(values) for section, values in RECIPES[name].items()}
    if name == "cifar100-crd" and student in _CIFAR_SMALL_LR_STUDENTS:
        fragment["train"]["lr"] = 0.01
    fragment["train"]["recipe"] = name
    return fragment


def with_recipe(base: dict[str, Any], name: str | None,
                overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """`base` on top of the recipe: what the user gave explicitly wins. A shorter or longer
    run keeps the shape of the step schedule: the milestones scale with the epochs, whether
    `base` or the dotted `overrides` (--set, a suite's `set`) change them."""
    if not name:
        return base
    overrides = overrides or {}
    merged = recipe(name, base.get("student"))
    planned = merged["train"]["epochs"]
    for section, values in base.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = values
    train = merged["train"]
    epochs = overrides.get("train.epochs", train["epochs"])
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise UserError(f"train.epochs: {epochs!r} is not a positive whole number; "
                        f"set a valid value with --set train.epochs=...")
    explicit = "milestones" in base.get("train", {}) or "train.milestones" in overrides
    if "milestones" in train and not explicit:
        train["milestones"] = scale_milestones(train["milestones"], planned, epochs)
    return merged


def scale_milestones(milestones: list[int], planned: int, epochs: int) -> list[int]:
    """The same points of the schedule for a run of `epochs` instead of `planned`."""
    if epochs == planned:
        return list(milestones)
    return sorted({max(1, round(m * epochs / planned)) for m in milestones})
