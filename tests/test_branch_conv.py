"""branch_conv (an Inception block's branches from its input, BatchNorm folded, one op) against its
composition of plain convolutions + bias + ReLU + pools + cat computed in float64: a block of each
kind of every model (GoogLeNet's inception with its max-pool branch, BN-Inception 3a and the 3c
reduction, v3 A/C and the D reduction, v4 A/B, Inception-ResNet 35/17/8 and Mixed_5b with their
pool variants), on every backend this machine runs (C++ on the CPU; Triton, through the interpreter
on the CPU), fp32/bf16/fp16, NCHW and channels_last inputs, odd batch and map sizes, stride-2
reductions; the description of a real block (spec_of) against the block's eval forward; opcheck;
bad input; NaN. The CUDA backend's plan and kernels (the fused reduce + k x k tile) through their CPU
emulation, with an H100's shared memory and with budgets that force small tiles and no tile."""
import pytest
import torch

from _helpers import LAYOUTS, assert_close, rel_err
from conftest import DEVICE_BACKEND_IDS, DEVICE_BACKENDS
from inception_fast import _ext, ops
from inception_fast.ops.branch_conv import (POOL_AVG, POOL_AVG_EXCLUDE_PAD, POOL_MAX, branch_conv_emulated,
                                            branch_conv_reference)

pytestmark = pytest.mark.skipif(not _ext.loaded(), reason=f"inception_fast._C not built: {_ext.LOAD_ERROR}")

# name: (in channels, [(reduce width, pool, [(out, kh, kw, stride, ph, pw), ...]), ...]) -- the
# branch structure of each block kind with small widths.
BLOCKS = {
    "googlenet_inception": (10, [(4, 0, []), (3, 0, [(5, 3, 3, 1, 1, 1)]), (2, 0, [(3, 3, 3, 1, 1, 1)]),
                                 (3, POOL_MAX, [])]),
    "bn_inception_3a": (9, [(4, 0, []), (3, 0, [(4, 3, 3, 1, 1, 1)]), (3, 0, [(4, 3, 3, 1, 1, 1), (5, 3, 3, 1, 1, 1)]),
                            (2, POOL_AVG, [])]),
    "bn_inception_3c": (8, [(4, 0, [(5, 3, 3, 2, 1, 1)]), (3, 0, [(4, 3, 3, 1, 1, 1), (4, 3, 3, 2, 1, 1)])]),
    "v3_A": (11, [(4, 0, []), (3, 0, [(4, 5, 5, 1, 2, 2)]), (4, 0, [(5, 3, 3, 1, 1, 1), (5, 3, 3, 1, 1, 1)]),
                  (2, POOL_AVG, [])]),
    "v3_C": (12, [(5, 0, []), (3, 0, [(3, 1, 7, 1, 0, 3), (5, 7, 1, 1, 3, 0)]),
                  (3, 0, [(3, 7, 1, 1, 3, 0), (3, 1, 7, 1, 0, 3), (3, 7, 1, 1, 3, 0), (5, 1, 7, 1, 0, 3)]),
                  (5, POOL_AVG, [])]),
    "v3_D": (8, [(3, 0, [(5, 3, 3, 2, 0, 0)]), (3, 0, [(3, 1, 7, 1, 0, 3), (3, 7, 1, 1, 3, 0), (4, 3, 3, 2, 0, 0)])]),
    "v4_A": (10, [(3, 0, []), (2, 0, [(3, 3, 3, 1, 1, 1)]), (2, 0, [(3, 3, 3, 1, 1, 1), (3, 3, 3, 1, 1, 1)]),
                  (3, POOL_AVG_EXCLUDE_PAD, [])]),
    "v4_B": (12, [(5, 0, []), (3, 0, [(4, 1, 7, 1, 0, 3), (5, 7, 1, 1, 3, 0)]),
                  (3, 0, [(3, 7, 1, 1, 3, 0), (4, 1, 7, 1, 0, 3), (4, 7, 1, 1, 3, 0), (5, 1, 7, 1, 0, 3)]),
                  (2, POOL_AVG_EXCLUDE_PAD, [])]),
    "ir_block35": (10, [(2, 0, []), (2, 0, [(2, 3, 3, 1, 1, 1)]), (2, 0, [(3, 3, 3, 1, 1, 1), (4, 3, 3, 1, 1, 1)])]),
    "ir_block17": (12, [(6, 0, []), (4, 0, [(5, 1, 7, 1, 0, 3), (6, 7, 1, 1, 3, 0)])]),
    "ir_block8": (14, [(6, 0, []), (6, 0, [(7, 1, 3, 1, 0, 1), (8, 3, 1, 1, 1, 0)])]),
    "ir_mixed_5b": (9, [(4, 0, []), (2, 0, [(3, 5, 5, 1, 2, 2)]), (3, 0, [(4, 3, 3, 1, 1, 1), (4, 3, 3, 1, 1, 1)]),
                        (2, POOL_AVG_EXCLUDE_PAD, [])]),
}
KERNEL_BACKENDS = [(d, b) for d, b in DEVICE_BACKENDS if b != "reference"]
KERNEL_IDS = [i for (d, b), i in zip(DEVICE_BACKENDS, DEVICE_BACKEND_IDS) if b != "reference"]


def _spec(name, device="cpu", dtype=torch.float64, seed=0):
    """The op's arguments for block `name` (float64 master copies; the caller casts)."""
    g = torch.Generator().manual_seed(seed)
    c_in, branches = BLOCKS[name]
    r = sum(b[0] for b in branches)
    weight = torch.randn(r, c_in, 1, 1, generator=g, dtype=torch.float64) / c_in ** 0.5
    bias = torch.randn(r, generator=g, dtype=torch.float64) * 0.2
    split, pool, depth, cw, cb, cs, cp = [], [], [], [], [], [], []
    for width, p, convs in branches:
        split.append(width)
        pool.append(p)
        depth.append(len(convs))
        c = width
        for j, (o, kh, kw, s, ph, pw) in enumerate(convs):
            cw.append(torch.randn(o, c, kh, kw, generator=g, dtype=torch.float64) / (c * kh * kw) ** 0.5 * 1.5)
            cb.append(torch.randn(o, generator=g, dtype=torch.float64) * 0.2 if j % 2 == 0 else None)
            cs += [s, s]
            cp += [ph, pw]
            c = o
    cast = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
    return dict(weight=cast(weight), bias=cast(bias), split=split, pool=pool, depth=depth,
                conv_weight=[cast(t) for t in cw], conv_bias=[cast(t) for t in cb], conv_stride=cs, conv_padding=cp)


def _call(fn, x, spec):
    return fn(x, spec["weight"], spec["bias"], spec["split"], spec["pool"], spec["depth"], spec["conv_weight"],
              spec["conv_bias"], spec["conv_stride"], spec["conv_padding"])


def _x(name, n, h, w, dtype, layout, device="cpu", seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, BLOCKS[name][0], h, w, generator=g, dtype=torch.float64)
    return x.to(device=device, dtype=dtype).contiguous(memory_format=LAYOUTS[layout])


# Triton through the interpreter is slow: it takes the fp32 cases and one bf16 layout.
def _cases():
    for device, backend in KERNEL_BACKENDS:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            for layout in ("nchw", "cl"):
                if backend == "triton" and device == "cpu" and (dtype == torch.float16 or
                                                                (dtype == torch.bfloat16 and layout == "nchw")):
                    continue
                if dtype == torch.float16 and device == "cpu":
                    continue  # ATen's CPU convolution has no float16 kernel
                yield pytest.param(device, backend, dtype, layout,
                                   id=f"{device}-{backend}-{str(dtype)[6:]}-{layout}")


@pytest.mark.parametrize("name", sorted(BLOCKS))
@pytest.mark.parametrize("device,backend,dtype,layout", list(_cases()))
def test_matches_composition(name, device, backend, dtype, layout):
    n, h, w = (3, 9, 11) if not name.endswith(("3c", "_D")) else (3, 11, 9)
    spec64 = _spec(name)
    x = _x(name, n, h, w, dtype, layout, device)
    ref = _call(branch_conv_reference, x.double().cpu(), spec64)
    with torch.no_grad(), ops.use_backend(backend):
        y = _call(ops.branch_conv, x, _spec(name, device, dtype))
    assert y.shape == ref.shape and y.dtype == dtype and y.device.type == device
    assert y.is_contiguous(memory_format=torch.channels_last)
    if dtype == torch.float32:
        assert_close(y, ref, dtype, f"{name} on {backend}")
    else:
        # Each of a branch's up to five convolutions rounds its output to 16 bits, as the same
        # composition does in eager: within 1e-2, or within 2x eager's own error where the chain is long.
        eager = _call(branch_conv_reference, x, _spec(name, device, dtype))
        err, eager_err = rel_err(y, ref), rel_err(eager, ref)
        assert err < max(1e-2, 2 * eager_err), f"{name} on {backend}: {err:.2e} (eager {eager_err:.2e})"


def test_reference_backend_is_the_composition():
    spec = _spec("v3_A", dtype=torch.float32)
    x = _x("v3_A", 2, 7, 7, torch.float32, "cl")
    with torch.no_grad(), ops.use_backend("reference"):
        y = _call(ops.branch_conv, x, spec)
    assert torch.equal(y, _call(branch_conv_reference, x, spec))


@pytest.mark.parametrize("device,backend", KERNEL_BACKENDS, ids=KERNEL_IDS)
def test_nan_propagates(device, backend):
    spec = _spec("googlenet_inception", device, torch.float32)
    x = _x("googlenet_inception", 2, 6, 6, torch.float32, "cl", device).clone()
    x[1, 3, 2, 2] = float("nan")
    with torch.no_grad(), ops.use_backend(backend):
        y = _call(ops.branch_conv, x, spec)
    ref = _call(branch_conv_reference, x, spec)
    assert torch.equal(y.isnan(), ref.isnan()) and y[1].isnan().any() and not y[0].isnan().any()


def test_opcheck():
    spec = _spec("v3_A", dtype=torch.float32)
    x = _x("v3_A", 2, 5, 6, torch.float32, "cl")
    args = (x, spec["weight"], spec["bias"], spec["split"], spec["pool"], spec["depth"], spec["conv_weight"],
            spec["conv_bias"], spec["conv_stride"], spec["conv_padding"])
    torch.library.opcheck(torch.ops.inception_fast.branch_conv.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_compile_traces_it():
    spec = _spec("ir_block17", dtype=torch.float32)
    x = _x("ir_block17", 2, 5, 5, torch.float32, "cl")
    fn = torch.compile(lambda t: _call(ops.branch_conv, t, spec) * 2, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert rel_err(fn(x), _call(branch_conv_reference, x, spec) * 2) < 1e-5


def test_bad_input():
    spec = _spec("v3_A", dtype=torch.float32)
    x = _x("v3_A", 2, 5, 6, torch.float32, "cl")
    with pytest.raises(TypeError, match="floating point"):
        _call(ops.branch_conv, x.int(), spec)
    with pytest.raises(ValueError, match="one entry per branch"):
        _call(ops.branch_conv, x, {**spec, "pool": spec["pool"][:-1]})
    with pytest.raises(ValueError, match="weight must be"):
        _call(ops.branch_conv, x[:, :-1], spec)
    with pytest.raises(TypeError, match="dtype"):
        _call(ops.branch_conv, x, {**spec, "bias": spec["bias"].double()})
    with pytest.raises(ValueError, match="conv_weight\\[0\\]"):
        _call(ops.branch_conv, x, {**spec, "conv_weight": [spec["conv_weight"][0][:, :-1]] + spec["conv_weight"][1:]})
    with pytest.raises(ValueError, match="different map sizes"):
        bad = _spec("v3_D", dtype=torch.float32)
        _call(ops.branch_conv, _x("v3_D", 1, 9, 9, torch.float32, "cl"), {**bad, "conv_stride": [1, 1] + bad["conv_stride"][2:]})
    with pytest.raises(ValueError, match="does not fit"):
        _call(ops.branch_conv, _x("v3_D", 1, 2, 2, torch.float32, "cl"), _spec("v3_D", dtype=torch.float32))
    with pytest.raises(RuntimeError, match="no gradient"):
        _call(ops.branch_conv, x.clone().requires_grad_(), spec)
    # The C++ kernel checks again when called directly.
    with pytest.raises(RuntimeError, match="weight must be"):
        torch.ops.inception_fast.branch_conv(x[:, :-1].contiguous(), spec["weight"], spec["bias"], spec["split"],
                                             spec["pool"], spec["depth"], spec["conv_weight"], spec["conv_bias"],
                                             spec["conv_stride"], spec["conv_padding"])


# Shared memory per block for the emulated CUDA kernels: an H100's (8 x 8 tiles throughout), a budget
# that leaves 2 x 2 to 1 x 1 tiles for the small test blocks, and none (every reduce branch through
# device memory).
SMEM = {"h100": 227 * 1024, "small": 160, "none": 0}


@pytest.mark.parametrize("name", sorted(BLOCKS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("smem", sorted(SMEM))
def test_cuda_kernels_emulated_match_composition(name, dtype, smem):
    layout = "nchw" if dtype == torch.float16 else "cl"
    n, h, w = (3, 9, 11) if not name.endswith(("3c", "_D")) else (3, 11, 9)
    x = _x(name, n, h, w, dtype, layout, seed=5)
    ref = _call(branch_conv_reference, x.double(), _spec(name))
    with torch.no_grad():
        spec = _spec(name, dtype=dtype)
        y = branch_conv_emulated(x, spec["weight"], spec["bias"], spec["split"], spec["pool"], spec["depth"],
                                 spec["conv_weight"], spec["conv_bias"], spec["conv_stride"], spec["conv_padding"],
                                 smem_bytes=SMEM[smem])
    assert y.shape == ref.shape and y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    assert not y.isnan().any(), "an output element was not written, or shared memory was read before it was"
    if dtype == torch.float32:
        assert_close(y, ref, dtype, f"{name}, emulated CUDA kernels")
    else:
        # Each convolution's output is rounded to 16 bits, as the composition in that dtype rounds
        # it: within 1e-2, or (bf16, long chains) within 2x the composition's own error.
        bound = 1e-2
        if dtype == torch.bfloat16:  # ATen's CPU convolutions have bf16 kernels, not float16 ones
            bound = max(bound, 2 * rel_err(_call(branch_conv_reference, x, spec), ref))
        assert rel_err(y, ref) < bound, f"{name}: {rel_err(y, ref):.2e} (bound {bound:.2e})"


def test_cuda_kernels_emulated_keep_nan_and_check_input():
    spec = _spec("v3_A", dtype=torch.float32)
    x = _x("v3_A", 2, 6, 6, torch.float32, "cl").clone()
    x[1, 3, 2, 2] = float("nan")
    args = [spec[k] for k in ("weight", "bias", "split", "pool", "depth", "conv_weight", "conv_bias", "conv_stride",
                              "conv_padding")]
    y = branch_conv_emulated(x, *args)
    ref = _call(branch_conv_reference, x, spec)
    assert torch.equal(y.isnan(), ref.isnan()) and y[1].isnan().any() and not y[0].isnan().any()
    with pytest.raises(RuntimeError, match="weight must be"):
        torch.ops.inception_fast._branch_conv_emulated(x[:, :-1].contiguous(), *args, 1024)
    with pytest.raises(RuntimeError, match="float32, float16 or bfloat16"):
        torch.ops.inception_fast._branch_conv_emulated(x.double(), *[a.double() if isinstance(a, torch.Tensor) else
                                                                     [t.double() if t is not None else None for t in a]
                                                                     if k in (5, 6) else a for k, a in enumerate(args)],
                                                       1024)
