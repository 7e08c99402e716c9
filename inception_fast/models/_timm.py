"""Opt-in registration of the six models with timm, for code that only speaks timm:

    import timm, inception_fast.models as models
    models.register_timm()                      # once; timm's own entries are left as they are
    timm.list_models("inception_fast_*")        # ['inception_fast_bn_inception', ..., 'inception_fast_inception_v4']
    m = timm.create_model("inception_fast_inception_v3", num_classes=10, aux_logits=False)
    f = timm.create_model("inception_fast_inception_resnet_v2", features_only=True, out_indices=(2, 3, 4))
    t = timm.create_model("inception_fast_inception_v3.tf_in1k", pretrained=True)   # timm's tags

Through timm, the defaults are timm's: forward returns the logits alone, so GoogLeNet and Inception-v3
are built without their auxiliary heads unless aux_logits=True is passed (timm's own inception_v3 does
the same). timm's torch.fx tools (create_feature_extractor with timm's leaf rules) keep our fused
layers (ConvBNReLU, MaxPool2d, ScaledResidual) as leaves, so a traced model runs them fused; plain
torch.fx traces the reference path.

The names carry a prefix (timm reads a '.' in a model name as a pretrained tag, and the plain names
are timm's own models). Each entry point is our builder: the same arguments, weights and paths, and
timm's factory arguments (pretrained_cfg and its overlay, device, dtype, cache_dir, features_only,
out_indices, feature_cls). The models' tags and their cfgs are registered with timm's registry as
timm's own are (`default_cfgs` below), so timm's tools (get_pretrained_cfg, resolve_data_config,
list_models(pretrained=True)) see them.
"""
from __future__ import annotations

import dataclasses
from collections import deque

from inception_fast.models._registry import _BUILDERS, list_models

PREFIX = "inception_fast_"

# timm's registry reads the cfgs of the entry points registered from a module in that module's
# `default_cfgs` (name -> timm DefaultCfg); register_timm() fills it.
default_cfgs: dict = {}
_REGISTERED: dict = {}
# timm's defaults where they differ from the peer's (timm models return one tensor).
TIMM_DEFAULTS = {"googlenet": {"aux_logits": False}, "inception_v3": {"aux_logits": False}}


def _entrypoint(name: str, timm_name: str):
    builder = _BUILDERS[name]
    defaults = TIMM_DEFAULTS.get(name, {})

    def entry(pretrained: bool = False, **kwargs):
        return builder(pretrained=pretrained, **{**defaults, **kwargs})

    entry.__name__ = entry.__qualname__ = timm_name
    entry.__module__ = __name__
    entry.__doc__ = f"inception_fast's {name} as a timm entry point (inception_fast.models.{name})."
    return entry


def _default_cfg(name: str):
    """timm's DefaultCfg of model `name`: a PretrainedCfg per tag, the default first (fields timm's
    PretrainedCfg does not have, such as our 'peer', left out)."""
    from timm.models._pretrained import DefaultCfg, PretrainedCfg

    cls = _model_class(name)
    fields = {f.name for f in dataclasses.fields(PretrainedCfg)}
    cfgs = {}
    for tag in cls.tags():
        cfg = dict(cls.default_cfg_template, **cls.cfg_changes(tag))
        cfg.update(architecture=name, tag=tag or None)
        cfgs[tag] = PretrainedCfg(**{k: v for k, v in cfg.items() if k in fields})
    return DefaultCfg(tags=deque(cfgs), cfgs=cfgs)


def _model_class(name: str) -> type:
    return type(_BUILDERS[name](device="meta"))  # the meta device allocates nothing


def register_timm(prefix: str = PREFIX) -> list[str]:
    """Register the six models with timm's model registry as `<prefix><name>` (with their pretrained
    tags: `<prefix><name>.<tag>`); returns the names. Calling it again is harmless (what is
    registered stays as it is)."""
    try:
        from timm.models import is_model, register_model, register_notrace_module
    except ImportError as e:
        raise ImportError("register_timm() needs timm (pip install timm)") from e
    from inception_fast.layers import ConvBNReLU, MaxPool2d, ScaledResidual

    for leaf in (ConvBNReLU, MaxPool2d, ScaledResidual):
        register_notrace_module(leaf)
    names = []
    for name in list_models():
        timm_name = prefix + name
        if not (timm_name in _REGISTERED and is_model(timm_name)):
            default_cfgs[timm_name] = _default_cfg(name)
            _REGISTERED[timm_name] = register_model(_entrypoint(name, timm_name))
        names.append(timm_name)
    return names
