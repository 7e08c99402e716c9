"""bn_relu: BatchNorm followed by ReLU in one pass, forward and backward.

    y = relu((x - mean) * invstd * weight + bias)

Training uses the batch statistics (and updates the running ones in place, the running variance
unbiased, as torch does); eval uses the running statistics. The backward folds the ReLU mask into
the BatchNorm gradient and saves only x and the per-channel mean/invstd: the mask is recomputed
from x, so neither the normalised tensor nor the output is kept.

Ops (schemas in csrc/ops.cpp): bn_stats -> bn_relu_apply in the forward; bn_relu_backward_reduce
-> bn_relu_backward_elemt in the backward. The two reductions are exactly what multi-process
training all-reduces (SyncBatchNorm): `bn_relu(..., process_group=pg)` does that, and
`bn_relu_with_stats` takes statistics the caller has already combined.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from inception_fast.ops import _backend, _library
from inception_fast.ops._library import acc_dtype, like

_OPS = ["bn_stats", "bn_relu_apply", "bn_relu_backward_reduce", "bn_relu_backward_elemt"]
_library.define_triton_ops(_OPS, "inception_fast.triton.bn_relu")


# ---- reference -----------------------------------------------------------------------------------
def bn_relu_reference(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    """The eager composition every backend is checked against."""
    return F.relu(F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps))


# ---- fake kernels (shapes for torch.compile / FakeTensor) ------------------------------------------
def _check_channel(t, x, name):
    if t is not None:
        torch._check(t.dim() == 1 and t.shape[0] == x.shape[1],
                     lambda: f"{name} must have shape [{x.shape[1]}], got {tuple(t.shape)}")


def _stats_fake(x):
    torch._check(x.dim() == 4, lambda: f"bn_stats: expected a 4-D input, got {x.dim()}-D")
    c = x.shape[1]
    return x.new_empty(c, dtype=acc_dtype(x.dtype)), x.new_empty(c, dtype=acc_dtype(x.dtype))


def _stats_train_fake(x, running_mean, running_var, momentum, eps):
    return _stats_fake(x)


def _apply_fake(x, weight, bias, mean, invstd, training):
    torch._check(x.dim() == 4, lambda: f"bn_relu_apply: expected a 4-D input, got {x.dim()}-D")
    for t, n in ((weight, "weight"), (bias, "bias"), (mean, "mean"), (invstd, "invstd")):
        _check_channel(t, x, n)
    return torch.empty_like(x)


def _reduce_fake(grad_out, x, weight, bias, mean, invstd):
    torch._check(grad_out.shape == x.shape, lambda: "grad_out must have the shape of x")
    c = x.shape[1]
    return x.new_empty(c, dtype=acc_dtype(x.dtype)), x.new_empty(c, dtype=acc_dtype(x.dtype))


def _elemt_fake(grad_out, x, weight, bias, mean, invstd, sum_dz, sum_dz_xmu, count):
    torch._check(grad_out.shape == x.shape, lambda: "grad_out must have the shape of x")
    return torch.empty_like(x)


_library.register_fake("bn_stats", _stats_fake)
_library.register_fake("bn_relu_apply", _apply_fake)
_library.register_fake("bn_relu_backward_reduce", _reduce_fake)
_library.register_fake("bn_relu_backward_elemt", _elemt_fake)
if _library._ext.loaded():  # C++ only (the Triton path does these steps in Python)
    torch.library.register_fake(f"{_library._ext.OPS_NAMESPACE}::bn_stats_train", _stats_train_fake)


# ---- autograd of bn_relu_apply ---------------------------------------------------------------------
def _setup_context(ctx, inputs, output):
    x, weight, bias, mean, invstd, training = inputs
    ctx.training = training
    ctx.count = x.numel() // x.shape[1] if x.shape[1] else 0
    ctx.save_for_backward(x, weight, bias, mean, invstd)


def _backward(ops, grad, x, weight, bias, mean, invstd, training, count, needs, process_group=None):
    """(grad_x, grad_weight, grad_bias) of relu(bn(x)) with the kernels of namespace `ops`.
    In training mean/invstd are functions of x (batch statistics of `count` values per channel);
    with a process group, the two per-channel sums are all-reduced before the elementwise pass."""
    need_x, need_w, need_b = needs
    grad = like(grad, x)
    sum_dz = sum_dz_xmu = None
    if need_w or need_b or (need_x and training):
        sum_dz, sum_dz_xmu = ops.bn_relu_backward_reduce(grad, x, weight, bias, mean, invstd)
    # weight/bias get this process's share, as SyncBatchNorm gives them (DistributedDataParallel
    # averages parameter gradients itself); x needs the sums of the whole batch.
    grad_w = sum_dz_xmu * invstd if need_w else None
    grad_b = sum_dz if need_b else None
    grad_x = None
    if need_x and training:
        if process_group is not None:
            import torch.distributed as dist

            sums = torch.cat([sum_dz, sum_dz_xmu])
            dist.all_reduce(sums, group=process_group)
            sum_dz, sum_dz_xmu = sums.chunk(2)
        grad_x = ops.bn_relu_backward_elemt(grad, x, weight, bias, mean, invstd, sum_dz, sum_dz_xmu, count)
    elif need_x:
        grad_x = ops.bn_relu_backward_elemt(grad, x, weight, bias, mean, invstd, None, None, 0)
    return grad_x, grad_w, grad_b


def _make_backward(ops):
    def backward(ctx, grad):
        x, weight, bias, mean, invstd = ctx.saved_tensors
        grads = _backward(ops, grad, x, weight, bias, mean, invstd, ctx.training, ctx.count,
                          ctx.needs_input_grad[:3])
        # mean/invstd: in training they are functions of x, whose gradient grad_x already holds;
        # in eval they are buffers.
        return (*grads, None, None, None)

    return backward


_library.register_autograd("bn_relu_apply", _make_backward, _setup_context)


# ---- multi-process statistics ----------------------------------------------------------------------
def combine_stats(mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor):
    """Per-channel mean and biased variance of the union of P batches from each batch's
    mean [P, C], biased variance [P, C] and count [P] (Chan et al.'s parallel formula, stable
    where sum-of-squares is not). Returns (mean [C], var [C], total count)."""
    count = count.to(mean.dtype).reshape(-1, 1)
    total = count.sum(0)
    g_mean = (mean * count).sum(0) / total
    m2 = (var * count).sum(0) + ((mean - g_mean) ** 2 * count).sum(0)
    return g_mean, m2 / total, total


def _all_gather_stats(mean, var, count, process_group):
    import torch.distributed as dist

    world = dist.get_world_size(process_group)
    local = torch.cat([mean, var, mean.new_full((1,), float(count))])
    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local, group=process_group)  # (all_gather_into_tensor: not on gloo)
    gathered = torch.stack(parts)
    c = mean.numel()
    return combine_stats(gathered[:, :c], gathered[:, c:2 * c], gathered[:, 2 * c])


class _BNReLUWithStats(torch.autograd.Function):
    """bn_relu with statistics computed by the caller over a batch that x is part of; in the
    backward the two per-channel sums are all-reduced over `process_group` (if any) before the
    elementwise pass, which is what makes the gradient that of the whole batch."""

    @staticmethod
    def forward(ctx, x, weight, bias, mean, invstd, count, process_group, backend):
        ops = _library.namespace(backend)
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        ctx.count, ctx.process_group, ctx.ops = count, process_group, ops
        return ops.bn_relu_apply(x, weight, bias, mean, invstd, True)

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias, mean, invstd = ctx.saved_tensors
        grads = _backward(ctx.ops, grad, x, weight, bias, mean, invstd, True, int(ctx.count),
                          ctx.needs_input_grad[:3], ctx.process_group)
        return (*grads, None, None, None, None, None)


# ---- the Python API --------------------------------------------------------------------------------
def _check_inputs(x, weight, bias, running_mean, running_var, training):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"bn_relu: x must be a Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"bn_relu: expected a 4-D input (N, C, H, W), got a {x.dim()}-D tensor of shape "
                         f"{tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"bn_relu: x must be a floating-point tensor (float32, float16, bfloat16), got {x.dtype}")
    c = x.shape[1]
    for t, name in ((weight, "weight"), (bias, "bias"), (running_mean, "running_mean"),
                    (running_var, "running_var")):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"bn_relu: {name} must be a Tensor or None, got {type(t).__name__}")
        if t.device != x.device:
            raise ValueError(f"bn_relu: {name} is on {t.device} but x is on {x.device}")
        if not t.is_floating_point():
            raise TypeError(f"bn_relu: {name} must be floating point, got {t.dtype}")
        if t.shape != (c,):
            raise ValueError(f"bn_relu: {name} must have shape ({c},) (one value per channel of x), "
                             f"got {tuple(t.shape)}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("bn_relu: running_mean and running_var must both be given or both be None")
    if not training and running_mean is None:
        raise ValueError("bn_relu: running_mean and running_var are required when training=False")
    if training and x.numel() // max(c, 1) <= 1:
        raise ValueError(f"bn_relu: expected more than 1 value per channel when training, got input of shape "
                         f"{tuple(x.shape)}")


def bn_relu(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
            running_mean: torch.Tensor | None, running_var: torch.Tensor | None, training: bool,
            momentum: float = 0.1, eps: float = 1e-5, process_group=None) -> torch.Tensor:
    """relu(batch_norm(x, ...)) on the fastest available backend; the same numbers as
    `F.relu(F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps))`,
    including the in-place update of the running statistics in training.

    process_group: in training, combine the statistics (and, in the backward, the gradient sums)
    of the batches of all processes of this torch.distributed group, as SyncBatchNorm does.
    """
    _check_inputs(x, weight, bias, running_mean, running_var, training)
    backend = _backend.resolve(x, "bn_relu")
    if backend == "reference":
        if process_group is not None and training:
            return _sync_reference(x, weight, bias, running_mean, running_var, momentum, eps, process_group)
        return bn_relu_reference(x, weight, bias, running_mean, running_var, training, momentum, eps)
    ops = _library.namespace(backend)
    x = _library.dense(x)
    acc = acc_dtype(x.dtype)
    w = weight.to(acc) if weight is not None else None
    b = bias.to(acc) if bias is not None else None
    if training and process_group is None and backend != "triton":
        # The C++ kernels: statistics, running-stat update and apply in one call (bn_relu_train).
        return ops.bn_relu_train(x, w, b, running_mean, running_var, float(momentum), float(eps))
    if not training:
        mean = running_mean.to(acc)
        invstd = torch.rsqrt(running_var.to(acc) + eps)
        return ops.bn_relu_apply(x, w, b, mean, invstd, False)
    mean, var = ops.bn_stats(x.detach())
    count = x.numel() // x.shape[1]
    if process_group is not None:
        mean, var, total = _all_gather_stats(mean, var, count, process_group)
        count = int(total.item())
    invstd = torch.rsqrt(var + eps)
    if running_mean is not None:
        _update_running(running_mean, running_var, mean, var, count, momentum)
    if process_group is not None:
        return _BNReLUWithStats.apply(x, w, b, mean, invstd, count, process_group, backend)
    return ops.bn_relu_apply(x, w, b, mean, invstd, True)


def _update_running(running_mean, running_var, mean, var, count, momentum):
    with torch.no_grad():
        unbiased = var * (count / (count - 1)) if count > 1 else var
        running_mean.lerp_(mean.to(running_mean.dtype), momentum)
        running_var.lerp_(unbiased.to(running_var.dtype), momentum)


def bn_relu_with_stats(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                       mean: torch.Tensor, invstd: torch.Tensor, count: int, process_group=None) -> torch.Tensor:
    """Training-mode bn_relu with statistics the caller already reduced: `mean`/`invstd` are those
    of a batch of `count` values per channel that x is part of (e.g. combined across processes with
    `combine_stats` after an all-gather of `bn_stats`). In the backward the per-channel gradient sums
    are all-reduced over `process_group` when one is given. Running statistics are the caller's."""
    _check_inputs(x, weight, bias, None, None, True)
    backend = _backend.resolve(x, "bn_relu_with_stats")
    acc = acc_dtype(x.dtype)
    if backend == "reference":
        xr = x.to(acc)
        y = (xr - mean.view(1, -1, 1, 1)) * invstd.view(1, -1, 1, 1)
        if weight is not None:
            y = y * weight.to(acc).view(1, -1, 1, 1)
        if bias is not None:
            y = y + bias.to(acc).view(1, -1, 1, 1)
        return F.relu(y).to(x.dtype)
    w = weight.to(acc) if weight is not None else None
    b = bias.to(acc) if bias is not None else None
    return _BNReLUWithStats.apply(_library.dense(x), w, b, mean.to(acc), invstd.to(acc), int(count),
                                  process_group, backend)


def bn_stats(x: torch.Tensor):
    """Per-channel (mean, biased variance) of a 4-D x over N, H, W, in float32 (float64 for float64)."""
    _check_inputs(x, None, None, None, None, True)
    backend = _backend.resolve(x, "bn_stats")
    if backend == "reference":
        xr = x.detach().to(acc_dtype(x.dtype))
        return xr.mean((0, 2, 3)), xr.var((0, 2, 3), unbiased=False)
    return _library.namespace(backend).bn_stats(_library.dense(x.detach()))


class _AllReduceSum(torch.autograd.Function):
    """Differentiable all-reduce (sum): the gradient of a sum over processes is the all-reduced
    gradient. (torch.distributed.nn.functional.all_reduce does this too, but is deprecated.)"""

    @staticmethod
    def forward(ctx, t, group):
        import torch.distributed as dist

        ctx.group = group
        t = t.clone()
        dist.all_reduce(t, group=group)
        return t

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def _sync_reference(x, weight, bias, running_mean, running_var, momentum, eps, process_group):
    # The eager oracle of the synchronised path, in plain differentiable torch ops: statistics from
    # all-reduced sums, the gradient carried back to every process by _AllReduceSum.
    def all_reduce(t):
        return _AllReduceSum.apply(t, process_group)

    c = x.shape[1]
    count = all_reduce(x.new_full((1,), x.numel() // c))
    mean = all_reduce(x.sum((0, 2, 3))) / count
    xc = x - mean.view(1, c, 1, 1)
    var = all_reduce(xc.square().sum((0, 2, 3))) / count
    y = xc * torch.rsqrt(var + eps).view(1, c, 1, 1)
    if weight is not None:
        y = y * weight.view(1, c, 1, 1)
    if bias is not None:
        y = y + bias.view(1, c, 1, 1)
    if running_mean is not None:
        n = int(count.item())
        _update_running(running_mean, running_var, mean.detach(), var.detach(), n, momentum)
    return F.relu(y)
