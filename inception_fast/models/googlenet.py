"""GoogLeNet / Inception-v1 (Szegedy et al., "Going Deeper with Convolutions", 2014), with the module
names of torchvision's `googlenet`, so its state_dict (aux1/aux2 included) loads with strict=True and
ours loads back into torchvision.

torchvision's version differs from the paper in three ways that its ported weights depend on, all
kept here: a BatchNorm after every conv (eps=0.001), a 3x3 conv where the paper's "5x5" branch has a
5x5 (the TF-slim graph the weights come from does so; pytorch/vision#906), and ceil-mode max pools
(Caffe's rounding), which is also why a 15x15 input still gives an output.

Blocks as the paper names them: Inception (Table 1's columns #1x1, #3x3 reduce, #3x3, #5x5 reduce,
#5x5, pool proj), InceptionAux (the two auxiliary classifiers on the 14x14 grid, after 4a and 4d).
Every conv-BN-ReLU is a ConvBNReLU, so the model runs on the reference or the fused path with the
same parameters.
"""
from __future__ import annotations

import warnings
from collections import namedtuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from inception_fast.layers import BranchBlock, ConvBNReLU, MaxPool2d
from inception_fast.models._base import InceptionModel, imagenet_to_inception_input
from inception_fast.models._registry import register_model
from inception_fast.models._weights import load_pretrained

# torchvision's field names and order: the later head first.
GoogLeNetOutputs = namedtuple("GoogLeNetOutputs", ["logits", "aux_logits2", "aux_logits1"])

# The smallest input side that leaves a non-empty map: 15 -> 8 (conv1) -> 4 -> 2 -> 1 (maxpool3);
# the ceil-mode pools keep a 1x1 map from there on (torchvision's weights record the same "min_size").
# The auxiliary heads pool adaptively to 4x4, so in training mode they need nothing more.
MIN_INPUT_SIZE = 15


class Inception(BranchBlock):
    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int,
                 pool_proj: int):
        super().__init__()
        self.branch1 = ConvBNReLU(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(ConvBNReLU(in_channels, ch3x3red, kernel_size=1),
                                     ConvBNReLU(ch3x3red, ch3x3, kernel_size=3, padding=1))
        # 3x3, not the paper's 5x5: the weights were trained with 3x3 here (pytorch/vision#906).
        self.branch3 = nn.Sequential(ConvBNReLU(in_channels, ch5x5red, kernel_size=1),
                                     ConvBNReLU(ch5x5red, ch5x5, kernel_size=3, padding=1))
        self.branch4 = nn.Sequential(MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
                                     ConvBNReLU(in_channels, pool_proj, kernel_size=1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    """The paper's auxiliary classifier, with torchvision's adaptive 4x4 average pool in place of the
    paper's 5x5/3 one (the same at 224, and defined on any grid)."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.7):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, 128, kernel_size=1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x):
        x = self.conv(F.adaptive_avg_pool2d(x, (4, 4)))
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(self.dropout(x))


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INCEPTION_MEAN, INCEPTION_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


class GoogLeNet(InceptionModel):
    """torchvision's GoogLeNet, same arguments and attributes (aux_logits, transform_input,
    init_weights, dropout, dropout_aux; not `blocks`, which only serves torchvision's quantized
    variant), plus timm's (in_chans, drop_rate, global_pool). Returns
    GoogLeNetOutputs(logits, aux_logits2, aux_logits1) in training mode with aux_logits, else the logits."""

    min_input_size = MIN_INPUT_SIZE
    optional_prefixes = ("aux1.", "aux2.")
    aux_classifiers = ("aux1.fc2", "aux2.fc2")
    _pool_attr, _drop_attr, _classifier_attr = "avgpool", "dropout", "fc"
    layer_names = ("conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
                   "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4", "inception5a",
                   "inception5b")
    feature_taps = (("conv1", 64, 2), ("conv3", 192, 4), ("inception3b", 480, 8), ("inception4e", 832, 16),
                    ("inception5b", 1024, 32))
    default_cfg_template = {
        "license": "bsd-3-clause",  # the weights' source's
        "architecture": "googlenet", "tag": "tv_in1k",
        "url": "https://download.pytorch.org/models/googlenet-1378be20.pth",
        "peer": "torchvision.models.googlenet (weights=GoogLeNet_Weights.IMAGENET1K_V1)",
        "input_size": (3, 224, 224), "pool_size": (7, 7), "min_input_size": (3, MIN_INPUT_SIZE, MIN_INPUT_SIZE),
        "crop_pct": 0.875, "crop_mode": "center", "interpolation": "bilinear",
        "mean": INCEPTION_MEAN, "std": INCEPTION_STD,
        "first_conv": "conv1.conv", "classifier": "fc", "num_classes": 1000,
    }

    def __init__(self, num_classes: int = 1000, aux_logits: bool = True, transform_input: bool = False,
                 init_weights: bool = True, dropout: float = 0.2, dropout_aux: float = 0.7, in_chans: int = 3,
                 drop_rate: float | None = None, global_pool: str = "avg"):
        super().__init__()
        if transform_input and in_chans != 3:
            raise ValueError("transform_input re-normalises 3 RGB channels; it needs in_chans=3")
        self.aux_logits = aux_logits
        self.transform_input = transform_input
        self.in_chans = in_chans
        # Registration order is torchvision's: the state_dict keys come out in the same order, and the
        # same seed gives the same initial weights.
        self.conv1 = ConvBNReLU(in_chans, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = ConvBNReLU(64, 64, kernel_size=1)
        self.conv3 = ConvBNReLU(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)
        if aux_logits:
            self.aux1 = InceptionAux(512, num_classes, dropout=dropout_aux)
            self.aux2 = InceptionAux(528, num_classes, dropout=dropout_aux)
        else:
            self.aux1 = None
            self.aux2 = None
        self._init_head(1024, num_classes, dropout if drop_rate is None else drop_rate, global_pool)
        if transform_input:
            # The (x - 0.5) / 0.5 the ported weights expect is done inside: the caller normalises with
            # ImageNet's mean/std, as torchvision's transforms for these weights do.
            self.pretrained_cfg.update(mean=IMAGENET_MEAN, std=IMAGENET_STD)
        if init_weights:
            self._init_torchvision_style(std=0.01)

    def _transform_input(self, x):
        return imagenet_to_inception_input(x) if self.transform_input else x

    def _features(self, x, with_aux: bool):
        x = self._prepare_input(x)
        aux1 = aux2 = None
        for name in self.layer_names:
            x = self._run_layer(name, x)
            # The heads run where torchvision runs them, so their dropouts draw from the random
            # generator in the same order (aux1, aux2, then the main head).
            if name == "inception4a" and with_aux:
                aux1 = self.aux1(x)
            elif name == "inception4d" and with_aux:
                aux2 = self.aux2(x)
        return x, aux2, aux1

    def _prepare_input(self, x):
        x = self.check_input(x)
        return self._transform_input(x)

    def _drop_aux_heads(self):
        self.aux1 = self.aux2 = None
        self.aux_logits = False

    def forward_features(self, x):
        """The 1024-channel map before pooling (transform_input applied, as in forward)."""
        return self._features(x, with_aux=False)[0]

    def forward(self, x):
        with_aux = self.training and self.aux_logits and self.aux1 is not None and self.aux2 is not None
        x, aux2, aux1 = self._features(x, with_aux)
        x = self.forward_head(x)
        if self.training and self.aux_logits:
            return GoogLeNetOutputs(x, aux2, aux1)
        return x


@register_model
def googlenet(pretrained: bool | str = False, pretrained_cfg=None, pretrained_cfg_overlay=None,
              **kwargs) -> GoogLeNet:
    """GoogLeNet as torchvision builds it (`torchvision.models.googlenet(weights=None, **kwargs)`).

    pretrained: True loads torchvision's IMAGENET1K_V1 weights; as torchvision does, it then turns on
    transform_input and leaves the auxiliary heads out unless told otherwise (the checkpoint's aux
    heads were never trained). A string is a file or URL of a checkpoint with these names.
    pretrained_cfg / pretrained_cfg_overlay: timm's (see models/_registry.py).
    """
    if pretrained:
        kwargs.setdefault("transform_input", True)
        kwargs.setdefault("init_weights", False)
        if kwargs.setdefault("aux_logits", False) and pretrained is True:
            warnings.warn("auxiliary heads in the pretrained googlenet model are NOT pretrained, so make sure "
                          "to train them", stacklevel=2)
    changes = GoogLeNet.cfg_changes(pretrained_cfg, pretrained_cfg_overlay)
    model = GoogLeNet(**kwargs)
    model.apply_cfg_changes(changes)
    if pretrained:
        load_pretrained(model, None if pretrained is True else pretrained)
    return model
