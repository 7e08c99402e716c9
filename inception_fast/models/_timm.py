"""Opt-in registration of the six models with timm, for code that only speaks timm:

    import timm, inception_fast.models as models
    models.register_timm()                      # once; timm's own entries are left as they are
    timm.list_models("inception_fast_*")        # ['inception_fast_bn_inception', ..., 'inception_fast_inception_v4']
    m = timm.create_model("inception_fast_inception_v3", num_classes=10, aux_logits=False)
    f = timm.create_model("inception_fast_inception_resnet_v2", features_only=True, out_indices=(2, 3, 4))

The names carry a prefix (timm reads a '.' in a model name as a pretrained tag, and the plain names
are timm's own models). Each entry point is create_model(name, ...): the same arguments, weights and
paths; timm's pretrained_cfg/cache arguments are accepted and left to our own cfg.
"""
from __future__ import annotations

from inception_fast.models._registry import create_model, list_models

PREFIX = "inception_fast_"


def _entrypoint(name: str, timm_name: str):
    def entry(pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None, **kwargs):
        return create_model(name, pretrained=pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = timm_name
    entry.__module__ = __name__
    entry.__doc__ = f"inception_fast's {name} as a timm entry point (inception_fast.models.create_model)."
    return entry


def register_timm(prefix: str = PREFIX) -> list[str]:
    """Register the six models with timm's model registry as `<prefix><name>`; returns those names.
    Calling it again is harmless (what is registered stays as it is)."""
    try:
        from timm.models import is_model, register_model
    except ImportError as e:
        raise ImportError("register_timm() needs timm (pip install timm)") from e
    names = []
    for name in list_models():
        timm_name = prefix + name
        if not (timm_name in _REGISTERED and is_model(timm_name)):
            _REGISTERED[timm_name] = register_model(_entrypoint(name, timm_name))
        names.append(timm_name)
    return names


_REGISTERED: dict = {}
