"""RepDistiller's CIFAR VGGs with BatchNorm (vgg8, 11, 13, 16, 19; its vgg*_bn): five conv
blocks with max pools between them, global average pool, one linear layer.

Module names follow RepDistiller's models/vgg.py (block0..4, classifier), so its checkpoints
load with strict=True. Each block ends in BN; the ReLU after it is applied in the forward.
"""

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pcbench.models.base import TapModel

# Output channels of each conv in block0..block4.
VGG_CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def conv_block(c_in: int, widths: list[int]) -> nn.Sequential:
    """conv(bias)-bn-relu per width, less the last ReLU (RepDistiller's _make_layers)."""
    layers: list[nn.Module] = []
    for c_out in widths:
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        c_in = c_out
    return nn.Sequential(*layers[:-1])


@torch.fx.wrap  # a test on the shape can't be traced; fx records this call as one node
def pool3_for_64px(h: torch.Tensor) -> torch.Tensor:
    """RepDistiller max-pools before block4 only when the input is 64x64, whose block3 output
    is 8x8; a 32x32 input reaches block4 at 4x4 unpooled, so stage3 and stage4 are both 4x4."""
    return F.max_pool2d(h, 2) if h.shape[-2] == 8 else h


class VGG(TapModel):
    """stem = relu(block0); stage k = max pool, block k, relu (k = 1..4); head = global
    average pool, flatten, classifier."""

    TAP_NODES: ClassVar[dict[str, str]] = {
        "stem": "relu",
        "stage1": "relu_1",
        "stage2": "relu_2",
        "stage3": "relu_3",
        "stage4": "relu_4",
        "embedding": "flatten",
        "logits": "classifier",
    }

    def __init__(self, config: list[list[int]], num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        c_in = in_channels
        for i, widths in enumerate(config):
            setattr(self, f"block{i}", conv_block(c_in, widths))
            c_in = widths[-1]
        self.classifier = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_stem(self, x):
        return F.relu(self.block0(x))

    def stage_blocks(self):
        return [self._stage1, self._stage2, self._stage3, self._stage4]

    def _stage1(self, h):
        return F.relu(self.block1(F.max_pool2d(h, 2)))

    def _stage2(self, h):
        return F.relu(self.block2(F.max_pool2d(h, 2)))

    def _stage3(self, h):
        return F.relu(self.block3(F.max_pool2d(h, 2)))

    def _stage4(self, h):
        return F.relu(self.block4(pool3_for_64px(h)))

    def head(self, h):
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


def vgg(name: str):
    return lambda **kw: VGG(VGG_CONFIGS[name], **kw)
