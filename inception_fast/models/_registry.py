"""The model registry: `list_models()` and `create_model(name, **kwargs)`, as timm's."""
from __future__ import annotations

import fnmatch
from typing import Callable

import torch.nn as nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a builder under its function name."""
    name = fn.__name__
    if name in _BUILDERS and _BUILDERS[name] is not fn:
        raise RuntimeError(f"model {name!r} is registered twice")
    _BUILDERS[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """The names of the registered models that match a shell-style pattern, sorted."""
    return sorted(n for n in _BUILDERS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, pretrained: bool | str = False, checkpoint_path: str | None = None,
                 fused: bool | None = None, **kwargs) -> nn.Module:
    """Build a registered model.

    pretrained: True loads the peer's published weights (the cfg's url; needs internet, or the file in
    torch.hub's cache); a string is a URL or file to load them from. checkpoint_path: a local file
    (ours or the peer's state_dict, or a training checkpoint holding one), loaded after construction.
    fused: the model's path (True/False), or None for the global choice. features_only=True (with
    out_indices, default all five stages) gives timm's feature extractor: a module returning the
    stage feature maps (see FeatureListNet). Other keyword arguments go to the builder
    (num_classes, in_chans, drop_rate, aux_logits, ...).
    """
    features_only = kwargs.pop("features_only", False)
    out_indices = kwargs.pop("out_indices", None)
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}") from None
    model = builder(pretrained=pretrained, **kwargs) if pretrained else builder(**kwargs)
    if checkpoint_path is not None:
        from inception_fast.models._weights import load_weights

        load_weights(model, checkpoint_path)
    if fused is not None:
        model.set_fused(fused)
    if features_only:
        from inception_fast.models._base import FeatureListNet

        return FeatureListNet(model, out_indices)
    return model
