"""timm's features_only=True: the stage feature maps of a model (its feature_info, from its
forward_intermediates), as a list (FeatureListNet, timm's feature_cls 'getter' / 'list') or a dict
(FeatureDictNet, 'dict')."""
from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from inception_fast.models._base import InceptionModel


class FeatureInfo(list):
    """feature_info of a feature extractor: a list of {num_chs, reduction, module} dicts with timm's
    accessors."""

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self]

    def reduction(self) -> list[int]:
        return [f["reduction"] for f in self]

    def module_name(self) -> list[str]:
        return [f["module"] for f in self]


class FeatureListNet(nn.Module):
    """A model as timm's features_only=True builds it: forward(x) returns the stage feature maps
    `out_indices` selects (indices into model.feature_info, default all), as
    forward_intermediates(x, out_indices, intermediates_only=True) gives them. The layers after the
    last selected stage and the head are pruned. feature_info lists the selected stages;
    pretrained_cfg (default_cfg) is the model's."""

    def __init__(self, model: InceptionModel, out_indices=None):
        super().__init__()
        self.out_indices = tuple(model.prune_intermediate_layers(out_indices))
        self.model = model
        self.feature_info = FeatureInfo(model.feature_info[i] for i in self.out_indices)
        self.pretrained_cfg = model.pretrained_cfg

    @property
    def default_cfg(self) -> dict[str, Any]:
        return self.pretrained_cfg

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, indices=list(self.out_indices), intermediates_only=True)


class FeatureDictNet(FeatureListNet):
    """FeatureListNet whose forward returns an OrderedDict {module name: feature map} (timm's
    feature_cls='dict')."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return OrderedDict(zip(self.feature_info.module_name(), super().forward(x)))


FEATURE_CLASSES = {"getter": FeatureListNet, "list": FeatureListNet, "dict": FeatureDictNet}


def feature_extractor(model: InceptionModel, out_indices=None, feature_cls: str | None = None,
                      feature_cfg: dict[str, Any] | None = None) -> FeatureListNet:
    """What timm's features_only=True makes of a model: FeatureListNet (feature_cls 'getter', the
    default, or 'list') or FeatureDictNet ('dict'). feature_cfg may give feature_cls (and
    output_fmt='NCHW'), as timm's does."""
    cfg = dict(feature_cfg or {})
    feature_cls = cfg.pop("feature_cls", None) if feature_cls is None else feature_cls
    output_fmt = cfg.pop("output_fmt", "NCHW")
    if cfg:
        raise ValueError(f"feature_cfg keys {sorted(cfg)} are not supported (feature_cls and output_fmt are)")
    if output_fmt != "NCHW":
        raise ValueError(f"features are NCHW only, got output_fmt={output_fmt!r}")
    cls = FEATURE_CLASSES.get("getter" if feature_cls is None else str(feature_cls).lower())
    if cls is None:
        raise ValueError(f"feature_cls {feature_cls!r} is not supported; choose one of {sorted(FEATURE_CLASSES)} "
                         "(timm's 'hook' and 'fx' extractors wrap timm's own models)")
    return cls(model, out_indices)
