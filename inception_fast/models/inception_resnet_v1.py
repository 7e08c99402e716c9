"""Inception-ResNet-v1 (Szegedy et al., "Inception-v4, Inception-ResNet and the Impact of Residual
Connections on Learning", 2016), with the module names of facenet-pytorch's `InceptionResnetV1`, so its
state_dict (and its published VGGFace2 / CASIA-WebFace weights) loads with strict=True.

Blocks as facenet-pytorch names them (the paper's figure in brackets): the stem conv2d_1a..conv2d_4b
(Fig. 14), Block35 (Inception-ResNet-A, 35x35 grid, Fig. 10), Mixed_6a (Reduction-A, Fig. 7), Block17
(Inception-ResNet-B, 17x17, Fig. 11), Mixed_7a (Reduction-B, Fig. 12), Block8 (Inception-ResNet-C,
8x8, Fig. 13). Every conv-BN-ReLU is a ConvBNReLU and every residual add a ScaledResidual, so the model
runs on the reference or the fused path with the same parameters.

Two heads, one class:
- `embedding_size=None` (default): the paper's ImageNet classifier, average pool -> dropout (keep-prob
  0.8, so drop_rate 0.2) -> `logits` Linear(1792, num_classes).
- `embedding_size=512`: facenet-pytorch's face model, average pool -> dropout (0.6) -> `last_linear`
  (1792 -> 512, no bias) -> `last_bn` (BatchNorm1d); with num_classes=0 the output is the
  L2-normalised embedding (facenet's classify=False), with num_classes=N it is `logits(embedding)`
  (facenet's classify=True, num_classes=N).
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from inception_fast.layers import ConvBNReLU
from inception_fast.models import _inception_resnet as _ir
from inception_fast.models._base import GlobalPool2d, InceptionModel, L2Normalize
from inception_fast.models._registry import register_model
from inception_fast.models._weights import load_pretrained, read_state_dict

# The smallest input the stem and the three stride-2 reductions (conv2d_4b, mixed_6a, mixed_7a) leave
# a non-empty map for: 75 -> 37 -> 35 -> 17 -> 15 -> 7 -> 3 -> 1 (74 leaves a 2x2 map for mixed_7a's
# 3x3 convs). The fine-tuning size of the seeds.
MIN_INPUT_SIZE = 75

# facenet-pytorch's published weights (the releases its load_weights downloads), and the number of
# identities their `logits` layer was trained on.
FACENET_WEIGHTS = {
    "vggface2": ("https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"
                 "20180402-114759-vggface2.pt", 8631),
    "casia-webface": ("https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"
                      "20180408-102900-casia-webface.pt", 10575),
}


def _facenet_source(name: str) -> str:
    """The weights' URL, or the file facenet-pytorch already downloaded it to
    ($TORCH_HOME/checkpoints, beside torch.hub's own $TORCH_HOME/hub/checkpoints)."""
    url = FACENET_WEIGHTS[name][0]
    cached = os.path.join(torch.hub._get_torch_home(), "checkpoints", os.path.basename(url))
    return cached if os.path.isfile(cached) else url


class _FacenetNames:
    """facenet-pytorch's name for `no_relu`."""

    @property
    def noReLU(self) -> bool:  # noqa: N802 (facenet-pytorch's attribute name)
        return self.no_relu


# The paper's Inception-ResNet-v1 widths (Figures 10-12, and Table 1's k, l, m, n for Reduction-A).
class Block35(_FacenetNames, _ir.Block35):
    """Inception-ResNet-A on the 35x35x256 grid."""

    def __init__(self, scale: float = 1.0):
        super().__init__(256, 32, (32, 32), (32, 32, 32), scale)


class Block17(_FacenetNames, _ir.Block17):
    """Inception-ResNet-B on the 17x17x896 grid."""

    def __init__(self, scale: float = 1.0):
        super().__init__(896, 128, (128, 128, 128), scale)


class Block8(_FacenetNames, _ir.Block8):
    """Inception-ResNet-C on the 8x8x1792 grid (`no_relu`: facenet-pytorch's `noReLU`)."""

    def __init__(self, scale: float = 1.0, no_relu: bool = False):
        super().__init__(1792, 192, (192, 192, 192), scale, no_relu)


class Mixed_6a(_ir.ReductionA):  # noqa: N801 (facenet-pytorch's class name)
    """Reduction-A, 35x35 -> 17x17."""

    def __init__(self):
        super().__init__(256, k=192, l=192, m=256, n=384)


class Mixed_7a(_ir.ReductionB):  # noqa: N801 (facenet-pytorch's class name)
    """Reduction-B, 17x17 -> 8x8."""

    def __init__(self):
        super().__init__(896, (256, 384), (256, 256), (256, 256, 256))


INCEPTION_MEAN, INCEPTION_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
# facenet-pytorch's fixed_image_standardization, (pixel - 127.5) / 128 on 0..255 values, written for
# inputs in [0, 1]: (x - 0.5) / (128 / 255).
FACENET_MEAN, FACENET_STD = (0.5, 0.5, 0.5), (128 / 255,) * 3

# The face model's record: 160x160 crops as facenet-pytorch's MTCNN cuts them (margin and all, no
# further crop; PIL bilinear resize), with facenet's fixed standardisation.
FACE_CFG = {
    "url": FACENET_WEIGHTS["vggface2"][0], "tag": "vggface2",
    "peer": "facenet_pytorch.InceptionResnetV1 (pretrained='vggface2' | 'casia-webface')",
    "input_size": (3, 160, 160), "pool_size": (3, 3), "crop_pct": 1.0, "crop_mode": "center",
    "interpolation": "bilinear", "mean": FACENET_MEAN, "std": FACENET_STD,
}


class InceptionResnetV1(InceptionModel):
    """facenet-pytorch's InceptionResnetV1 (same module names and state_dict keys, in the same order),
    with timm's arguments (num_classes, in_chans, drop_rate, global_pool) and interface.

    embedding_size: None for the paper's ImageNet classifier (`logits` on the 1792 pooled features);
    an int (512 for facenet's weights) for the face model, whose head is last_linear -> last_bn, then
    `logits` when num_classes > 0, else the L2-normalised embedding.
    drop_rate: the dropout before the head's first linear layer (default 0.2, the paper's keep-prob
    0.8; 0.6 in the face model, facenet's dropout_prob).
    """

    min_input_size = MIN_INPUT_SIZE
    # facenet's published checkpoints hold `logits` for their training identities: a face model built
    # without a classifier (num_classes=0) loads them without it.
    optional_prefixes = ("logits.",)
    _pool_attr, _drop_attr, _classifier_attr = "avgpool_1a", "dropout", "logits"
    layer_names = ("conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool_3a", "conv2d_3b", "conv2d_4a", "conv2d_4b",
                   "repeat_1", "mixed_6a", "repeat_2", "mixed_7a", "repeat_3", "block8")
    feature_taps = (("conv2d_2b", 64, 2), ("conv2d_4a", 192, 4), ("repeat_1", 256, 8), ("repeat_2", 896, 16),
                    ("block8", 1792, 32))
    default_cfg_template = {
        "license": "mit",  # the weights' source's
        "architecture": "inception_resnet_v1", "tag": "",
        "url": "",  # no published ImageNet weights for Inception-ResNet-v1
        "peer": "facenet_pytorch.InceptionResnetV1 (the architecture; the paper's ImageNet head)",
        "input_size": (3, 299, 299), "pool_size": (8, 8), "min_input_size": (3, MIN_INPUT_SIZE, MIN_INPUT_SIZE),
        "crop_pct": 0.8975, "crop_mode": "center", "interpolation": "bicubic",
        "mean": INCEPTION_MEAN, "std": INCEPTION_STD,
        "first_conv": "conv2d_1a.conv", "classifier": "logits", "num_classes": 1000,
    }

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float | None = None,
                 global_pool: str = "avg", embedding_size: int | None = None):
        super().__init__()
        if embedding_size is not None and int(embedding_size) <= 0:
            raise ValueError(f"embedding_size must be a positive int or None, got {embedding_size!r}")
        self.embedding_size = None if embedding_size is None else int(embedding_size)
        self.in_chans = in_chans
        _ir.add_stem(self, in_chans)  # conv2d_1a .. conv2d_4a
        self.conv2d_4b = ConvBNReLU(192, 256, kernel_size=3, stride=2)
        self.repeat_1 = nn.Sequential(*[Block35(scale=0.17) for _ in range(5)])
        self.mixed_6a = Mixed_6a()
        self.repeat_2 = nn.Sequential(*[Block17(scale=0.10) for _ in range(10)])
        self.mixed_7a = Mixed_7a()
        self.repeat_3 = nn.Sequential(*[Block8(scale=0.20) for _ in range(5)])
        # facenet's last block: scale 1.0 and no ReLU, so the embedding sees signed features.
        self.block8 = Block8(scale=1.0, no_relu=True)
        face = self.embedding_size is not None
        if drop_rate is None:
            drop_rate = 0.6 if face else 0.2
        self._init_head(1792, num_classes, drop_rate, global_pool)
        if face:
            self.head_hidden_size = self.embedding_size
        if face:
            pool = getattr(self, self._pool_attr)
            if pool.is_identity():
                raise ValueError("the face model's embedding needs pooled features: global_pool '' is not possible "
                                 "with embedding_size")
            # last_linear and last_bn sit between the dropout and the classifier, as in facenet-pytorch
            # (the module order is the state_dict's key order).
            classifier = self._modules.pop(self._classifier_attr)
            self.last_linear = nn.Linear(self.num_features * pool.feat_mult(), self.embedding_size, bias=False)
            self.last_bn = nn.BatchNorm1d(self.embedding_size, eps=0.001, momentum=0.1, affine=True)
            setattr(self, self._classifier_attr, classifier)
            self.pretrained_cfg.update(FACE_CFG)

    def _make_classifier(self, in_features: int, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        if self.embedding_size is not None:
            # The face model's classifier reads the embedding (facenet's `logits`, with bias).
            return nn.Linear(self.embedding_size, num_classes)
        return nn.Linear(in_features, num_classes)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier for num_classes. In the face model it reads the embedding, and
        num_classes=0 makes forward return the L2-normalised embedding; there global_pool may only be
        one of the same width ('avg', 'max', 'avgmax'), since last_linear keeps its weights."""
        if self.embedding_size is not None and global_pool is not None:
            pool = GlobalPool2d(global_pool)
            if pool.is_identity() or pool.feat_mult() != getattr(self, self._pool_attr).feat_mult():
                raise ValueError(f"global_pool {global_pool!r} would change the width of the features that "
                                 "last_linear was built for; the face model takes 'avg', 'max' or 'avgmax'")
        super().reset_classifier(num_classes, global_pool)
        if self.embedding_size is not None:
            self.head_hidden_size = self.embedding_size
        # A classifier replacing nn.Identity (num_classes was 0) has no parameters to copy the
        # device and dtype from: take the model's.
        classifier = getattr(self, self._classifier_attr)
        setattr(self, self._classifier_attr, classifier.to(self.conv2d_1a.conv.weight))

    def _drop_head(self):
        # The face model's head is pooling, last_linear, last_bn and the classifier: all of it goes.
        if self.embedding_size is not None:
            del self.last_linear, self.last_bn
            self.embedding_size = None
        InceptionModel.reset_classifier(self, 0, "")

    def _script_head(self):
        if self.embedding_size is None:
            return super()._script_head()
        steps = [(a, getattr(self, a)) for a in (self._pool_attr, self._drop_attr, "last_linear", "last_bn")]
        if self.num_classes > 0:
            return steps + [(self._classifier_attr, getattr(self, self._classifier_attr))]
        return steps + [("l2_normalize", L2Normalize())]

    def forward_head(self, x, pre_logits: bool = False):
        """The ImageNet model: as every model (pooled features with pre_logits=True).

        The face model: pre_logits=True returns what the classifier takes, the raw embedding out of
        last_bn (not normalised, whatever num_classes is); otherwise logits(embedding) when num_classes
        > 0, else the L2-normalised embedding (facenet-pytorch's classify=False output).
        """
        if self.embedding_size is None:
            return super().forward_head(x, pre_logits)
        x = getattr(self, self._drop_attr)(getattr(self, self._pool_attr)(x))
        x = self.last_bn(self.last_linear(x))
        if pre_logits:
            return x
        if self.num_classes > 0:
            return getattr(self, self._classifier_attr)(x)
        return F.normalize(x, p=2, dim=1)


@register_model
def inception_resnet_v1(pretrained: bool | str = False, pretrained_cfg=None, pretrained_cfg_overlay=None,
                        **kwargs) -> InceptionResnetV1:
    """Inception-ResNet-v1: the paper's ImageNet classifier by default (`embedding_size=None`), or
    facenet-pytorch's face model (`embedding_size=512`).

    pretrained: True or 'vggface2' / 'casia-webface' builds facenet-pytorch's face model with its
    published weights (`InceptionResnetV1(pretrained=...)`): embedding_size 512 and, unless given,
    num_classes=0 (the normalised embedding; pass num_classes=8631 / 10575 to keep the identity
    logits of the checkpoint, or another number for a fresh classifier). Any other string is a file
    or URL of a checkpoint with these names; one holding last_linear is taken as a face model.
    pretrained_cfg / pretrained_cfg_overlay: timm's (see models/_registry.py).
    """
    changes = InceptionResnetV1.cfg_changes(pretrained_cfg, pretrained_cfg_overlay)
    if pretrained is True:
        pretrained = "vggface2"
    state = None
    if isinstance(pretrained, str):
        if pretrained in FACENET_WEIGHTS:
            if kwargs.get("embedding_size", 512) is None:
                raise ValueError(f"pretrained={pretrained!r} are face-model weights: they need embedding_size=512")
            kwargs.setdefault("embedding_size", 512)
            kwargs.setdefault("num_classes", 0)
        else:
            state = read_state_dict(pretrained)
            linear = state.get("last_linear.weight")
            if linear is not None and "embedding_size" not in kwargs:
                kwargs["embedding_size"] = linear.shape[0]
                kwargs.setdefault("num_classes", 0)
    model = InceptionResnetV1(**kwargs)
    model.apply_cfg_changes(changes)
    if pretrained in FACENET_WEIGHTS:
        model.pretrained_cfg.update(url=FACENET_WEIGHTS[pretrained][0], tag=pretrained)
        load_pretrained(model, _facenet_source(pretrained))
    elif state is not None:
        load_pretrained(model, state)
    return model
