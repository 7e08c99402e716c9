"""BN-Inception (Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing
Internal Covariate Shift", 2015), with the module names of pretrainedmodels' `bninception`, so its
state_dict loads with strict=True and the keys come out in the same order.

The peer is a Caffe model translated layer by layer: every module sits flat on the model
(inception_3a_1x1, inception_3a_1x1_bn, inception_3a_relu_1x1, inception_3a_pool, ...), convs carry a
bias, BatchNorm keeps PyTorch's defaults (eps 1e-5), and pools round up (Caffe's ceil mode; the
average pools count the padding). Here the ten inception blocks are one table of the paper's channel
numbers (its Figure 5), and the flat modules are made from it in the peer's order. Each
conv -> BN -> ReLU runs on the reference path (the modules themselves) or the fused path (conv, then
one bn_relu op over the same BatchNorm's parameters and buffers, so the ReLU modules, and hooks on
them, only run on the reference path); the model is a path switch itself, so `set_fused` and
`use_fused` reach it.

Weights: Xiong's ImageNet training of the Caffe model, as pretrainedmodels publishes them; they expect
BGR input in 0..255 minus a per-channel mean (`pretrained_cfg`: input_space, input_range, mean, std).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from inception_fast.layers import BranchBlock, MaxPool2d, _PathMixin, bn_relu_module, conv2d_fast, run_branches
from inception_fast.models._base import GlobalPool2d, InceptionModel
from inception_fast.models._registry import register_model
from inception_fast.models._weights import load_pretrained

# The smallest input side the stem and the two grid reductions leave a map for: 31 -> 16 -> 8 -> 4 on
# the way into inception_3c, then 2, then 1.
MIN_INPUT_SIZE = 31


class InceptionBlock(NamedTuple):
    """One row of the paper's Figure 5 (all channel counts; 0 means the branch is absent)."""

    name: str
    ch1x1: int  # '#1x1': none in the grid reductions
    ch3x3red: int  # '#3x3 reduce'
    ch3x3: int  # '#3x3'
    chdblred: int  # 'double #3x3 reduce'
    chdbl: int  # 'double #3x3' (two 3x3 convs in a row)
    pool: str  # 'avg' or 'max'
    pool_proj: int  # 'pool + proj': 0 lets the pooled map pass through (the grid reductions)
    stride: int = 1  # 2 in the grid reductions (3c, 4e): on the 3x3, the second double 3x3 and the pool


BLOCKS = (
    InceptionBlock("inception_3a", 64, 64, 64, 64, 96, "avg", 32),
    InceptionBlock("inception_3b", 64, 64, 96, 64, 96, "avg", 64),
    InceptionBlock("inception_3c", 0, 128, 160, 64, 96, "max", 0, stride=2),
    InceptionBlock("inception_4a", 224, 64, 96, 96, 128, "avg", 128),
    InceptionBlock("inception_4b", 192, 96, 128, 96, 128, "avg", 128),
    InceptionBlock("inception_4c", 160, 128, 160, 128, 160, "avg", 128),
    InceptionBlock("inception_4d", 96, 128, 192, 160, 192, "avg", 128),
    InceptionBlock("inception_4e", 0, 128, 192, 192, 256, "max", 0, stride=2),
    InceptionBlock("inception_5a", 352, 192, 320, 160, 224, "avg", 128),
    InceptionBlock("inception_5b", 352, 192, 320, 192, 224, "max", 128),
)
_BLOCK_BY_NAME = {b.name: b for b in BLOCKS}


def _grid_into_3c(side: int) -> int:
    """The side of the map entering inception_3c, for an input side of at least MIN_INPUT_SIZE."""
    side = (side - 1) // 2 + 1  # conv1_7x7_s2 (padding 3)
    for _ in range(2):  # pool1_3x3_s2, pool2_3x3_s2: ceil mode
        side = -(-(side - 3) // 2) + 1
    return side


def _side_fits(side: int, min_side: int = MIN_INPUT_SIZE) -> bool:
    # inception_3c and inception_4e concatenate a padded stride-2 3x3 conv with an unpadded ceil-mode
    # stride-2 3x3 pool: on a grid of odd side n they give (n+1)/2 and (n-1)/2, which do not
    # concatenate. Both grids are even when the one entering 3c is a multiple of 4: input sides
    # 32k-1 .. 32k+6 (224 = 7 * 32). The peer (and the Caffe model) fail the same way elsewhere.
    return side >= min_side and _grid_into_3c(side) % 4 == 0


# replace_unit() puts a block's (or a stem conv's) compiled form (inception_fast.optimize()) beside
# its flat modules under the same name plus this suffix, and removes those; forward runs it instead.
OPTIMIZED_SUFFIX = "_optimized"
_STEM_UNITS = ("conv1_7x7_s2", "conv2_3x3_reduce", "conv2_3x3")


class BranchesView(BranchBlock):
    """A block described by its branches over the model's flat modules (not owned here)."""

    def __init__(self, branches: list[list]):
        super().__init__()
        self.__dict__["_branches"] = branches  # (a plain attribute: the modules stay the model's)

    def branches(self) -> list[list]:
        return self._branches

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_branches(self._branches, x)


class ConvBNReLUView(nn.Module):
    """A conv, its BatchNorm and its ReLU (three of the model's flat modules, not owned here) as one
    step with ConvBNReLU's attributes `conv` and `bn`."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, relu: nn.Module):
        super().__init__()
        self.conv, self.bn, self.relu = conv, bn, relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


@torch.fx.wrap
def _check_sides(x: torch.Tensor) -> torch.Tensor:
    """x, after a ValueError if its sides are not ones BN-Inception takes (a leaf under torch.fx,
    checked on the real input; TorchScript compiles it)."""
    for side in [x.shape[-2], x.shape[-1]]:
        if not _side_fits(side):
            below = side
            while below > 1 and not _side_fits(below):
                below -= 1
            above = side
            while not _side_fits(above):
                above += 1
            raise ValueError(
                f"BNInception takes input sides of 32k-1 to 32k+6 pixels (31-38, 63-70, ..., 223-230), got "
                f"{x.shape[-2]}x{x.shape[-1]} (nearest sides: {below}, {above}): its grid reductions "
                "inception_3c and inception_4e concatenate a padded stride-2 conv with a ceil-mode pool, "
                "whose maps agree only on an even grid, as in the Caffe model the weights come from")
    return x


class BNInception(_PathMixin, InceptionModel):
    """pretrainedmodels' BNInception, same module names and order, plus timm's arguments (in_chans,
    drop_rate, global_pool) and its methods `features` / `logits`.

    The peer's head is a 7x7 average pool, so it only classifies 223..230-pixel inputs; `global_pool`
    here is global average pooling (the same at 224), defined on every size the network takes.
    """

    min_input_size = MIN_INPUT_SIZE
    _pool_attr, _drop_attr, _classifier_attr = "global_pool", "head_drop", "last_linear"
    # The layers of forward_features: the stem's conv-BN-ReLU units and pools, then the blocks.
    layer_names = ("conv1_7x7_s2", "pool1_3x3_s2", "conv2_3x3_reduce", "conv2_3x3", "pool2_3x3_s2") + tuple(
        b.name for b in BLOCKS)
    feature_taps = (("conv1_7x7_s2", 64, 2), ("conv2_3x3", 192, 4), ("inception_3b", 320, 8),
                    ("inception_4d", 608, 16), ("inception_5b", 1024, 32))
    default_cfg_template = {
        "license": "bsd-3-clause",  # the weights' source's
        "architecture": "bn_inception", "tag": "imagenet",
        "url": "http://data.lip6.fr/cadene/pretrainedmodels/bn_inception-52deb4733.pth",
        "peer": "pretrainedmodels.bninception (pretrained='imagenet')",
        "input_size": (3, 224, 224), "pool_size": (7, 7), "min_input_size": (3, MIN_INPUT_SIZE, MIN_INPUT_SIZE),
        "crop_pct": 0.875, "crop_mode": "center", "interpolation": "bilinear",
        # Caffe's convention, recorded as pretrainedmodels does: BGR channels in 0..255, mean subtracted.
        "mean": (104, 117, 128), "std": (1, 1, 1), "input_space": "BGR", "input_range": (0, 255),
        "first_conv": "conv1_7x7_s2", "classifier": "last_linear", "num_classes": 1000,
    }

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0, global_pool: str = "avg"):
        super().__init__()
        self.in_chans = in_chans
        # conv name -> its ReLU's name: the peer's names follow no single rule (conv1_7x7_s2 ->
        # conv1_relu_7x7, inception_3a_1x1 -> inception_3a_relu_1x1).
        self._relu_of: dict[str, str] = {}
        self._add_conv_bn_relu("conv1_7x7_s2", "conv1_relu_7x7", in_chans, 64, 7, stride=2)
        self.pool1_3x3_s2 = MaxPool2d((3, 3), stride=(2, 2), dilation=(1, 1), ceil_mode=True)
        self._add_conv_bn_relu("conv2_3x3_reduce", "conv2_relu_3x3_reduce", 64, 64, 1)
        self._add_conv_bn_relu("conv2_3x3", "conv2_relu_3x3", 64, 192, 3)
        self.pool2_3x3_s2 = MaxPool2d((3, 3), stride=(2, 2), dilation=(1, 1), ceil_mode=True)
        channels = 192
        for block in BLOCKS:
            channels = self._add_block(block, channels)
        self._init_head(channels, num_classes, drop_rate, global_pool)
        # pretrainedmodels' own record of the input, which its TransformImage reads.
        cfg = self.pretrained_cfg
        self.input_space, self.input_range = cfg["input_space"], list(cfg["input_range"])
        self.input_size, self.mean, self.std = list(cfg["input_size"]), list(cfg["mean"]), list(cfg["std"])

    # -- construction: flat modules in the peer's order ---------------------------------------
    def _add_conv_bn_relu(self, name: str, relu_name: str, cin: int, cout: int, kernel_size: int, stride: int = 1):
        setattr(self, name, nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=kernel_size // 2))
        setattr(self, name + "_bn", nn.BatchNorm2d(cout))
        setattr(self, relu_name, nn.ReLU(inplace=True))
        self._relu_of[name] = relu_name

    def _add_block(self, b: InceptionBlock, cin: int) -> int:
        def unit(branch: str, i: int, o: int, k: int, stride: int = 1):
            self._add_conv_bn_relu(f"{b.name}_{branch}", f"{b.name}_relu_{branch}", i, o, k, stride)

        if b.ch1x1:
            unit("1x1", cin, b.ch1x1, 1)
        unit("3x3_reduce", cin, b.ch3x3red, 1)
        unit("3x3", b.ch3x3red, b.ch3x3, 3, b.stride)
        unit("double_3x3_reduce", cin, b.chdblred, 1)
        unit("double_3x3_1", b.chdblred, b.chdbl, 3)
        unit("double_3x3_2", b.chdbl, b.chdbl, 3, b.stride)
        # The peer's arguments as it writes them, so that the modules print the same.
        if b.stride == 2:
            pool = MaxPool2d((3, 3), stride=(2, 2), dilation=(1, 1), ceil_mode=True)
        elif b.pool == "max":
            pool = MaxPool2d((3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), ceil_mode=True)
        else:
            pool = nn.AvgPool2d(3, stride=1, padding=1, ceil_mode=True, count_include_pad=True)
        setattr(self, f"{b.name}_pool", pool)
        if b.pool_proj:
            unit("pool_proj", cin, b.pool_proj, 1)
        return b.ch1x1 + b.ch3x3 + b.chdbl + (b.pool_proj or cin)

    # -- forward ----------------------------------------------------------------------------
    def _conv_bn_relu(self, x: torch.Tensor, name: str) -> torch.Tensor:
        optimized = self._modules.get(name + OPTIMIZED_SUFFIX)
        if optimized is not None:
            return optimized(x)
        bn = getattr(self, name + "_bn")
        if self._use_fused():
            return bn_relu_module(bn, conv2d_fast(getattr(self, name), x), self.training)
        return getattr(self, self._relu_of[name])(bn(getattr(self, name)(x)))

    def _block(self, x: torch.Tensor, b: InceptionBlock) -> torch.Tensor:
        optimized = self._modules.get(b.name + OPTIMIZED_SUFFIX)
        if optimized is not None:
            return optimized(x)
        p = b.name
        out = [self._conv_bn_relu(x, f"{p}_1x1")] if b.ch1x1 else []
        out.append(self._conv_bn_relu(self._conv_bn_relu(x, f"{p}_3x3_reduce"), f"{p}_3x3"))
        d = self._conv_bn_relu(x, f"{p}_double_3x3_reduce")
        out.append(self._conv_bn_relu(self._conv_bn_relu(d, f"{p}_double_3x3_1"), f"{p}_double_3x3_2"))
        pooled = getattr(self, f"{p}_pool")(x)
        out.append(self._conv_bn_relu(pooled, f"{p}_pool_proj") if b.pool_proj else pooled)
        return torch.cat(out, 1)

    def conv_bn_relu(self, name: str) -> "ConvBNReLUView":
        """The conv, BatchNorm and ReLU named `name` as one step (for block descriptions)."""
        return ConvBNReLUView(getattr(self, name), getattr(self, name + "_bn"), getattr(self, self._relu_of[name]))

    def branches(self, b: InceptionBlock) -> list[list]:
        """Block `b` described as data, as BranchBlock.branches() describes the other models' blocks:
        what optimize() compiles into merged 1x1 GEMMs (and tests check against _block)."""
        unit = lambda branch: self.conv_bn_relu(f"{b.name}_{branch}")  # noqa: E731
        out = [[unit("1x1")]] if b.ch1x1 else []
        out.append([unit("3x3_reduce"), unit("3x3")])
        out.append([unit("double_3x3_reduce"), unit("double_3x3_1"), unit("double_3x3_2")])
        pool = getattr(self, f"{b.name}_pool")
        out.append([pool, unit("pool_proj")] if b.pool_proj else [pool])
        return out

    def inference_units(self) -> list[tuple[str, nn.Module]]:
        """The stem's conv-BN-ReLUs and the blocks as views of the flat modules (ConvBNReLUView,
        BranchesView), then the pools and the head."""
        units = [(name, self.conv_bn_relu(name)) for name in _STEM_UNITS]
        units += [(b.name, BranchesView(self.branches(b))) for b in BLOCKS]
        return units + [(n, m) for n, m in self.named_children() if isinstance(m, (nn.MaxPool2d, GlobalPool2d,
                                                                                    nn.Linear))]

    def replace_unit(self, name: str, module: nn.Module) -> None:
        """A stem conv or block: its compiled form beside the flat modules, which go (the block's
        pool stays); any other unit: replaced."""
        if name not in _STEM_UNITS and name not in _BLOCK_BY_NAME:
            return super().replace_unit(name, module)
        self.add_module(name + OPTIMIZED_SUFFIX, module)
        convs = [name] if name in _STEM_UNITS else [
            n[: -len("_bn")] for n in self._modules if n.startswith(name + "_") and n.endswith("_bn")]
        for conv in convs:
            for suffix in ("", "_bn"):
                delattr(self, conv + suffix)
            delattr(self, self._relu_of[conv])

    def check_input(self, x: torch.Tensor, min_size: int | None = None) -> torch.Tensor:
        return _check_sides(super().check_input(x, min_size))

    def _batchnorms_of(self, name: str) -> list[nn.Module]:
        # A layer's modules are flat, named after it (conv2_3x3_bn; inception_3a_1x1_bn, ...).
        return [m for n, m in self.named_children() if n.startswith(name + "_") and isinstance(m, nn.BatchNorm2d)]

    def _call_layer(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name in self.__dict__.get("_pruned_layers", ()):
            return x
        block = _BLOCK_BY_NAME.get(name)
        if block is not None:
            return self._block(x, block)
        if name.startswith("pool"):
            return getattr(self, name)(x)
        return self._conv_bn_relu(x, name)

    def _prune_layer(self, name: str) -> None:
        # Its layers are flat conv/BN/ReLU modules named after it, not one module: skipped, and
        # their modules removed.
        self.__dict__.setdefault("_pruned_layers", set()).add(name)
        if name.startswith("pool"):
            return delattr(self, name)
        convs = [name] if name in _STEM_UNITS else [
            n[: -len("_bn")] for n in self._modules if n.startswith(name + "_") and n.endswith("_bn")]
        for conv in convs:
            for module in (conv, conv + "_bn", self._relu_of[conv]):
                delattr(self, module)
        self._modules.pop(name + "_pool", None)

    # pretrainedmodels' names for the two halves of forward.
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.forward_head(features)

    # -- weights ----------------------------------------------------------------------------
    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The published checkpoint was saved under PyTorch 0.2/0.3, which stored every BatchNorm's
        weight, bias, running_mean and running_var as (1, C) and let load_state_dict copy them into
        (C,); it also predates num_batches_tracked. Reshape the former, add the latter as 0 (what
        BatchNorm itself assumes for such a checkpoint); anything else passes unchanged."""
        own = self.state_dict()
        out = {}
        for k, v in state.items():
            ref = own.get(k)
            if ref is not None and ref.dim() == 1 and v.dim() == 2 and v.shape == (1, ref.shape[0]):
                v = v.reshape(-1)
            out[k] = v
        for k, v in own.items():
            if k.endswith(".num_batches_tracked") and k not in out \
                    and k.replace(".num_batches_tracked", ".running_mean") in out:
                out[k] = torch.zeros_like(v)
        return out


@register_model
def bn_inception(pretrained: bool | str = False, pretrained_cfg=None, pretrained_cfg_overlay=None,
                 **kwargs) -> BNInception:
    """BN-Inception as pretrainedmodels builds it (`pretrainedmodels.bninception(pretrained=None)`).

    pretrained: True loads pretrainedmodels' ImageNet weights (BGR 0..255 input, see pretrained_cfg);
    a string is a file or URL of a checkpoint with these names. pretrained_cfg /
    pretrained_cfg_overlay: timm's (see models/_registry.py).
    """
    changes = BNInception.cfg_changes(pretrained_cfg, pretrained_cfg_overlay)
    model = BNInception(**kwargs)
    model.apply_cfg_changes(changes)
    if pretrained:
        load_pretrained(model, None if pretrained is True else pretrained)
    return model
