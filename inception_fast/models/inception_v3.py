"""Inception-v3 (Szegedy et al., "Rethinking the Inception Architecture", 2015), with the module
names of torchvision's `inception_v3`, so its state_dict (AuxLogits included) loads with strict=True.

`aux_logits=False` gives timm's `inception_v3` (the same names without AuxLogits), so timm's
state_dict loads too.

Blocks as the paper and torchvision name them: InceptionA (35x35, Mixed_5b-d), InceptionB (grid
reduction, Mixed_6a), InceptionC (17x17 with factorised 7x7, Mixed_6b-e), InceptionD (reduction,
Mixed_7a), InceptionE (8x8 with expanded 1x3/3x1 outputs, Mixed_7b-c), InceptionAux (the auxiliary
classifier on the 17x17 grid). Every conv-BN-ReLU is a ConvBNReLU, so the model runs on the reference
or the fused path with the same parameters.
"""
from __future__ import annotations

from collections import namedtuple
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from inception_fast.layers import BranchBlock, ConvBNReLU, Fork, MaxPool2d, _PathMixin, max_pool2d
from inception_fast.models._base import InceptionModel, imagenet_to_inception_input
from inception_fast.models._registry import register_model
from inception_fast.models._weights import load_pretrained

InceptionOutputs = namedtuple("InceptionOutputs", ["logits", "aux_logits"])

# The smallest input the stem and the three grid reductions leave a non-empty map for
# (the fine-tuning size of the seeds).
MIN_INPUT_SIZE = 75
# InceptionAux (5x5 average pool, stride 3, then a 5x5 conv) needs at least a 17x17 grid.
AUX_MIN_GRID = 17


@torch.fx.wrap
def _check_aux_grid(x: torch.Tensor) -> None:
    """The aux head's grid (a leaf under torch.fx, checked on the real map)."""
    if min(x.shape[-2:]) < AUX_MIN_GRID:
        raise ValueError(f"inception_v3's auxiliary classifier needs the {AUX_MIN_GRID}x{AUX_MIN_GRID} grid of a "
                         f"299x299 input, got {tuple(x.shape[-2:])} there; train smaller inputs with "
                         "aux_logits=False")


# The pool of the A, C and E blocks' pool branch (3x3, stride 1, padding 1): 'avg' as torchvision's
# (F.avg_pool2d's defaults: the padding counted); the FID network's (TensorFlow's 2015 graph, as
# pytorch-fid ports it): 'avg_exclude_pad' (count_include_pad=False) and, in its last block, 'max'.
POOL_BRANCHES = ("avg", "avg_exclude_pad", "max")


def _branch_pool_module(kind: str = "avg") -> nn.Module:
    """The pool branch's pool as a module (for branches())."""
    if kind == "max":
        return MaxPool2d(3, stride=1, padding=1)
    return nn.AvgPool2d(kernel_size=3, stride=1, padding=1, count_include_pad=kind == "avg")


class _PoolBranch(nn.Module):
    """The pool branch's pool of the A, C and E blocks, chosen by `pool_branch` (POOL_BRANCHES)."""

    pool_branch = "avg"

    def _set_pool_branch(self, kind: str) -> None:
        if kind not in POOL_BRANCHES:
            raise ValueError(f"pool_branch must be one of {POOL_BRANCHES}, got {kind!r}")
        self.pool_branch = kind

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_branch == "max":
            return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=self.pool_branch == "avg")


class InceptionA(_PoolBranch, BranchBlock):
    def __init__(self, in_channels: int, pool_features: int, pool_branch: str = "avg"):
        super().__init__()
        self._set_pool_branch(pool_branch)
        self.branch1x1 = ConvBNReLU(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = ConvBNReLU(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = ConvBNReLU(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = ConvBNReLU(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = ConvBNReLU(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = ConvBNReLU(96, 96, kernel_size=3, padding=1)
        self.branch_pool = ConvBNReLU(in_channels, pool_features, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(self._pool(x))
        return torch.cat([b1, b5, b3, bp], 1)

    def branches(self):
        return [[self.branch1x1], [self.branch5x5_1, self.branch5x5_2],
                [self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3],
                [_branch_pool_module(self.pool_branch), self.branch_pool]]


class _ReductionPool(_PathMixin):
    """The grid reductions' 3x3/2 max pool, functional as in torchvision's blocks, on the block's path
    (the max_pool op for CPU inference on the fused path)."""

    def _max_pool(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return F.max_pool2d(x, kernel_size=3, stride=2)
        else:
            return max_pool2d(x, kernel_size=3, stride=2, fused=self._use_fused())


class InceptionB(_ReductionPool, BranchBlock):
    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = ConvBNReLU(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = ConvBNReLU(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = ConvBNReLU(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = ConvBNReLU(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, bd, self._max_pool(x)], 1)

    def branches(self):
        return [[self.branch3x3], [self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3],
                [MaxPool2d(3, stride=2)]]


class InceptionC(_PoolBranch, BranchBlock):
    def __init__(self, in_channels: int, channels_7x7: int, pool_branch: str = "avg"):
        super().__init__()
        self._set_pool_branch(pool_branch)
        c7 = channels_7x7
        self.branch1x1 = ConvBNReLU(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = ConvBNReLU(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = ConvBNReLU(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBNReLU(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBNReLU(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = ConvBNReLU(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBNReLU(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBNReLU(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBNReLU(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = ConvBNReLU(in_channels, 192, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_3(self.branch7x7dbl_2(self.branch7x7dbl_1(x)))
        bd = self.branch7x7dbl_5(self.branch7x7dbl_4(bd))
        bp = self.branch_pool(self._pool(x))
        return torch.cat([b1, b7, bd, bp], 1)

    def branches(self):
        return [[self.branch1x1], [self.branch7x7_1, self.branch7x7_2, self.branch7x7_3],
                [self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                 self.branch7x7dbl_5], [_branch_pool_module(self.pool_branch), self.branch_pool]]


class InceptionD(_ReductionPool, BranchBlock):
    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = ConvBNReLU(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = ConvBNReLU(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = ConvBNReLU(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = ConvBNReLU(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBNReLU(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBNReLU(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, self._max_pool(x)], 1)

    def branches(self):
        return [[self.branch3x3_1, self.branch3x3_2],
                [self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4],
                [MaxPool2d(3, stride=2)]]


class InceptionE(_PoolBranch, BranchBlock):
    def __init__(self, in_channels: int, pool_branch: str = "avg"):
        super().__init__()
        self._set_pool_branch(pool_branch)
        self.branch1x1 = ConvBNReLU(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = ConvBNReLU(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = ConvBNReLU(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBNReLU(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBNReLU(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = ConvBNReLU(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = ConvBNReLU(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBNReLU(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = ConvBNReLU(in_channels, 192, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        bp = self.branch_pool(self._pool(x))
        return torch.cat([b1, b3, bd, bp], 1)

    def branches(self):
        return [[self.branch1x1], [self.branch3x3_1, Fork(([self.branch3x3_2a], [self.branch3x3_2b]))],
                [self.branch3x3dbl_1, self.branch3x3dbl_2, Fork(([self.branch3x3dbl_3a], [self.branch3x3dbl_3b]))],
                [_branch_pool_module(self.pool_branch), self.branch_pool]]


class InceptionAux(nn.Module):
    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.conv0 = ConvBNReLU(in_channels, 128, kernel_size=1)
        self.conv1 = ConvBNReLU(128, 768, kernel_size=5)
        self.conv1.stddev = 0.01
        self.fc = nn.Linear(768, num_classes)
        self.fc.stddev = 0.001

    def forward(self, x):
        x = self.conv1(self.conv0(F.avg_pool2d(x, kernel_size=5, stride=3)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1))


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INCEPTION_MEAN, INCEPTION_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


class Inception3(InceptionModel):
    """torchvision's Inception3, same arguments and attributes (aux_logits, transform_input,
    init_weights, dropout), plus timm's (in_chans, drop_rate, global_pool). Returns
    InceptionOutputs(logits, aux_logits) in training mode with aux_logits, else the logits."""

    min_input_size = MIN_INPUT_SIZE
    # The pool branch's pool of the A, C and E blocks by name, where it is not 'avg' (POOL_BRANCHES).
    pool_branches: ClassVar[dict[str, str]] = {}
    optional_prefixes = ("AuxLogits.",)
    aux_classifiers = ("AuxLogits.fc",)
    _pool_attr, _drop_attr, _classifier_attr = "avgpool", "dropout", "fc"
    layer_names = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                   "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                   "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")
    feature_taps = (("Conv2d_2b_3x3", 64, 2), ("Conv2d_4a_3x3", 192, 4), ("Mixed_5d", 288, 8), ("Mixed_6e", 768, 16),
                    ("Mixed_7c", 2048, 32))  # timm's inception_v3 feature_info
    default_cfg_template = {
        "license": "bsd-3-clause",  # the weights' source's
        "architecture": "inception_v3", "tag": "tv_in1k",
        "url": "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",
        "peer": "torchvision.models.inception_v3 (weights=Inception_V3_Weights.IMAGENET1K_V1); timm inception_v3",
        "input_size": (3, 299, 299), "pool_size": (8, 8), "min_input_size": (3, MIN_INPUT_SIZE, MIN_INPUT_SIZE),
        "crop_pct": 0.875, "crop_mode": "center", "interpolation": "bilinear",
        "mean": INCEPTION_MEAN, "std": INCEPTION_STD,
        "first_conv": "Conv2d_1a_3x3.conv", "classifier": "fc", "num_classes": 1000,
    }
    # timm's other tags: its ports of TensorFlow-Slim's weights and of Gluon's, without aux head weights.
    pretrained_tags = {
        tag: {"url": f"https://huggingface.co/timm/inception_v3.{tag}/resolve/main/model.safetensors",
              "hf_hub_id": f"timm/inception_v3.{tag}", "peer": f"timm inception_v3.{tag}",
              "interpolation": "bicubic", "license": "apache-2.0", **extra}
        for tag, extra in (("tf_in1k", {}), ("tf_adv_in1k", {}),
                           ("gluon_in1k", {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}))
    }

    def __init__(self, num_classes: int = 1000, aux_logits: bool = True, transform_input: bool = False,
                 init_weights: bool = True, dropout: float = 0.5, in_chans: int = 3, drop_rate: float | None = None,
                 global_pool: str = "avg"):
        super().__init__()
        if transform_input and in_chans != 3:
            raise ValueError("transform_input re-normalises 3 RGB channels; it needs in_chans=3")
        self.aux_logits = aux_logits
        self.transform_input = transform_input
        self.in_chans = in_chans
        self.Conv2d_1a_3x3 = ConvBNReLU(in_chans, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = ConvBNReLU(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = ConvBNReLU(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = ConvBNReLU(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = ConvBNReLU(80, 192, kernel_size=3)
        self.maxpool2 = MaxPool2d(kernel_size=3, stride=2)
        pool = self.pool_branches.get
        self.Mixed_5b = InceptionA(192, pool_features=32, pool_branch=pool("Mixed_5b", "avg"))
        self.Mixed_5c = InceptionA(256, pool_features=64, pool_branch=pool("Mixed_5c", "avg"))
        self.Mixed_5d = InceptionA(288, pool_features=64, pool_branch=pool("Mixed_5d", "avg"))
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128, pool_branch=pool("Mixed_6b", "avg"))
        self.Mixed_6c = InceptionC(768, channels_7x7=160, pool_branch=pool("Mixed_6c", "avg"))
        self.Mixed_6d = InceptionC(768, channels_7x7=160, pool_branch=pool("Mixed_6d", "avg"))
        self.Mixed_6e = InceptionC(768, channels_7x7=192, pool_branch=pool("Mixed_6e", "avg"))
        self.AuxLogits = InceptionAux(768, num_classes) if aux_logits else None
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool_branch=pool("Mixed_7b", "avg"))
        self.Mixed_7c = InceptionE(2048, pool_branch=pool("Mixed_7c", "avg"))
        self._init_head(2048, num_classes, dropout if drop_rate is None else drop_rate, global_pool)
        if transform_input:
            # The (x - 0.5) / 0.5 the Google weights expect is done inside: the caller normalises with
            # ImageNet's mean/std, as torchvision's transforms for these weights do.
            self.pretrained_cfg.update(mean=IMAGENET_MEAN, std=IMAGENET_STD)
        if init_weights:
            self._init_torchvision_style(std=0.1)  # conv1 of the aux head 0.01, its fc 0.001 (`stddev`)

    def _transform_input(self, x):
        return imagenet_to_inception_input(x) if self.transform_input else x

    def _prepare_input(self, x):
        x = self.check_input(x)
        return self._transform_input(x)

    def _drop_aux_heads(self):
        self.AuxLogits = None
        self.aux_logits = False

    def _features(self, x, with_aux: bool):
        x = self._prepare_input(x)
        aux = None
        for name in self.layer_names:
            x = self._run_layer(name, x)
            if name == "Mixed_6e" and with_aux:  # the auxiliary head reads the 17x17 grid
                _check_aux_grid(x)
                aux = self.AuxLogits(x)
        return x, aux

    def forward_features(self, x):
        """The 2048-channel map before pooling (transform_input applied, as in forward)."""
        return self._features(x, with_aux=False)[0]

    def forward(self, x):
        with_aux = self.training and self.AuxLogits is not None
        x, aux = self._features(x, with_aux)
        x = self.forward_head(x)
        if self.training and self.aux_logits:
            return InceptionOutputs(x, aux)
        return x


@register_model
def inception_v3(pretrained: bool | str = False, pretrained_cfg=None, pretrained_cfg_overlay=None,
                 **kwargs) -> Inception3:
    """Inception-v3 as torchvision builds it (`torchvision.models.inception_v3(weights=None, **kwargs)`);
    with aux_logits=False, timm's `inception_v3`.

    pretrained: True loads torchvision's IMAGENET1K_V1 weights (and, as torchvision does, turns on
    transform_input unless told otherwise); a string is a file or URL of a checkpoint with these names.
    pretrained_cfg: a tag ('tv_in1k', the default; timm's 'tf_in1k', 'tf_adv_in1k', 'gluon_in1k'),
    a dict or a timm PretrainedCfg; pretrained_cfg_overlay: fields put over it. The weights of timm's
    tags have no auxiliary head: with them, aux_logits defaults to False and transform_input stays off.
    """
    changes = Inception3.cfg_changes(pretrained_cfg, pretrained_cfg_overlay)
    if pretrained:
        kwargs.setdefault("init_weights", False)
        if changes.get("tag", "tv_in1k") == "tv_in1k":
            kwargs.setdefault("transform_input", True)
        else:
            kwargs.setdefault("aux_logits", False)
    model = Inception3(**kwargs)
    model.apply_cfg_changes(changes)
    if pretrained:
        load_pretrained(model, None if pretrained is True else pretrained)
    return model
