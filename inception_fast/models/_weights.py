"""Loading weights: a peer's checkpoint (its key names, as it saved them) or ours, from a file, a URL
or a state_dict already in memory, with an error that lists what did not fit.

What a checkpoint may look like and still load:
- a bare state_dict, or one nested under 'state_dict' / 'model' / 'model_state_dict' / 'state_dict_ema'
  (training checkpoints: ours, timm's, Lightning's);
- keys prefixed by 'module.' (DistributedDataParallel) or '_orig_mod.' (torch.compile);
- a .safetensors file (timm's Hugging Face weights), when the safetensors package is installed.

`load_pretrained` is what a builder's pretrained=True does; unlike `load_weights` it adapts the
checkpoint to the model the user asked for, as torchvision and timm do: a classifier of another size
is left freshly initialised, heads the model was built without (aux_logits=False) are dropped, and a
first conv for in_chans != 3 is derived from the RGB one.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "state_dict_ema")
_PREFIXES = ("module.", "_orig_mod.")


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://", "file://"))


def read_state_dict(source: str | os.PathLike | Mapping[str, Any], map_location="cpu") -> dict[str, torch.Tensor]:
    """The state_dict in a file, a URL (downloaded once into torch.hub's cache) or a mapping, unwrapped
    from training checkpoints and from the 'module.' / '_orig_mod.' prefixes."""
    if isinstance(source, Mapping):
        obj: Any = source
    else:
        source = os.fspath(source)
        if _is_url(source):
            if source.endswith(".safetensors"):
                path = _download(source)
                obj = _load_safetensors(path)
            else:
                obj = torch.hub.load_state_dict_from_url(source, map_location=map_location, progress=True,
                                                         weights_only=True)
        else:
            if not os.path.isfile(source):
                raise FileNotFoundError(f"no checkpoint file at {source!r}")
            if source.endswith(".safetensors"):
                obj = _load_safetensors(source)
            else:
                try:
                    obj = torch.load(source, map_location=map_location, weights_only=True)
                except Exception as e:  # a pickle that is not weights, or not a torch file at all
                    raise ValueError(f"{source!r} is not a checkpoint torch.load can read safely "
                                     f"(weights_only=True): {e}") from e
    for _ in range(3):  # a training checkpoint nests the weights once, rarely twice
        if not isinstance(obj, Mapping):
            break
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        nested = next((k for k in _NESTED_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            break
        obj = obj[nested]
    if not isinstance(obj, Mapping) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"no state_dict found in {source!r}" if not isinstance(source, Mapping)
                         else "the mapping given holds no tensors: not a state_dict")
    state = {}
    for k, v in obj.items():
        for p in _PREFIXES:
            while k.startswith(p):
                k = k[len(p):]
        state[k] = v
    return state


def _download(url: str) -> str:
    hub_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
    os.makedirs(hub_dir, exist_ok=True)
    name = os.path.basename(url.split("?")[0])
    # Hugging Face files are all called model.safetensors: keep the repository in the cache name.
    if name == "model.safetensors" and "huggingface.co/" in url:
        name = url.split("huggingface.co/")[1].split("/resolve/")[0].replace("/", "--") + "-" + name
    path = os.path.join(hub_dir, name)
    if not os.path.exists(path):
        torch.hub.download_url_to_file(url, path, progress=True)
    return path


def _load_safetensors(path: str) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ImportError(f"{path!r} is a .safetensors file: `pip install safetensors` to read it") from None
    return load_file(path)


def _describe(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], what: str = "checkpoint") -> None:
    """Raise a ValueError that lists every missing key, unexpected key and shape mismatch, or nothing."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                  if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape]
    if not (missing or unexpected or mismatched):
        return
    lines = [f"the {what} does not fit {type(model).__name__}:"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {_describe(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {_describe(unexpected)}")
    if mismatched:
        lines.append(f"  shape mismatches (checkpoint vs model) ({len(mismatched)}): {_describe(mismatched)}")
    lines.append("  (is it a checkpoint of another model, or built with other num_classes / aux_logits / "
                 "in_chans? load_pretrained adapts those)")
    raise ValueError("\n".join(lines))


def load_weights(model: nn.Module, source, strict: bool = True, map_location="cpu") -> nn.Module:
    """Load a checkpoint (file, URL or state_dict; ours or the peer's key names) into model.

    strict=True: every key must match in name and shape, else a ValueError lists what does not.
    strict=False: what matches loads; what does not is listed in a warning. Returns the model."""
    state = read_state_dict(source, map_location)
    adapt = getattr(model, "adapt_state_dict", None)
    if adapt is not None:
        state = adapt(state)
    if strict:
        check_state_dict(model, state)
        model.load_state_dict(state, strict=True)
        return model
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    result = model.load_state_dict(fitting, strict=False)
    skipped = [k for k in state if k not in fitting]
    if result.missing_keys or skipped:
        warnings.warn(f"{type(model).__name__}: {len(result.missing_keys)} keys kept their initial values "
                      f"({_describe(result.missing_keys)}); {len(skipped)} checkpoint keys skipped "
                      f"({_describe(skipped)})", stacklevel=2)
    return model


def _classifier_prefixes(model: nn.Module) -> list[str]:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    names = cfg.get("classifier", ())
    names = [names] if isinstance(names, str) else list(names)
    return [n + "." for n in list(names) + list(getattr(model, "aux_classifiers", ()))]


def adapt_input_conv(in_chans: int, weight: torch.Tensor) -> torch.Tensor:
    """A first-conv weight for in_chans channels from an RGB one, as timm adapts it: summed over the
    colours for one channel, else the RGB filters repeated and rescaled so activations keep their size."""
    dtype = weight.dtype
    w = weight.float()
    if in_chans == 1:
        w = w.sum(dim=1, keepdim=True)
    else:
        repeat = -(-in_chans // w.shape[1])
        w = w.repeat(1, repeat, 1, 1)[:, :in_chans] * (w.shape[1] / float(in_chans))
    return w.to(dtype)


def load_pretrained(model: nn.Module, source=None, map_location="cpu") -> nn.Module:
    """Load published weights (default: the url of model.pretrained_cfg) into a model that may have been
    built with another num_classes, without its optional heads, or with another in_chans."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    source = source if source is not None else cfg.get("url")
    if not source:
        raise ValueError(f"{type(model).__name__} has no published weights to load; pass a file or URL")
    state = read_state_dict(source, map_location)
    adapt = getattr(model, "adapt_state_dict", None)
    if adapt is not None:
        state = adapt(state)
    own = model.state_dict()
    # Heads the model was built without (aux_logits=False, a face model without its logits).
    optional = tuple(getattr(model, "optional_prefixes", ()))
    state = {k: v for k, v in state.items() if not (k.startswith(optional) and k not in own)} if optional else state
    # A classifier of another size stays as initialised (fine-tuning on another label set).
    for prefix in _classifier_prefixes(model):
        keys = [k for k in state if k.startswith(prefix)]
        if any(k not in own or state[k].shape != own[k].shape for k in keys):
            for k in keys:
                state.pop(k)
            for k in own:
                if k.startswith(prefix):
                    state[k] = own[k]
    # A first conv for in_chans != 3.
    first = cfg.get("first_conv")
    if first:
        key = first + ".weight"
        if key in state and key in own and state[key].shape != own[key].shape \
                and state[key].shape[0] == own[key].shape[0] and state[key].shape[2:] == own[key].shape[2:]:
            state[key] = adapt_input_conv(own[key].shape[1], state[key])
    check_state_dict(model, state, what=f"checkpoint {source!r}" if isinstance(source, str) else "checkpoint")
    model.load_state_dict(state, strict=True)
    return model
