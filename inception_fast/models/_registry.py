"""The model registry: `list_models()` and `create_model(name, **kwargs)`, as timm's.

Every registered builder takes timm's factory arguments beside its model's own:
- `pretrained_cfg` (a tag, a dict or a timm PretrainedCfg) and `pretrained_cfg_overlay`: the
  pretrained_cfg the model records and, with pretrained=True, loads the weights of;
- `device` / `dtype`: where the parameters are created (the meta device allocates nothing) and
  their floating-point type;
- `cache_dir`: where downloaded weights are kept (torch.hub's directory otherwise);
- `features_only=True` with `out_indices`, `feature_cls`, `feature_cfg`: the feature extractor
  (models/_features.py) instead of the classifier.
"""
from __future__ import annotations

import contextlib
import fnmatch
import functools
import inspect
from typing import Callable

import torch
import torch.nn as nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


@contextlib.contextmanager
def _hub_dir(cache_dir):
    if cache_dir is None:
        yield
        return
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(cache_dir))
    try:
        yield
    finally:
        torch.hub.set_dir(old)


def _factory(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """fn with timm's factory arguments handled around it (see the module's docstring). fn gets
    pretrained_cfg / pretrained_cfg_overlay only when it declares them."""
    params = inspect.signature(fn).parameters
    takes_cfg = "pretrained_cfg" in params

    @functools.wraps(fn)
    def builder(pretrained: bool | str = False, *, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None,
                device=None, dtype: torch.dtype | None = None, features_only: bool = False, out_indices=None,
                feature_cls: str | None = None, feature_cfg: dict | None = None, **kwargs) -> nn.Module:
        if takes_cfg:
            kwargs.update(pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=pretrained_cfg_overlay)
        elif pretrained_cfg is not None or pretrained_cfg_overlay:
            raise TypeError(f"{fn.__name__} takes no pretrained_cfg")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        if not features_only and (out_indices is not None or feature_cls is not None or feature_cfg):
            raise TypeError("out_indices, feature_cls and feature_cfg go with features_only=True")
        with _hub_dir(cache_dir), (torch.device(device) if device is not None else contextlib.nullcontext()):
            model = fn(pretrained, **kwargs) if pretrained else fn(**kwargs)
        if dtype is not None:
            model.to(dtype=dtype)
        if features_only:
            from inception_fast.models._features import feature_extractor

            model = feature_extractor(model, out_indices, feature_cls, feature_cfg)
        return model

    return builder


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a builder under its function name; returns it with timm's factory
    arguments added (see the module's docstring)."""
    name = fn.__name__
    if name in _BUILDERS and _BUILDERS[name].__wrapped__ is not fn:
        raise RuntimeError(f"model {name!r} is registered twice")
    _BUILDERS[name] = _factory(fn)
    return _BUILDERS[name]


def list_models(pattern: str = "*") -> list[str]:
    """The names of the registered models that match a shell-style pattern, sorted."""
    return sorted(n for n in _BUILDERS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, pretrained: bool | str = False, checkpoint_path: str | None = None,
                 fused: bool | None = None, **kwargs) -> nn.Module:
    """Build a registered model.

    name: a registered name, or `<name>.<tag>` for one of its pretrained tags (as timm's names: the
    tag picks the pretrained_cfg, and with pretrained=True the weights). pretrained: True loads the
    weights of that cfg (its url; needs internet, or the file in torch.hub's cache); a string is a
    URL or file to load them from. checkpoint_path: a local file (ours or the peer's state_dict, or
    a training checkpoint holding one), loaded after construction. fused: the model's path
    (True/False), or None for the global choice. features_only=True (with out_indices, default all
    five stages, and feature_cls) gives timm's feature extractor: a module returning the stage feature
    maps (models/_features.py). Other keyword arguments go to the builder (num_classes, in_chans,
    drop_rate, aux_logits, device, dtype, pretrained_cfg_overlay, ...).
    """
    features = {k: kwargs.pop(k) for k in ("features_only", "out_indices", "feature_cls", "feature_cfg") if k in kwargs}
    arch, _, tag = name.partition(".")
    try:
        builder = _BUILDERS[arch]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}") from None
    if tag and kwargs.get("pretrained_cfg") is None:
        kwargs["pretrained_cfg"] = tag
    model = builder(pretrained=pretrained, **kwargs) if pretrained else builder(**kwargs)
    if checkpoint_path is not None:
        from inception_fast.models._weights import load_weights

        load_weights(model, checkpoint_path)
    if fused is not None:
        model.set_fused(fused)
    if features.pop("features_only", False):
        from inception_fast.models._features import feature_extractor

        return feature_extractor(model, **features)
    if features:
        raise TypeError("out_indices, feature_cls and feature_cfg go with features_only=True")
    return model
