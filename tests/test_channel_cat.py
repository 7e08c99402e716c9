"""channel_cat (optimize()'s concatenation of a block's branches, one C++ pass into a channels_last
output) vs torch.cat: every dtype, inputs channels_last, NCHW, channel slices of a wider tensor
(what a merged 1x1 convolution's split gives) and other strides, odd channel counts (runs of any byte
length), 1-pixel maps, batches; the same bits; NaN copied; opcheck; where optimize() uses it; bad
input."""
import copy

import pytest
import torch

from inception_fast import _ext, models, ops, optimize

pytestmark = pytest.mark.skipif(not _ext.loaded(), reason=f"inception_fast._C not built: {_ext.LOAD_ERROR}")

CL = torch.channels_last
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def _x(n, c, h, w, dtype, layout, seed):
    g = torch.Generator().manual_seed(seed)
    if layout == "slice":  # channels [3, 3 + c) of a wider channels_last tensor
        return torch.randn(n, c + 7, h, w, generator=g).to(dtype).contiguous(memory_format=CL)[:, 3:3 + c]
    x = torch.randn(n, c, h, w, generator=g).to(dtype)
    if layout == "cl":
        return x.contiguous(memory_format=CL)
    if layout == "transposed":  # neither layout: H and W swapped in memory
        return torch.randn(n, c, w, h, generator=g).to(dtype).transpose(2, 3)
    return x


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 35, 35), (3, 5, 7), (2, 1, 1), (1, 8, 8), (8, 17, 3)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("channels", [(64, 64, 96, 32), (13, 1, 7), (384, 384), (5,)], ids=str)
def test_same_bits_as_torch_cat(dtype, shape, channels):
    n, h, w = shape
    layouts = ["cl", "slice", "nchw", "transposed"]
    xs = [_x(n, c, h, w, dtype, layouts[i % len(layouts)], seed=i) for i, c in enumerate(channels)]
    y = ops.channel_cat(xs)
    assert y.is_contiguous(memory_format=CL) and y.dtype == dtype
    assert torch.equal(y, torch.cat(xs, 1))


def test_large_runs_and_bands():
    # several bands of pixels on both threads, runs of 64-byte vectors plus 16-byte and byte tails
    xs = [_x(4, c, 28, 28, torch.bfloat16, "cl" if c % 2 else "slice", seed=c) for c in (128, 200, 37, 8)]
    assert torch.equal(ops.channel_cat(xs), torch.cat(xs, 1))


def test_empty_inputs():
    xs = [_x(2, 4, 3, 3, torch.float32, "cl", 0), torch.empty(2, 0, 3, 3), _x(2, 5, 3, 3, torch.float32, "cl", 1)]
    assert torch.equal(ops.channel_cat(xs), torch.cat(xs, 1))
    z = ops.channel_cat([torch.empty(0, 3, 4, 4), torch.empty(0, 2, 4, 4)])
    assert z.shape == (0, 5, 4, 4)


def test_nan_and_signed_zero_copied():
    a = torch.tensor([float("nan"), -0.0, float("inf"), 1.0]).view(1, 4, 1, 1)
    b = torch.tensor([-0.0, float("-inf")]).view(1, 2, 1, 1)
    y = ops.channel_cat([a, b])
    assert torch.equal(y.view(-1).view(torch.int32), torch.cat([a, b], 1).reshape(-1).view(torch.int32))


def test_opcheck():
    xs = [_x(2, 6, 5, 7, torch.float32, "cl", 0), _x(2, 3, 5, 7, torch.float32, "slice", 1)]
    torch.library.opcheck(torch.ops.inception_fast.channel_cat.default, (xs,))
    torch.library.opcheck(torch.ops.inception_fast.channel_cat.default, ([x.to(torch.bfloat16) for x in xs],))


def test_gradients_go_through_torch_cat():
    xs = [torch.randn(1, 3, 4, 4, requires_grad=True), torch.randn(1, 2, 4, 4, requires_grad=True)]
    ops.channel_cat(xs).sum().backward()
    assert all(torch.equal(x.grad, torch.ones_like(x)) for x in xs)


@pytest.mark.parametrize("name", ["googlenet", "inception_resnet_v2"])
def test_optimize_concatenates_with_it(monkeypatch, name):
    calls = []
    real = ops.channel_cat
    monkeypatch.setattr(ops, "channel_cat",
                        lambda xs: calls.append(len(xs)) or real(xs))
    torch.manual_seed(0)
    model = models.create_model(name, num_classes=10).eval()
    x = torch.randn(2, 3, 75, 75)
    with torch.no_grad():
        ref = copy.deepcopy(model).set_fused(False)(x)
    y = optimize(model, replay=False)(x)
    assert calls and all(k >= 2 for k in calls)
    assert ((y - ref).norm() / ref.norm()).item() < 1e-4


def test_bad_input_is_named():
    with pytest.raises(TypeError, match="non-empty list"):
        ops.channel_cat([])
    with pytest.raises(ValueError, match="spatial size"):
        ops.channel_cat([torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 5)])
    with pytest.raises(ValueError, match="4-D"):
        ops.channel_cat([torch.randn(1, 2, 4, 4), torch.randn(2, 4, 4)])
    with pytest.raises(TypeError, match="share one dtype"):
        ops.channel_cat([torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4, dtype=torch.float64)])
    with pytest.raises(RuntimeError, match="batch and spatial size"):
        torch.ops.inception_fast.channel_cat([torch.randn(1, 2, 4, 4), torch.randn(2, 2, 4, 4)])
