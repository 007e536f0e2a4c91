"""Model registry. Every model names its taps; `Tapped` reads them without rewriting the model.

The zoo: RepDistiller's CIFAR models (exact architectures and state_dict keys, so its and
mdistiller's checkpoints load), torchvision's ImageNet models, and two small CNNs for digits.
"""

import functools
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.feature_extraction import NodePathTracer, create_feature_extractor

from pcbench import plugins
from pcbench.errors import UserError
from pcbench.models import imagenet
from pcbench.models.base import TapModel
from pcbench.models.cnn import SmallCNN
from pcbench.models.mobilenetv2 import MobileNetV2, mobilenetv2_half
from pcbench.models.resnet import CifarResNet, resnet
from pcbench.models.resnet_bottleneck import BottleneckResNet, resnet50_cifar
from pcbench.models.shufflenet import ShuffleNetV1, ShuffleNetV2
from pcbench.models.vgg import VGG, vgg
from pcbench.models.wrn import WideResNet, wrn


@dataclass(frozen=True)
class ZooEntry:
    family: str
    source: str  # whose architecture and state_dict keys: repdistiller, torchvision, pcbench
    dataset: str  # what it is built for; its number of classes and input channels below
    model_class: type[TapModel]  # holds the class-level facts: taps, stages, post-ReLU
    build: Callable[..., TapModel]  # build(num_classes=..., in_channels=...)
    num_classes: int
    in_channels: int


def _cifar(family: str, model_class: type[TapModel], build: Callable[..., TapModel]) -> ZooEntry:
    return ZooEntry(family, "repdistiller", "cifar100", model_class, build, 100, 3)


def _imagenet(family: str, model_class: type[TapModel], build: Callable[..., TapModel]) -> ZooEntry:
    return ZooEntry(family, "torchvision", "imagenet", model_class, build, 1000, 3)


def _digits(widths: tuple[int, int, int]) -> ZooEntry:
    return ZooEntry("cnn", "pcbench", "digits", SmallCNN, lambda **kw: SmallCNN(widths, **kw), 10, 1)


_ZOO: dict[str, ZooEntry] = {
    **{f"resnet{d}": _cifar("resnet", CifarResNet, resnet(d)) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": _cifar("resnet", CifarResNet, resnet(8, wide=True)),
    "resnet32x4": _cifar("resnet", CifarResNet, resnet(32, wide=True)),
    "ResNet50": _cifar("resnet", BottleneckResNet, resnet50_cifar),
    **{f"wrn_{d}_{k}": _cifar("wrn", WideResNet, wrn(d, k)) for d in (16, 40) for k in (1, 2)},
    **{name: _cifar("vgg", VGG, vgg(name)) for name in ("vgg8", "vgg11", "vgg13", "vgg16", "vgg19")},
    "MobileNetV2": _cifar("mobilenetv2", MobileNetV2, mobilenetv2_half),
    "ShuffleV1": _cifar("shufflenet", ShuffleNetV1, ShuffleNetV1),
    "ShuffleV2": _cifar("shufflenet", ShuffleNetV2, ShuffleNetV2),
    "resnet18": _imagenet("resnet", imagenet.ImageNetResNet, imagenet.resnet18),
    "resnet34": _imagenet("resnet", imagenet.ImageNetResNet, imagenet.resnet34),
    "resnet50": _imagenet("resnet", imagenet.ImageNetResNet, imagenet.resnet50),
    "mobilenet_v2": _imagenet("mobilenetv2", imagenet.ImageNetMobileNetV2, imagenet.mobilenet_v2),
    "cnn_large": _digits((32, 64, 128)),
    "cnn_small": _digits((8, 16, 32)),
}


def register_model(name: str, *, num_classes: int = 10, in_channels: int = 3, dataset: str = "",
                   family: str | None = None):
    """Class decorator for a plug-in's model: a TapModel subclass built as
    `cls(num_classes=..., in_channels=...)` (the defaults: what it is built for)."""
    def decorate(cls: type[TapModel]) -> type[TapModel]:
        if not (isinstance(cls, type) and issubclass(cls, TapModel)):
            raise UserError(f"model '{name}': {getattr(cls, '__qualname__', cls)} is not a subclass of "
                            f"pcbench.models.base.TapModel; derive it from TapModel and name its taps")
        existing = _ZOO.get(name)
        plugins.check_unique("model", name, cls, existing.model_class if existing else None)
        _ZOO[name] = ZooEntry(family or name, plugins.origin(cls.__module__), dataset, cls, cls,
                              num_classes, in_channels)
        shapes_of.cache_clear()
        return cls
    return decorate


def model_names() -> list[str]:
    return sorted(_ZOO)


def _entry(name: str) -> ZooEntry:
    if name not in _ZOO:
        raise UserError(f"unknown model '{name}': choose one of {', '.join(model_names())}")
    return _ZOO[name]


def create_model(name: str, num_classes: int = 100, in_channels: int = 3) -> TapModel:
    return _entry(name).build(num_classes=num_classes, in_channels=in_channels)


def tap_names(name: str) -> list[str]:
    """The model's taps, known without building it."""
    return list(_entry(name).model_class.TAP_NODES)


def stage_taps(name: str) -> list[str]:
    return _entry(name).model_class.stage_names()


@dataclass(frozen=True)
class ZooInfo:
    """One line of the zoo, for listing: parameters counted for the data set it is built for."""

    name: str
    family: str
    source: str
    dataset: str
    params: int
    stages: int
    stages_post_relu: bool
    taps: tuple[str, ...]


def zoo_info() -> list[ZooInfo]:
    """Every registered model, by name. Parameters are counted on the meta device (no memory
    allocated, no weights initialised): the whole zoo in under a second."""
    rows = []
    for name in model_names():
        entry = _ZOO[name]
        with torch.device("meta"):
            model = entry.build(num_classes=entry.num_classes, in_channels=entry.in_channels)
        facts = entry.model_class
        rows.append(ZooInfo(name, entry.family, entry.source, entry.dataset,
                            sum(p.numel() for p in model.parameters()), len(facts.stage_names()),
                            facts.STAGES_POST_RELU, tuple(facts.TAP_NODES)))
    return rows


@dataclass(frozen=True)
class ModelInfo:
    """What a method may know about a model before training: per-sample tap shapes, stages."""

    name: str
    tap_shapes: dict[str, tuple[int, ...]]
    stages: tuple[str, ...]
    stages_post_relu: bool = True


@functools.lru_cache(maxsize=None)
def shapes_of(name: str, input_shape: tuple[int, ...]) -> ModelInfo:
    """A model's tap shapes for inputs of `input_shape`, traced on the meta device: no memory,
    no weights, a fraction of a second (for checks before anything runs)."""
    with torch.device("meta"):
        return model_info(create_model(name, num_classes=10, in_channels=input_shape[0]), input_shape, name)


PREACT = "/preact"  # suffix of a tap name: that tap before its closing ReLU


def preact_nodes(model: TapModel) -> dict[str, str]:
    """For each stage, the graph node (torchvision's node name) holding it before its closing
    ReLU, what RepDistiller's models return with `preact=True`; a model whose stages are
    pre-activations (STAGES_POST_RELU False: WRN, MobileNetV2) gives the stage itself. Left out:
    a post-activation stage that does not close with a ReLU (ShuffleNetV2's ends in a channel
    shuffle of ReLU outputs), and one closed by an in-place ReLU, which overwrites the
    pre-activation before anyone reads it."""
    if not model.STAGES_POST_RELU:
        return {tap: model.TAP_NODES[tap] for tap in model.stage_taps}
    tracer, nodes = _preact_graph(model)
    return {tap: tracer.node_to_qualname[node] for tap, node in nodes.items()}


def _preact_graph(model: TapModel) -> tuple[NodePathTracer, dict[str, torch.fx.Node]]:
    """The traced graph's node of each stage's pre-activation (see `preact_nodes`)."""
    tracer = NodePathTracer()  # the tracer behind create_feature_extractor: the same node names
    graph = tracer.trace(model)
    found = {}
    for tap in model.stage_taps:
        query = model.TAP_NODES[tap]  # as create_feature_extractor: the module's last node
        node = [n for n in graph.nodes
                if re.fullmatch(rf"{re.escape(query)}(\..*)?", tracer.node_to_qualname.get(n, ""))][-1]
        if not model.STAGES_POST_RELU:
            found[tap] = node
            continue
        if node.op == "call_module":
            relu = model.get_submodule(node.target)
            is_relu, in_place = isinstance(relu, nn.ReLU), getattr(relu, "inplace", False)
        else:
            is_relu = node.target in (F.relu, torch.relu, torch.relu_, "relu", "relu_")
            in_place = (node.target in (torch.relu_, "relu_") or node.kwargs.get("inplace", False)
                        or (node.target is F.relu and len(node.args) > 1 and node.args[1]))
        if is_relu and not in_place:
            found[tap] = node.args[0]
    return tracer, found


def preact_batchnorms(model: TapModel) -> dict[str, tuple[str, bool]]:
    """For each stage, the BatchNorm whose scale and shift describe its pre-activation, as
    RepDistiller's and mdistiller's `get_bn_before_relu` (OFD's margins): (its module path,
    `applied`). `applied` False: the BatchNorm ends the pre-activation (`<stage>/preact`), or,
    where that is a residual sum, the block's own branch (not the shortcut, not the block's
    input). `applied` True, on a pre-activation stage (WRN) that no BatchNorm ends: the one that
    next normalises the stage's output; the references' pre-activation of such a stage is that
    BatchNorm applied to it, which a method must do itself (the ReLU after it is in place).
    Left out: stages with neither."""
    tracer, nodes = _preact_graph(model)

    def batchnorm(node) -> bool:
        return (isinstance(node, torch.fx.Node) and node.op == "call_module"
                and isinstance(model.get_submodule(node.target), nn.modules.batchnorm._BatchNorm))

    found = {}
    for tap, node in nodes.items():
        if batchnorm(node):
            found[tap] = (node.target, False)
        elif node.op == "call_function" and node.target in (operator.add, torch.add):
            block = tracer.node_to_qualname[node].rpartition(".")[0]  # the module the sum is in
            own = [a.target for a in node.args
                   if batchnorm(a) and (not block or a.target.startswith(block + "."))]
            if own:
                found[tap] = (own[0], False)
        if tap not in found and not model.STAGES_POST_RELU:
            if after := [u.target for u in node.users if batchnorm(u)]:
                found[tap] = (after[0], True)
    return found


@functools.lru_cache(maxsize=None)
def preact_batchnorm_stages(name: str) -> tuple[str, ...]:
    """The stages of zoo model `name` that `preact_batchnorms` finds a BatchNorm for (traced
    once, on the meta device, for checks before anything runs)."""
    with torch.device("meta"):
        return tuple(preact_batchnorms(create_model(name)))


@functools.lru_cache(maxsize=None)
def preact_stages(name: str) -> tuple[str, ...]:
    """The stages of zoo model `name` whose pre-activation `Tapped` can read: traced once, on
    the meta device (for checks before anything runs)."""
    with torch.device("meta"):
        return tuple(preact_nodes(create_model(name)))


class Tapped(nn.Module):
    """Runs a model and returns its logits plus the named taps (torchvision feature extraction).
    A tap named `<stage>/preact` is that stage before its closing ReLU (`preact_nodes`).

    The extractor shares the model's leaf modules, so it is kept out of the module tree: the
    model alone owns the parameters and its state_dict keys stay those of the plain model.
    """

    def __init__(self, model: TapModel, taps: set[str], compile: str = "off"):
        super().__init__()
        self.model = model
        node_of = {t: model.TAP_NODES[t] for t in sorted(taps | {"logits"}) if not t.endswith(PREACT)}
        if wanted := {t.removesuffix(PREACT) for t in taps if t.endswith(PREACT)}:
            preacts = preact_nodes(model)
            if missing := wanted - set(preacts):
                raise ValueError(f"{type(model).__name__} cannot give the pre-activation of "
                                 f"{', '.join(sorted(missing))} (no ReLU, or an in-place one, closes it)")
            node_of.update({t + PREACT: preacts[t] for t in wanted})
        nodes = {}  # one output per node: a tap and its pre-activation may be one node (WRN)
        for tap, node in node_of.items():
            nodes.setdefault(node, tap)
        self.aliases = {tap: nodes[node] for tap, node in node_of.items() if nodes[node] != tap}
        extractor = create_feature_extractor(model, nodes)
        if compile != "off":  # torch.compile's mode: "default" or "reduce-overhead" (CUDA graphs)
            extractor = torch.compile(extractor, mode=compile)
        object.__setattr__(self, "_extractor", extractor)

    def train(self, mode: bool = True):
        super().train(mode)
        self._extractor.train(mode)  # picks the extractor's train or eval graph
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self._extractor(x)
        for tap, same in self.aliases.items():
            out[tap] = out[same]
        return out


def model_info(model: TapModel, input_shape: tuple[int, ...], name: str = "") -> ModelInfo:
    taps = set(model.TAP_NODES)
    was_training = model.training
    with torch.no_grad():
        out = Tapped(model, taps).eval()(torch.zeros(2, *input_shape))
    model.train(was_training)
    return ModelInfo(name, {k: tuple(v.shape[1:]) for k, v in out.items()}, tuple(model.stage_taps),
                     model.STAGES_POST_RELU)
