"""Inception-ResNet-v2 (Szegedy et al., "Inception-v4, Inception-ResNet and the Impact of Residual
Connections on Learning", 2016), with the module names of timm's `inception_resnet_v2`, so its
state_dict (conv2d_1a ... mixed_5b, repeat, mixed_6a, repeat_1, mixed_7a, repeat_2, block8,
conv2d_7b, classif) loads with strict=True, both ways.

Blocks as timm (and the TensorFlow-Slim port it comes from) name them: Mixed_5b (35x35 stem output,
320 channels), Block35 (Inception-ResNet-A, x10), Mixed_6a (35 -> 17), Block17 (Inception-ResNet-B,
x20), Mixed_7a (17 -> 8), Block8 (Inception-ResNet-C, x9, then one more without its ReLU).

Each residual block adds its branches, projected back to the trunk's width by a 1x1 conv with a
bias (a plain nn.Conv2d, `conv2d`, as timm names it), scaled down: the paper found that scaling the
residual by 0.1-0.3 keeps very deep Inception-ResNets from dying early in training. The add (and the
ReLU after it) is a ScaledResidual, one scaled_residual_add op on the fused path.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from inception_fast.layers import BranchBlock, ConvBNReLU, MaxPool2d
from inception_fast.models import _inception_resnet as _ir
from inception_fast.models._base import InceptionModel
from inception_fast.models._registry import register_model
from inception_fast.models._weights import load_pretrained

# The smallest input the stem and the two grid reductions leave a non-empty map for: 75 -> 37 (conv
# stride 2) -> 35 -> 17 (maxpool_3a) -> 15 (conv2d_4a) -> 7 (maxpool_5a) -> 3 (mixed_6a) -> 1
# (mixed_7a). Measured against timm: 74 fails inside mixed_7a, 75 gives a 1x1 map.
MIN_INPUT_SIZE = 75

INCEPTION_MEAN, INCEPTION_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


class Mixed_5b(BranchBlock):
    def __init__(self):
        super().__init__()
        self.branch0 = ConvBNReLU(192, 96, kernel_size=1)
        self.branch1 = nn.Sequential(
            ConvBNReLU(192, 48, kernel_size=1),
            ConvBNReLU(48, 64, kernel_size=5, padding=2),
        )
        self.branch2 = nn.Sequential(
            ConvBNReLU(192, 64, kernel_size=1),
            ConvBNReLU(64, 96, kernel_size=3, padding=1),
            ConvBNReLU(96, 96, kernel_size=3, padding=1),
        )
        self.branch3 = nn.Sequential(
            # TensorFlow's 'SAME' average pooling (and timm) leaves the padding out of the mean.
            nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
            ConvBNReLU(192, 64, kernel_size=1),
        )

    def forward(self, x):
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1)


# The paper's Inception-ResNet-v2 widths (Figures 16-18, and Table 1's k, l, m, n for Reduction-A).
class Block35(_ir.Block35):
    """Inception-ResNet-A on the 35x35x320 grid."""

    def __init__(self, scale: float = 1.0):
        super().__init__(320, 32, (32, 32), (32, 48, 64), scale)


class Mixed_6a(_ir.ReductionA):
    """Reduction-A: 35x35x320 -> 17x17x1088."""

    def __init__(self):
        super().__init__(320, k=256, l=256, m=384, n=384)


class Block17(_ir.Block17):
    """Inception-ResNet-B on the 17x17x1088 grid (factorised 7x7)."""

    def __init__(self, scale: float = 1.0):
        super().__init__(1088, 192, (128, 160, 192), scale)


class Mixed_7a(_ir.ReductionB):
    """Reduction-B: 17x17x1088 -> 8x8x2080."""

    def __init__(self):
        super().__init__(1088, (256, 384), (256, 288), (256, 288, 320))


class Block8(_ir.Block8):
    """Inception-ResNet-C on the 8x8x2080 grid. `no_relu` for the last one, whose sum goes straight
    into conv2d_7b (as in TensorFlow-Slim, `block8(net, activation_fn=None)`)."""

    def __init__(self, scale: float = 1.0, no_relu: bool = False):
        super().__init__(2080, 192, (192, 224, 256), scale, no_relu)


class InceptionResnetV2(InceptionModel):
    """timm's InceptionResnetV2, same arguments (num_classes, in_chans, drop_rate, output_stride,
    global_pool) and module names; forward_features returns conv2d_7b's 1536-channel map."""

    min_input_size = MIN_INPUT_SIZE
    _pool_attr, _drop_attr, _classifier_attr = "global_pool", "head_drop", "classif"
    layer_names = ("conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool_3a", "conv2d_3b", "conv2d_4a", "maxpool_5a",
                   "mixed_5b", "repeat", "mixed_6a", "repeat_1", "mixed_7a", "repeat_2", "block8", "conv2d_7b")
    feature_taps = (("conv2d_2b", 64, 2), ("conv2d_4a", 192, 4), ("repeat", 320, 8), ("repeat_1", 1088, 16),
                    ("conv2d_7b", 1536, 32))  # timm's inception_resnet_v2 feature_info
    default_cfg_template = {
        "architecture": "inception_resnet_v2", "tag": "tf_in1k",
        "url": "https://huggingface.co/timm/inception_resnet_v2.tf_in1k/resolve/main/model.safetensors",
        "hf_hub_id": "timm/inception_resnet_v2.tf_in1k",
        "peer": "timm inception_resnet_v2 (timm.create_model('inception_resnet_v2', pretrained=True): tf_in1k weights)",
        "input_size": (3, 299, 299), "pool_size": (8, 8), "min_input_size": (3, MIN_INPUT_SIZE, MIN_INPUT_SIZE),
        "crop_pct": 0.8975, "crop_mode": "center", "interpolation": "bicubic",
        "mean": INCEPTION_MEAN, "std": INCEPTION_STD,
        "first_conv": "conv2d_1a.conv", "classifier": "classif", "num_classes": 1000,
        "license": "apache-2.0",
    }
    pretrained_tags = {
        # Ensemble-adversarially trained (Tramer et al. 2017), ported by timm from TensorFlow.
        "tf_ens_adv_in1k": {
            "url": "https://huggingface.co/timm/inception_resnet_v2.tf_ens_adv_in1k/resolve/main/model.safetensors",
            "hf_hub_id": "timm/inception_resnet_v2.tf_ens_adv_in1k",
            "peer": "timm inception_resnet_v2.tf_ens_adv_in1k",
        },
    }

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0, output_stride: int = 32,
                 global_pool: str = "avg"):
        super().__init__()
        if output_stride != 32:
            # timm asserts the same: the reductions use unpadded convs, there is no dilated variant.
            raise ValueError(f"inception_resnet_v2 supports only output_stride=32 (as timm's), got {output_stride}")
        self.in_chans = in_chans
        _ir.add_stem(self, in_chans)  # conv2d_1a .. conv2d_4a
        self.maxpool_5a = MaxPool2d(3, stride=2)
        self.mixed_5b = Mixed_5b()
        # The paper's residual scales: 0.17, 0.10, 0.20 for the A, B and C blocks.
        self.repeat = nn.Sequential(*[Block35(scale=0.17) for _ in range(10)])
        self.mixed_6a = Mixed_6a()
        self.repeat_1 = nn.Sequential(*[Block17(scale=0.10) for _ in range(20)])
        self.mixed_7a = Mixed_7a()
        self.repeat_2 = nn.Sequential(*[Block8(scale=0.20) for _ in range(9)])
        # The last Block8 keeps the default scale 1.0, as in TensorFlow-Slim and timm.
        self.block8 = Block8(no_relu=True)
        self.conv2d_7b = ConvBNReLU(2080, 1536, kernel_size=1)
        self._init_head(1536, num_classes, drop_rate, global_pool)


@register_model
def inception_resnet_v2(pretrained: bool | str = False, pretrained_cfg=None, pretrained_cfg_overlay=None,
                        **kwargs) -> InceptionResnetV2:
    """Inception-ResNet-v2 as timm builds it (`timm.create_model('inception_resnet_v2', **kwargs)`).

    pretrained: True loads timm's tf_in1k weights (ported from TensorFlow-Slim), or those of the tag
    pretrained_cfg names ('tf_ens_adv_in1k'); a string is a file or URL of a checkpoint with these
    names. pretrained_cfg / pretrained_cfg_overlay: timm's (see models/_registry.py).
    """
    changes = InceptionResnetV2.cfg_changes(pretrained_cfg, pretrained_cfg_overlay)
    model = InceptionResnetV2(**kwargs)
    model.apply_cfg_changes(changes)
    if pretrained:
        load_pretrained(model, None if pretrained is True else pretrained)
    return model
