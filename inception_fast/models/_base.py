"""What every model of the family shares.

- timm's classifier interface: `forward_features` (the unpooled map of `num_features` channels),
  `forward_head(x, pre_logits=False)`, `get_classifier()`, `reset_classifier(num_classes, global_pool)`;
- `pretrained_cfg` (alias `default_cfg`): the record of the input the weights expect (size, mean/std,
  crop, interpolation) and of where they come from, with timm's field names; one per pretrained tag
  (`tags()`, `cfg_changes()`), as timm's `<model>.<tag>` names;
- `set_fused(True | False | None)`: the path of every layer of this model (None: the global choice);
- `set_grad_checkpointing()`: in training, each layer of forward_features keeps only its input and
  recomputes the rest in the backward (the BatchNorm running statistics updated once, not twice);
- `check_input(x)` (returns x): a too-small or malformed input gets a ValueError naming the minimum
  size, not a shape error from deep inside the network (a torch.fx leaf, so the reference path traces);
- `torch.jit.script(model)`: a ScriptModule of the reference path's inference forward (see
  `__prepare_scriptable__`);
- timm's feature extraction: `feature_info`, `forward_intermediates`, `prune_intermediate_layers`
  (and, in `_features.py`, create_model(..., features_only=True)), from each model's `layer_names`
  (the layers of forward_features in order) and `feature_taps` (the stage outputs).

The head's module names are the peer's (torchvision: avgpool/dropout/fc; timm: global_pool/head_drop/
<classifier>), set per model class by `_pool_attr`, `_drop_attr` and `_classifier_attr`; pooling and
dropout have no parameters, so only the classifier's name shows in the state_dict.
"""
from __future__ import annotations

import contextlib
import copy
from collections import OrderedDict
from typing import Any, ClassVar, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from inception_fast import memory
from inception_fast.layers import (POOL_TYPES, GlobalPool2d, _PathMixin, apply_layer,  # noqa: F401
                                   inference_units, replace_unit, set_conv_weight_layout)


def imagenet_to_inception_input(x: torch.Tensor) -> torch.Tensor:
    """torchvision's `transform_input`: an RGB batch normalised with ImageNet's mean/std, re-normalised
    to the (x - 0.5) / 0.5 that the Google-trained GoogLeNet and Inception-v3 weights expect."""
    x0 = x[:, 0:1] * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
    x1 = x[:, 1:2] * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
    x2 = x[:, 2:3] * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
    return torch.cat((x0, x1, x2), 1)


@torch.fx.wrap
def check_image_batch(x: torch.Tensor, name: str, in_chans: Optional[int], min_size: int) -> torch.Tensor:
    """x, after a ValueError/TypeError naming the problem when it is not a 4-D floating-point batch
    of in_chans channels with sides of at least min_size. A leaf under torch.fx (create_feature_extractor
    traces the models through it), checked on the real input at run time; TorchScript compiles it
    (a traced model scripted)."""
    if not torch.jit.is_scripting():
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} takes a tensor, got {type(x).__name__}")
    shape = "(" + ", ".join([str(s) for s in x.shape]) + ")"
    if x.dim() != 4:
        raise ValueError(f"{name} takes a 4-D (N, C, H, W) batch, got shape {shape}")
    if in_chans is not None and x.shape[1] != in_chans:
        raise ValueError(f"{name} was built for {in_chans} input channels (in_chans), got "
                         f"{x.shape[1]} (shape {shape})")
    if not x.is_floating_point():
        raise TypeError(f"{name} takes a floating-point input, got {x.dtype}")
    if min(x.shape[-2], x.shape[-1]) < min_size:
        raise ValueError(f"{name} needs an input of at least {min_size}x{min_size} pixels, got "
                         f"{x.shape[-2]}x{x.shape[-1]}")
    return x


class ScriptInput(nn.Module):
    """The input checks of a scripted model (check_image_batch in TorchScript), then transform_input
    where the model has it. No parameters."""

    def __init__(self, name: str, in_chans: int, min_size: int, transform_input: bool):
        super().__init__()
        self.name = name
        self.in_chans = in_chans
        self.min_size = min_size
        self.transform_input = transform_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"{self.name} takes a 4-D (N, C, H, W) batch, got {x.dim()} dimensions")
        if self.in_chans > 0 and x.size(1) != self.in_chans:
            raise ValueError(f"{self.name} was built for {self.in_chans} input channels (in_chans), got {x.size(1)}")
        if not x.is_floating_point():
            raise TypeError(f"{self.name} takes a floating-point input")
        if min(x.size(2), x.size(3)) < self.min_size:
            raise ValueError(f"{self.name} needs an input of at least {self.min_size}x{self.min_size} pixels, "
                             f"got {x.size(2)}x{x.size(3)}")
        return imagenet_to_inception_input(x) if self.transform_input else x


class L2Normalize(nn.Module):
    """F.normalize(x, p=2, dim=1) as a module (the face model's embedding, scripted)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, p=2.0, dim=1)


class _KeepBatchNormState:
    """Context manager: the running statistics and num_batches_tracked of `batchnorms` are, on exit,
    what they were on entry (checkpoint's recomputation runs BatchNorm in training mode again)."""

    def __init__(self, batchnorms):
        self.batchnorms = batchnorms

    def __enter__(self):
        self.saved = [[None if t is None else t.clone() for t in (m.running_mean, m.running_var, m.num_batches_tracked)]
                      for m in self.batchnorms]
        return self

    def __exit__(self, *exc):
        with torch.no_grad():
            for m, saved in zip(self.batchnorms, self.saved):
                for t, old in zip((m.running_mean, m.running_var, m.num_batches_tracked), saved):
                    if t is not None:
                        t.copy_(old)
        return False


class InceptionModel(nn.Module):
    """Base class of the six models. A subclass builds its layers, calls `_init_head(...)` for the
    pooling/dropout/classifier, and declares `layer_names` (the layers forward_features runs in order); `forward` is
    forward_head(forward_features(x)) unless the model has auxiliary heads or a special head."""

    # The record each model class fills in (timm's pretrained_cfg fields, plus 'min_input_size'): the
    # default tag's. `pretrained_tags` holds the other tags, as the fields they change.
    default_cfg_template: ClassVar[dict[str, Any]] = {}
    pretrained_tags: ClassVar[dict[str, dict[str, Any]]] = {}
    # The smallest square input the network leaves a non-empty feature map for.
    min_input_size: ClassVar[int] = 1
    # The peer's names for the head modules.
    _pool_attr: ClassVar[str] = "global_pool"
    _drop_attr: ClassVar[str] = "head_drop"
    _classifier_attr: ClassVar[str] = "fc"
    # Checkpoint keys of heads the model may be built without (aux_logits=False): load_pretrained drops them.
    optional_prefixes: ClassVar[tuple[str, ...]] = ()
    # The auxiliary heads' classifiers: like the main one, left freshly initialised by load_pretrained
    # when the checkpoint has another number of classes.
    aux_classifiers: ClassVar[tuple[str, ...]] = ()

    num_classes: int
    num_features: int
    in_chans: int
    pretrained_cfg: dict[str, Any]

    def __call__(self, *args, **kwargs):
        """nn.Module's call. On the fused path with a CPU input, the forward allocates from the CPU
        memory pool, and so does the backward of the graph it records (inception_fast.memory): no
        page faults for the activations and their gradients, step after step. Same numbers."""
        x = args[0] if args else None
        if (not isinstance(x, torch.Tensor) or x.device.type != "cpu" or torch.compiler.is_compiling()
                or torch.jit.is_tracing() or torch.jit.is_scripting() or not self._runs_fused()):
            return super().__call__(*args, **kwargs)
        memory.leave_stale_backward_scope()
        with memory.pooled():
            out = super().__call__(*args, **kwargs)
        return memory.backward_scope(out) if torch.is_grad_enabled() else out

    def _runs_fused(self) -> bool:
        """Whether the model's first layer is on the fused path (set_fused sets them all)."""
        for m in self.modules():
            if isinstance(m, _PathMixin):
                return m._use_fused()
        return False

    # -- inference compilers (optimize()): the units to compile and where they go ------------------
    def inference_units(self) -> list[tuple[str, nn.Module]]:
        """(name, unit) of the parts an inference compiler replaces: the outermost ConvBNReLU,
        BranchBlock, max pool, global pool and Linear modules (layers.inference_units)."""
        return list(inference_units(self))

    def replace_unit(self, name: str, module: nn.Module) -> None:
        """Put module (a unit's compiled form) in place of the unit `name` of inference_units()."""
        replace_unit(self, name, module)

    # -- construction -------------------------------------------------------------------------
    def _init_head(self, num_features: int, num_classes: int, drop_rate: float, global_pool: str = "avg",
                   classifier_bias: bool = True) -> None:
        self.num_classes = int(num_classes)
        self.num_features = int(num_features)
        self.drop_rate = float(drop_rate)
        self._classifier_bias = classifier_bias
        pool = GlobalPool2d(global_pool)
        self.head_hidden_size = self.num_features * pool.feat_mult()  # forward_head(x, pre_logits=True)'s width
        setattr(self, self._pool_attr, pool)
        setattr(self, self._drop_attr, nn.Dropout(p=self.drop_rate))
        setattr(self, self._classifier_attr, self._make_classifier(self.num_features * pool.feat_mult(),
                                                                   self.num_classes))
        self.pretrained_cfg = dict(copy.deepcopy(self.default_cfg_template), num_classes=self.num_classes)
        # timm's fields that are the same for all six: the weights load with plain load_state_dict,
        # and any input size from min_input_size up is taken.
        self.pretrained_cfg.setdefault("custom_load", False)
        self.pretrained_cfg.setdefault("fixed_input_size", False)
        self.pretrained_cfg.setdefault("hf_hub_id", None)  # weights not on the Hugging Face hub

    def _make_classifier(self, in_features: int, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        return nn.Linear(in_features, num_classes, bias=self._classifier_bias)

    def _init_torchvision_style(self, std: float) -> None:
        """torchvision's init of GoogLeNet and Inception-v3: convs and linears N(0, std) truncated at
        +-2 (absolute bounds, so in effect untruncated), a module's own `stddev` attribute overriding
        std; BatchNorm weight 1, bias 0. Same module order, so the same seed gives torchvision's weights."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=float(getattr(m, "stddev", std)), a=-2, b=2)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    @property
    def default_cfg(self) -> dict[str, Any]:
        return self.pretrained_cfg

    @classmethod
    def tags(cls) -> list[str]:
        """The pretrained tags of this model (timm's `<model>.<tag>`), the default first."""
        return [cls.default_cfg_template.get("tag") or ""] + list(cls.pretrained_tags)

    @classmethod
    def cfg_changes(cls, pretrained_cfg=None, overlay: dict[str, Any] | None = None) -> dict[str, Any]:
        """The fields of pretrained_cfg that a builder's timm arguments change from the default tag's:
        pretrained_cfg a tag (one of tags()), a dict or a timm PretrainedCfg (its fields taken as they
        are), or None; overlay, fields put over the result (timm's pretrained_cfg_overlay)."""
        changes: dict[str, Any] = {}
        if isinstance(pretrained_cfg, str):
            if pretrained_cfg not in cls.tags():
                raise ValueError(f"{cls.default_cfg_template.get('architecture', cls.__name__)} has no pretrained "
                                 f"tag {pretrained_cfg!r}; its tags: {', '.join(repr(t) for t in cls.tags())}")
            changes = dict(copy.deepcopy(cls.pretrained_tags.get(pretrained_cfg, {})), tag=pretrained_cfg or None)
        elif pretrained_cfg is not None:
            fields = pretrained_cfg.to_dict() if hasattr(pretrained_cfg, "to_dict") else pretrained_cfg
            if not isinstance(fields, dict):
                raise TypeError(f"pretrained_cfg takes a tag, a dict or a timm PretrainedCfg, got "
                                f"{type(pretrained_cfg).__name__}")
            changes = {k: v for k, v in copy.deepcopy(fields).items() if v is not None}
        if overlay:
            changes.update(copy.deepcopy(dict(overlay)))
        return changes

    def apply_cfg_changes(self, changes: dict[str, Any]) -> None:
        """Put cfg_changes() over this model's pretrained_cfg. Its num_classes stays the model's."""
        self.pretrained_cfg.update({k: v for k, v in changes.items() if k != "num_classes"})

    # -- timm's classifier interface ----------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return getattr(self, self._classifier_attr)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new, freshly initialised classifier for num_classes (0: none, forward returns the pooled
        features); global_pool, when given, replaces the pooling ('avg', 'max', 'avgmax', 'catavgmax', '')."""
        old = self.get_classifier()
        pool = getattr(self, self._pool_attr)
        if global_pool is not None:
            pool = GlobalPool2d(global_pool)
            setattr(self, self._pool_attr, pool)
        self.num_classes = int(num_classes)
        self.head_hidden_size = self.num_features * pool.feat_mult()
        new = self._make_classifier(self.num_features * pool.feat_mult(), self.num_classes)
        # The new layer lives where the model does (an Identity classifier has no parameters to ask).
        ref = next(iter(old.parameters()), None)
        ref = next(iter(self.parameters()), None) if ref is None else ref
        if ref is not None:
            new = new.to(device=ref.device, dtype=ref.dtype)
        setattr(self, self._classifier_attr, new.train(self.training))
        self.pretrained_cfg["num_classes"] = self.num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The unpooled map of num_features channels: the checked (and, where the model has it,
        transformed) input through `layer_names` in order. GoogLeNet and Inception-v3, whose
        auxiliary heads branch off mid-way, write theirs out."""
        x = self._prepare_input(x)
        for name in self.layer_names:
            x = self._run_layer(name, x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pool = getattr(self, self._pool_attr)
        x = getattr(self, self._drop_attr)(pool(x))
        if pre_logits:
            return x
        if self.num_classes > 0 and pool.is_identity():
            raise ValueError(f"{type(self).__name__} has a classifier but no global pooling (global_pool=''): "
                             "reset_classifier(num_classes, 'avg') or reset_classifier(0)")
        return getattr(self, self._classifier_attr)(x)

    def forward(self, x):  # (not annotated: torch.fx writes a traced forward's annotations unscriptably)
        return self.forward_head(self.forward_features(x))

    # -- intermediate features (timm's feature_info / forward_intermediates) -------------------
    # The layers of forward_features in order (module names; the auxiliary heads are not among them;
    # forward_features is defined by them) and the stage outputs timm's feature extraction reports:
    # (module, channels, reduction).
    layer_names: ClassVar[tuple[str, ...]] = ()
    feature_taps: ClassVar[tuple[tuple[str, int, int], ...]] = ()

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """timm's record of the stage features: num_chs, reduction (input side / map side) and
        module, one per stage, in forward order."""
        return [{"num_chs": c, "reduction": r, "module": m} for m, c, r in self.feature_taps]

    def _prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """What forward_features does before its first layer (checks; transform_input where the
        model has it)."""
        return self.check_input(x)

    def _run_layer(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._call_layer, name, x, use_reentrant=False,
                                                     context_fn=lambda: (contextlib.nullcontext(),
                                                                         _KeepBatchNormState(self._batchnorms_of(name))))
        return self._call_layer(name, x)

    def _call_layer(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Layer `name` of forward_features applied to x (each Inception block's leading 1x1
        convolutions merged on the fused path: layers.apply_layer)."""
        return apply_layer(self.get_submodule(name), x)

    def _batchnorms_of(self, name: str) -> list[nn.Module]:
        """The BatchNorm modules layer `name` runs (a superset does no harm)."""
        return [m for m in self.get_submodule(name).modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    # -- gradient checkpointing (timm's set_grad_checkpointing) ------------------------------------
    grad_checkpointing: bool = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """In training (with gradients on), run each layer of forward_features under
        torch.utils.checkpoint: only the layer's input is kept for the backward, which runs the layer
        again (same random numbers) to get what it needs -- less memory for more compute. The
        recomputation would update the BatchNorm running statistics (and num_batches_tracked) a
        second time; they are put back as the forward left them, so a checkpointed step leaves the
        model exactly as a plain one does. The auxiliary heads and the classifier are not checkpointed."""
        self.grad_checkpointing = bool(enable)

    def _take_indices(self, indices) -> tuple[list[int], int]:
        n = len(self.feature_taps)
        if indices is None:
            take = list(range(n))
        elif isinstance(indices, int):
            if not 0 < indices <= n:
                raise ValueError(f"{type(self).__name__} has {n} feature stages; indices={indices} asks for the last "
                                 f"{indices}")
            take = list(range(n - indices, n))
        else:
            take = [i + n if i < 0 else i for i in indices]
            if not take or any(not 0 <= i < n for i in take):
                raise ValueError(f"feature indices {list(indices)} out of range for {n} stages")
        return take, max(take)

    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """timm's forward_intermediates: the final feature map and the stage outputs `indices` asks
        for (None: all, an int n: the last n, a list: those; see feature_info), or only the latter.
        stop_early stops after the last one asked for. norm has no effect (no final norm layer).
        The auxiliary heads are not run."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take, last = self._take_indices(indices)
        ends = [self.layer_names.index(m) for m, _, _ in self.feature_taps]
        wanted = {ends[i] for i in take}
        names = self.layer_names[: ends[last] + 1] if stop_early or intermediates_only else self.layer_names
        x = self._prepare_input(x)
        intermediates = []
        for i, name in enumerate(names):
            x = self._run_layer(name, x)
            if i in wanted:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True) -> list[int]:
        """timm's prune_intermediate_layers: the layers after the last stage `indices` asks for become
        identities (forward_features then ends there), and the head goes when asked or when the
        final map has changed (the auxiliary heads go with it). Returns the kept indices."""
        take, last = self._take_indices(indices)
        end = self.layer_names.index(self.feature_taps[last][0])
        for name in self.layer_names[end + 1:]:
            self._prune_layer(name)
        pruned_end = last < len(self.feature_taps) - 1
        if pruned_end:
            self.num_features = self.feature_taps[last][1]
        if prune_head or pruned_end:
            self._drop_aux_heads()
            self._drop_head()
        return take

    def _prune_layer(self, name: str) -> None:
        self.set_submodule(name, nn.Identity())

    def _drop_aux_heads(self) -> None:
        pass

    def _drop_head(self) -> None:
        """No classifier and no pooling: forward returns the feature map forward_features ends on."""
        self.reset_classifier(0, "")

    # -- the two paths ------------------------------------------------------------------------
    def set_fused(self, enabled: bool | None):
        """Run every layer of this model on the fused (True) or reference (False) path; None hands
        the choice back to the global setting (inception_fast.use_fused / set_fused). Returns self.

        True also puts the k x k convolution weights in channels_last, the fused path's layout, and
        False back in NCHW (in place: same parameters, same values, same state_dict; see
        layers.set_conv_weight_layout). Call it before wrapping the model in
        DistributedDataParallel, as any change of a parameter's layout."""
        if enabled is not None and not isinstance(enabled, bool):
            raise TypeError(f"set_fused takes True, False or None, got {enabled!r}")
        for m in self.modules():
            if isinstance(m, _PathMixin):
                m.fused = enabled
        if enabled is not None:
            set_conv_weight_layout(self, channels_last=enabled)
        return self

    # -- TorchScript ----------------------------------------------------------------------------
    def __prepare_scriptable__(self) -> nn.Module:
        """What torch.jit.script(model) compiles: an nn.Sequential of this model's own modules (shared,
        not copied) under their own names -- input checks (and transform_input), the layers of
        forward_features, the head -- so the ScriptModule's state_dict keys are the model's (less the
        auxiliary heads, which it does not run). It computes forward(x) of the reference path as
        the model does in eval mode (TorchScript compiles the reference path of every layer, whatever
        set_fused says; its mode follows the model's `training` flag, but it returns the logits only,
        without the auxiliary outputs). The model itself is not changed.

        A model whose layers are not modules (BN-Inception's flat modules) compiles instead as
        torch.fx traces its reference path: a GraphModule of the same modules under the same names."""
        if type(self)._call_layer is not InceptionModel._call_layer:
            twin = torch.fx.symbolic_trace(self)
            twin.training = self.training
            return twin
        entries = [("input_check", ScriptInput(type(self).__name__, int(getattr(self, "in_chans", 0) or 0),
                                               int(self.min_input_size), bool(getattr(self, "transform_input", False))))]
        for name in self.layer_names:
            top = name.split(".")[0]  # v4's layers are the entries of its `features` Sequential
            if top not in dict(entries):
                entries.append((top, getattr(self, top)))
        entries += self._script_head()
        twin = nn.Sequential(OrderedDict(entries))
        twin.training = self.training
        return twin

    def _script_head(self) -> list[tuple[str, nn.Module]]:
        """forward_head as (name, module) steps."""
        return [(a, getattr(self, a)) for a in (self._pool_attr, self._drop_attr, self._classifier_attr)]

    # -- input checks -------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor, min_size: int | None = None) -> torch.Tensor:
        """x, after a ValueError/TypeError naming the problem if it is not an input this model takes.
        (Returned so that the check stays in a torch.fx trace's data path.)"""
        need = self.min_input_size if min_size is None else min_size
        return check_image_batch(x, type(self).__name__, getattr(self, "in_chans", None), need)
