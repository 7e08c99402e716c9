"""The module rewrite: each unit a model lists (`inference_units()`, see layers.inference_units)
replaced by its compiled form (`replace_unit`)."""
from __future__ import annotations

import torch.nn as nn

from inception_fast import layers
from inception_fast.layers import BranchBlock, MaxPool2d, ResidualBlock
from inception_fast.optimize.blocks import FusedBranches, FusedResidual
from inception_fast.optimize.conv import FoldedConv
from inception_fast.optimize.fold import is_conv_bn_relu
from inception_fast.optimize.head import compile_head


def compile_unit(unit: nn.Module) -> nn.Module | None:
    """The compiled form of one unit, or None when it stays as it is."""
    if isinstance(unit, ResidualBlock):
        return FusedResidual(unit)
    if isinstance(unit, BranchBlock):
        return FusedBranches(unit.branches())
    if is_conv_bn_relu(unit):
        return FoldedConv.from_step(unit)
    if isinstance(unit, nn.MaxPool2d):
        return MaxPool2d.fused_copy(unit)
    return compile_head(unit)


def rewrite(model: nn.Module) -> None:
    """Replace, in place, every unit of model by its compiled form. A model lists its units and
    replaces them itself where they are not plain submodules (`inference_units`, `replace_unit`);
    any other module is walked as layers.inference_units does."""
    list_units = getattr(model, "inference_units", None)
    units = list(list_units() if list_units is not None else layers.inference_units(model))
    compiled = [(name, compile_unit(unit)) for name, unit in units]  # all before any replacement
    replace = getattr(model, "replace_unit", None)
    for name, new in compiled:
        if new is not None:
            if replace is not None:
                replace(name, new)
            else:
                layers.replace_unit(model, name, new)
