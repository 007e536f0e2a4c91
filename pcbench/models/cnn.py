"""Small CNNs for the embedded default (8x8 digits): a stem, three stages, a pooled embedding."""

from typing import ClassVar

from torch import nn

from pcbench.models.base import TapModel


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),  # not in place: AB reads the pre-activation before it
    )


class SmallCNN(TapModel):
    """stem -> stage1 (full size) -> stage2 (1/2) -> stage3 (1/4) -> pool -> fc.

    Every stage ends in a ReLU, so stage outputs are post-activation features.
    """

    TAP_NODES: ClassVar[dict[str, str]] = {
        "stem": "stem",
        "stage1": "stages.0",
        "stage2": "stages.1",
        "stage3": "stages.2",
        "embedding": "pool",
        "logits": "fc",
    }

    def __init__(self, widths: tuple[int, int, int], num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        w1, w2, w3 = widths
        self.stem = conv_bn_relu(in_channels, w1)
        self.stages = nn.ModuleList([
            nn.Sequential(conv_bn_relu(w1, w1), conv_bn_relu(w1, w1)),
            nn.Sequential(conv_bn_relu(w1, w2, stride=2), conv_bn_relu(w2, w2)),
            nn.Sequential(conv_bn_relu(w2, w3, stride=2), conv_bn_relu(w3, w3)),
        ])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(w3, num_classes)

    def forward_stem(self, x):
        return self.stem(x)

    def stage_blocks(self):
        return list(self.stages)

    def head(self, h):
        return self.fc(self.pool(h))
