"""Model registry. Every model names its taps; `Tapped` reads them without rewriting the model."""

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from pcbench.errors import UserError
from pcbench.models.base import TapModel
from pcbench.models.cnn import SmallCNN

_MODELS: dict[str, Callable[..., TapModel]] = {
    "cnn_large": lambda **kw: SmallCNN((32, 64, 128), **kw),
    "cnn_small": lambda **kw: SmallCNN((8, 16, 32), **kw),
}


def model_names() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, num_classes: int, in_channels: int) -> TapModel:
    if name not in _MODELS:
        raise UserError(f"unknown model '{name}': choose one of {', '.join(model_names())}")
    return _MODELS[name](num_classes=num_classes, in_channels=in_channels)


def tap_names(name: str) -> list[str]:
    return list(create_model(name, 1, 1).TAP_NODES)


def stage_taps(name: str) -> list[str]:
    return create_model(name, 1, 1).stage_taps


@dataclass(frozen=True)
class ModelInfo:
    """What a method may know about a model before training: per-sample tap shapes, stages."""

    name: str
    tap_shapes: dict[str, tuple[int, ...]]
    stages: tuple[str, ...]
    stages_post_relu: bool = True


class Tapped(nn.Module):
    """Runs a model and returns its logits plus the named taps (torchvision feature extraction).

    The extractor shares the model's leaf modules, so it is kept out of the module tree: the
    model alone owns the parameters and its state_dict keys stay those of the plain model.
    """

    def __init__(self, model: TapModel, taps: set[str]):
        super().__init__()
        self.model = model
        nodes = {model.TAP_NODES[t]: t for t in sorted(taps | {"logits"})}
        object.__setattr__(self, "_extractor", create_feature_extractor(model, nodes))

    def train(self, mode: bool = True):
        super().train(mode)
        self._extractor.train(mode)  # picks the extractor's train or eval graph
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._extractor(x)


def model_info(model: TapModel, input_shape: tuple[int, ...], name: str = "") -> ModelInfo:
    taps = set(model.TAP_NODES)
    was_training = model.training
    with torch.no_grad():
        out = Tapped(model, taps).eval()(torch.zeros(2, *input_shape))
    model.train(was_training)
    return ModelInfo(name, {k: tuple(v.shape[1:]) for k, v in out.items()}, tuple(model.stage_taps),
                     model.STAGES_POST_RELU)
