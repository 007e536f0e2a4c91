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

# Fine-tuning, for a student that starts from the teacher's weights (train.init_from_teacher):
# inductive transfer learning as the OT paper (Li et al., arXiv 2007.06737) evaluates it,
# against plain fine-tuning, L2-SP and DELTA. Those two fine-tune an ImageNet ResNet-101 with
# SGD, momentum 0.9, batch 64 and lr 0.01 (ImageNet from scratch: 0.1 at batch 256): L2-SP
# (Li, Grandvalet & Davoine, ICML 2018; run_classification/train.sh of the authors'
# holyseven/TransferLearningClassification) for 9,000 iterations, the rate x0.1 after 5,000;
# DELTA (Li et al., ICLR 2019; run.sh of lixingjian/DELTA) for 6,000, decayed to x0.1 at two
# thirds. Their plain fine-tuning (the L2 baseline) decays weights at 1e-4 (L2-SP's script:
# 1e-3 on the new classifier, which one optimizer setting cannot give). In epochs:
# L2-SP's 9,000 x 64 images, the decay at 5/9 of the run; the search's learning-rate range
# (search_spaces/training.yaml, relative) is then 0.0025..0.04 around 0.01.
_FINETUNE = {"data": {"batch_size": 64},
             "train": {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "schedule": "step", "gamma": 0.1}}


def _fine_tuning(epochs: int) -> dict[str, Any]:
    return {"data": dict(_FINETUNE["data"]),
            "train": {**_FINETUNE["train"], "epochs": epochs, "milestones": [round(epochs * 5 / 9)]}}


RECIPES = {"cifar100-crd": _CIFAR, "imagenet": _IMAGENET, "digits": _DIGITS,
           # ImageNet-style folders (224 crops) of a data set the size of Stanford Dogs (12,000
           # training images): 9,000 x 64 / 12,000 = 48 epochs (CUB's 5,994 images: 96)
           "finetune-folder": _fine_tuning(48),
           # CIFAR (50,000 training images): 9,000 x 64 / 50,000 = 11.5, so 12 epochs
           "finetune-cifar": _fine_tuning(12),
           # digits' halves (about 600 training images, where L2-SP's count would be 960
           # epochs): half the from-scratch digits recipe
           "finetune-digits": _fine_tuning(10)}


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
    if not isinstance(name, str) or name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}: choose one of {', '.join(recipe_names())}")
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
    overrides = overrides or {}
    # A pair's own recipe (a suite pair's `set: {train.recipe: ...}`, or --set) replaces the
    # suite's, so a pair that starts from the teacher's weights fine-tunes beside pairs that
    # train from scratch; its settings, not only its name, come with it.
    name = overrides.get("train.recipe") or (base.get("train") or {}).get("recipe") or name
    if not name:
        return base
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
