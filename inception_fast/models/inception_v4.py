"""Inception-v4 (Szegedy et al., "Inception-v4, Inception-ResNet and the Impact of Residual
Connections on Learning", 2016), with the module names of timm's `inception_v4`, so its state_dict
(`features.N...`, `last_linear`) loads with strict=True, both ways.

Blocks as the paper and timm name them: the stem (features.0-2, then Mixed3a, Mixed4a, Mixed5a:
each a concat of a conv path and a pooling or second conv path), InceptionA (35x35, x4),
ReductionA (35 -> 17), InceptionB (17x17 with factorised 7x7, x7), ReductionB (17 -> 8), InceptionC
(8x8 with expanded 1x3/3x1 outputs, x3). Every conv-BN-ReLU is a ConvBNReLU (BatchNorm eps 1e-3, as
the TensorFlow weights were trained with), so the model runs on the reference or the fused path with
the same parameters.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from inception_fast.layers import BranchBlock, ConvBNReLU, Fork, MaxPool2d
from inception_fast.models._base import InceptionModel
from inception_fast.models._registry import register_model
from inception_fast.models._weights import load_pretrained

# The smallest input the stem and the two grid reductions leave a non-empty map for: 75 -> 37 (conv
# stride 2) -> 35 -> 17 (Mixed3a) -> 15 (Mixed4a) -> 7 (Mixed5a) -> 3 (ReductionA) -> 1 (ReductionB).
# Measured against timm: 74 fails inside ReductionB, 75 gives a 1x1 map.
MIN_INPUT_SIZE = 75

INCEPTION_MEAN, INCEPTION_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def _avg_pool_3x3() -> nn.AvgPool2d:
    # TensorFlow's 'SAME' average pooling divides by the number of real pixels at the border, so the
    # ported weights (and timm) exclude the padding; torchvision's inception_v3 counts it instead.
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


class Mixed3a(BranchBlock):
    def __init__(self):
        super().__init__()
        self.maxpool = MaxPool2d(3, stride=2)
        self.conv = ConvBNReLU(64, 96, kernel_size=3, stride=2)

    def forward(self, x):
        return torch.cat((self.maxpool(x), self.conv(x)), 1)

    def branches(self):
        return [[self.maxpool], [self.conv]]


class Mixed4a(BranchBlock):
    def __init__(self):
        super().__init__()
        self.branch0 = nn.Sequential(
            ConvBNReLU(160, 64, kernel_size=1),
            ConvBNReLU(64, 96, kernel_size=3),
        )
        self.branch1 = nn.Sequential(
            ConvBNReLU(160, 64, kernel_size=1),
            ConvBNReLU(64, 64, kernel_size=(1, 7), padding=(0, 3)),
            ConvBNReLU(64, 64, kernel_size=(7, 1), padding=(3, 0)),
            ConvBNReLU(64, 96, kernel_size=3),
        )

    def forward(self, x):
        return torch.cat((self.branch0(x), self.branch1(x)), 1)


class Mixed5a(BranchBlock):
    def __init__(self):
        super().__init__()
        self.conv = ConvBNReLU(192, 192, kernel_size=3, stride=2)
        self.maxpool = MaxPool2d(3, stride=2)

    def forward(self, x):
        return torch.cat((self.conv(x), self.maxpool(x)), 1)

    def branches(self):
        return [[self.conv], [self.maxpool]]


class InceptionA(BranchBlock):
    def __init__(self):
        super().__init__()
        self.branch0 = ConvBNReLU(384, 96, kernel_size=1)
        self.branch1 = nn.Sequential(
            ConvBNReLU(384, 64, kernel_size=1),
            ConvBNReLU(64, 96, kernel_size=3, padding=1),
        )
        self.branch2 = nn.Sequential(
            ConvBNReLU(384, 64, kernel_size=1),
            ConvBNReLU(64, 96, kernel_size=3, padding=1),
            ConvBNReLU(96, 96, kernel_size=3, padding=1),
        )
        self.branch3 = nn.Sequential(_avg_pool_3x3(), ConvBNReLU(384, 96, kernel_size=1))

    def forward(self, x):
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1)


class ReductionA(BranchBlock):
    """Mixed6a: 35x35x384 -> 17x17x1024."""

    def __init__(self):
        super().__init__()
        self.branch0 = ConvBNReLU(384, 384, kernel_size=3, stride=2)
        self.branch1 = nn.Sequential(
            ConvBNReLU(384, 192, kernel_size=1),
            ConvBNReLU(192, 224, kernel_size=3, padding=1),
            ConvBNReLU(224, 256, kernel_size=3, stride=2),
        )
        self.branch2 = MaxPool2d(3, stride=2)

    def forward(self, x):
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)


class InceptionB(BranchBlock):
    def __init__(self):
        super().__init__()
        self.branch0 = ConvBNReLU(1024, 384, kernel_size=1)
        self.branch1 = nn.Sequential(
            ConvBNReLU(1024, 192, kernel_size=1),
            ConvBNReLU(192, 224, kernel_size=(1, 7), padding=(0, 3)),
            ConvBNReLU(224, 256, kernel_size=(7, 1), padding=(3, 0)),
        )
        self.branch2 = nn.Sequential(
            ConvBNReLU(1024, 192, kernel_size=1),
            ConvBNReLU(192, 192, kernel_size=(7, 1), padding=(3, 0)),
            ConvBNReLU(192, 224, kernel_size=(1, 7), padding=(0, 3)),
            ConvBNReLU(224, 224, kernel_size=(7, 1), padding=(3, 0)),
            ConvBNReLU(224, 256, kernel_size=(1, 7), padding=(0, 3)),
        )
        self.branch3 = nn.Sequential(_avg_pool_3x3(), ConvBNReLU(1024, 128, kernel_size=1))

    def forward(self, x):
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1)


class ReductionB(BranchBlock):
    """Mixed7a: 17x17x1024 -> 8x8x1536."""

    def __init__(self):
        super().__init__()
        self.branch0 = nn.Sequential(
            ConvBNReLU(1024, 192, kernel_size=1),
            ConvBNReLU(192, 192, kernel_size=3, stride=2),
        )
        self.branch1 = nn.Sequential(
            ConvBNReLU(1024, 256, kernel_size=1),
            ConvBNReLU(256, 256, kernel_size=(1, 7), padding=(0, 3)),
            ConvBNReLU(256, 320, kernel_size=(7, 1), padding=(3, 0)),
            ConvBNReLU(320, 320, kernel_size=3, stride=2),
        )
        self.branch2 = MaxPool2d(3, stride=2)

    def forward(self, x):
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)


class InceptionC(BranchBlock):
    def __init__(self):
        super().__init__()
        self.branch0 = ConvBNReLU(1536, 256, kernel_size=1)
        self.branch1_0 = ConvBNReLU(1536, 384, kernel_size=1)
        self.branch1_1a = ConvBNReLU(384, 256, kernel_size=(1, 3), padding=(0, 1))
        self.branch1_1b = ConvBNReLU(384, 256, kernel_size=(3, 1), padding=(1, 0))
        self.branch2_0 = ConvBNReLU(1536, 384, kernel_size=1)
        self.branch2_1 = ConvBNReLU(384, 448, kernel_size=(3, 1), padding=(1, 0))
        self.branch2_2 = ConvBNReLU(448, 512, kernel_size=(1, 3), padding=(0, 1))
        self.branch2_3a = ConvBNReLU(512, 256, kernel_size=(1, 3), padding=(0, 1))
        self.branch2_3b = ConvBNReLU(512, 256, kernel_size=(3, 1), padding=(1, 0))
        self.branch3 = nn.Sequential(_avg_pool_3x3(), ConvBNReLU(1536, 256, kernel_size=1))

    def forward(self, x):
        x0 = self.branch0(x)
        x1 = self.branch1_0(x)
        x1 = torch.cat((self.branch1_1a(x1), self.branch1_1b(x1)), 1)
        x2 = self.branch2_2(self.branch2_1(self.branch2_0(x)))
        x2 = torch.cat((self.branch2_3a(x2), self.branch2_3b(x2)), 1)
        return torch.cat((x0, x1, x2, self.branch3(x)), 1)

    def branches(self):
        return [[self.branch0], [self.branch1_0, Fork(([self.branch1_1a], [self.branch1_1b]))],
                [self.branch2_0, self.branch2_1, self.branch2_2, Fork(([self.branch2_3a], [self.branch2_3b]))],
                list(self.branch3)]


class InceptionV4(InceptionModel):
    """timm's InceptionV4, same arguments (num_classes, in_chans, output_stride, drop_rate,
    global_pool) and module names; `features` is the whole trunk (features.0 ... features.21) and
    forward_features returns its 1536-channel map."""

    min_input_size = MIN_INPUT_SIZE
    _pool_attr, _drop_attr, _classifier_attr = "global_pool", "head_drop", "last_linear"
    layer_names = tuple(f"features.{i}" for i in range(22))
    feature_taps = (("features.2", 64, 2), ("features.3", 160, 4), ("features.9", 384, 8), ("features.17", 1024, 16),
                    ("features.21", 1536, 32))  # timm's inception_v4 feature_info
    default_cfg_template = {
        "architecture": "inception_v4", "tag": "tf_in1k",
        "url": "https://huggingface.co/timm/inception_v4.tf_in1k/resolve/main/model.safetensors",
        "hf_hub_id": "timm/inception_v4.tf_in1k",
        "peer": "timm inception_v4 (timm.create_model('inception_v4', pretrained=True): tf_in1k weights)",
        "input_size": (3, 299, 299), "pool_size": (8, 8), "min_input_size": (3, MIN_INPUT_SIZE, MIN_INPUT_SIZE),
        "crop_pct": 0.875, "crop_mode": "center", "interpolation": "bicubic",
        "mean": INCEPTION_MEAN, "std": INCEPTION_STD,
        "first_conv": "features.0.conv", "classifier": "last_linear", "num_classes": 1000,
        "license": "apache-2.0",
    }

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, output_stride: int = 32, drop_rate: float = 0.0,
                 global_pool: str = "avg"):
        super().__init__()
        if output_stride != 32:
            # timm asserts the same: the reductions use unpadded convs, there is no dilated variant.
            raise ValueError(f"inception_v4 supports only output_stride=32 (as timm's), got {output_stride}")
        self.in_chans = in_chans
        self.features = nn.Sequential(
            ConvBNReLU(in_chans, 32, kernel_size=3, stride=2),
            ConvBNReLU(32, 32, kernel_size=3),
            ConvBNReLU(32, 64, kernel_size=3, padding=1),
            Mixed3a(),
            Mixed4a(),
            Mixed5a(),
            *[InceptionA() for _ in range(4)],
            ReductionA(),  # Mixed6a
            *[InceptionB() for _ in range(7)],
            ReductionB(),  # Mixed7a
            *[InceptionC() for _ in range(3)],
        )
        self._init_head(1536, num_classes, drop_rate, global_pool)


@register_model
def inception_v4(pretrained: bool | str = False, pretrained_cfg=None, pretrained_cfg_overlay=None,
                 **kwargs) -> InceptionV4:
    """Inception-v4 as timm builds it (`timm.create_model('inception_v4', **kwargs)`).

    pretrained: True loads timm's tf_in1k weights (ported from TensorFlow-Slim); a string is a file or
    URL of a checkpoint with these names. pretrained_cfg / pretrained_cfg_overlay: timm's (see
    models/_registry.py).
    """
    changes = InceptionV4.cfg_changes(pretrained_cfg, pretrained_cfg_overlay)
    model = InceptionV4(**kwargs)
    model.apply_cfg_changes(changes)
    if pretrained:
        load_pretrained(model, None if pretrained is True else pretrained)
    return model
