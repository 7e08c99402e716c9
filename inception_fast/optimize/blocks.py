"""Inception blocks compiled from their description (BranchBlock.branches()): the leading 1x1
convolutions of the branches as one convolution, the pool branch projected before it pools, every
other conv-BN-ReLU folded; an Inception-ResNet block's scale, residual add and ReLU folded into its
up-projection."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from inception_fast import ops
from inception_fast.layers import Fork, MaxPool2d, ResidualBlock
from inception_fast.optimize.conv import FoldedConv
from inception_fast.optimize.fold import fold, fold_step, is_conv_bn_relu
from inception_fast.optimize.spec import branch_conv_spec, is_1x1_step, is_pool3x3_s1

# Whether a block's branches are concatenated by ops.channel_cat on the CPU (one pass, channels_last)
# rather than torch.cat (for A/B checks), for outputs of at most channel_cat_max_bytes: outputs that
# fit the L2 cache, where it measured 1.05-1.17x torch.cat; on outputs of several MB it lost.
use_channel_cat = True
channel_cat_max_bytes = 1 << 20


def cat(outs: list[torch.Tensor]) -> torch.Tensor:
    """torch.cat(outs, 1); on the CPU, for an output that fits the L2 cache, through ops.channel_cat."""
    if use_channel_cat and outs[0].device.type == "cpu" and all(o.dim() == 4 and o.stride(1) == 1 for o in outs) \
            and sum(o.numel() for o in outs) * outs[0].element_size() <= channel_cat_max_bytes:
        return ops.channel_cat(outs)
    return torch.cat(outs, 1)


def run(steps: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for step in steps:
        x = step(x)
    return x


class PoolProjection(nn.Module):
    """relu(avgpool(conv1x1(x)) + bias) == relu(conv1x1(avgpool(x)) + bias) (both linear, for either
    count_include_pad): the projection first, so that the pool runs on the narrower tensor; a
    3x3/1/1 pool, its bias and the ReLU in one pass (ops.avg_pool3x3_bias_relu)."""

    def __init__(self, pool: nn.AvgPool2d, step):
        super().__init__()
        w, b = fold_step(step)
        self.project = FoldedConv(w, torch.zeros_like(b), step.conv, relu=False)
        self.register_buffer("bias", b.float().view(1, -1, 1, 1))
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(x)
        p = self.pool
        if is_pool3x3_s1(p) and p.divisor_override is None:
            return ops.avg_pool3x3_bias_relu(y, self.bias.view(-1), p.count_include_pad)
        return F.relu_(p(y).add_(self.bias))


class ForkSteps(nn.Module):
    """A Fork step: every branch reads the same tensor, their outputs concatenated."""

    def __init__(self, branches: list[nn.ModuleList]):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cat([run(b, x) for b in self.branches])


def compile_steps(steps) -> nn.ModuleList:
    """A branch's steps compiled: conv-BN-ReLUs folded, max pools on the max_pool op."""
    out = nn.ModuleList()
    for step in steps:
        if isinstance(step, Fork):
            out.append(ForkSteps([compile_steps(b) for b in step.branches]))
        elif is_conv_bn_relu(step):
            out.append(FoldedConv.from_step(step))
        elif isinstance(step, nn.MaxPool2d):
            out.append(MaxPool2d.fused_copy(step))
        elif isinstance(step, nn.AvgPool2d):
            out.append(copy.deepcopy(step))
        else:
            raise TypeError(f"optimize() does not know the block step {type(step).__name__}")
    return out


class FusedBranches(nn.Module):
    """An Inception block compiled from its description (a list of branches, each a list of steps)."""

    # Whether forward runs the block as one ops.branch_conv call where its branches are of the op's
    # forms (optimize(branch_conv=True)). Off by default: on the CPU it measured 0.97-1.01x the
    # composition below, and its GPU kernels have not been timed.
    use_branch_conv: bool = False

    def __init__(self, branches: list[list]):
        super().__init__()
        # Only branch_conv's structure is kept: its tensors are this module's own folded weights,
        # taken at call time, so the weights are not stored twice.
        spec = branch_conv_spec(branches, torch.float32)
        self._bc_args = None if spec is None else (spec["split"], spec["pool"], spec["depth"])
        self._bc_geometry = None if spec is None else (spec["conv_stride"], spec["conv_padding"])
        self._bc_cache: dict = {}
        merged, rests = [], []
        self.starts: list[str] = []  # per branch: "merged" (its slice of the merged conv), "pool_proj", "input"
        self.pool_projections = nn.ModuleList()
        for steps in branches:
            if steps and is_1x1_step(steps[0]):
                merged.append(steps[0])
                self.starts.append("merged")
                rests.append(steps[1:])
            elif len(steps) >= 2 and isinstance(steps[0], nn.AvgPool2d) and is_1x1_step(steps[1]):
                self.pool_projections.append(PoolProjection(copy.deepcopy(steps[0]), steps[1]))
                self.starts.append("pool_proj")
                rests.append(steps[2:])
            else:
                self.starts.append("input")
                rests.append(steps)
        self.sizes = [s.conv.out_channels for s in merged]
        self.merged = None
        if merged:
            folded = [fold_step(s) for s in merged]
            self.merged = FoldedConv(torch.cat([w for w, _ in folded]), torch.cat([b for _, b in folded]),
                                     merged[0].conv, relu=True)
        self.rests = nn.ModuleList(compile_steps(r) for r in rests)

    def __getstate__(self):
        state = super().__getstate__()
        state["_bc_cache"] = {}
        return state

    def _bc_tensors(self):
        """(weight, bias, conv weights, conv biases) of ops.branch_conv, from the compiled modules."""
        firsts, chains = [], []
        pieces = iter(zip(self.merged.weight.split(self.sizes), self.merged.bias.split(self.sizes))) \
            if self.merged is not None else iter(())
        projections = iter(self.pool_projections)
        for start, rest in zip(self.starts, self.rests):
            if start == "merged":
                firsts.append(next(pieces))
                chains += list(rest)
            elif start == "pool_proj":
                proj = next(projections)
                firsts.append((proj.project.weight, proj.bias.view(-1)))
                chains += list(rest)
            else:  # the max-pool branch: [MaxPool2d, its 1x1, ...]
                firsts.append((rest[1].weight, rest[1].bias))
                chains += list(rest)[2:]
        if len(firsts) == len(self.sizes) and self.merged is not None:
            weight, bias = self.merged.weight, self.merged.bias  # the merged conv's filters, in branch order
        else:  # the 1x1 filters of several modules concatenated once per weights, dtype and device
            key = (self.merged.weight.data_ptr() if self.merged is not None else None, firsts[0][0].dtype,
                   firsts[0][0].device)
            if key not in self._bc_cache:
                self._bc_cache = {key: (torch.cat([w for w, _ in firsts]), torch.cat([b for _, b in firsts]))}
            weight, bias = self._bc_cache[key]
        return weight, bias, [c.weight for c in chains], [c.bias for c in chains]

    def _branch_conv(self, x: torch.Tensor) -> torch.Tensor | None:
        """The block's branches as one ops.branch_conv call, where it is expressible and chosen."""
        if self._bc_args is None or not self.use_branch_conv:
            return None
        weight, bias, conv_weight, conv_bias = self._bc_tensors()
        return ops.branch_conv(x, weight, bias, *self._bc_args, conv_weight, conv_bias, *self._bc_geometry)

    def _concatenated(self, x: torch.Tensor) -> torch.Tensor:
        y = self._branch_conv(x)
        return cat(self.branch_outputs(x)) if y is None else y

    def branch_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        pieces = iter(self.merged(x).split(self.sizes, 1) if self.merged is not None else ())
        projections = iter(self.pool_projections)
        outs = []
        for start, rest in zip(self.starts, self.rests):
            y = next(pieces) if start == "merged" else next(projections)(x) if start == "pool_proj" else x
            outs.append(run(rest, y))
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._concatenated(x)


class FusedResidual(FusedBranches):
    """An Inception-ResNet block: the branches as FusedBranches, then act(x + scale * up(cat)) as one
    convolution (the scale folded into the up-projection, the add and the ReLU its post-ops)."""

    def __init__(self, block: ResidualBlock):
        super().__init__(block.branches())
        self.up = FoldedConv(*fold(block.conv2d, scale=block.residual.scale), block.conv2d, relu=block.residual.relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self._concatenated(x), other=x)
