"""prepare_input (an optimize()d model's input conversion and NaN check in one C++ pass) vs
x.to(dtype, memory_format, copy=True) and x.isnan().flatten(1).any(1): the same bits (bfloat16 and
float16 rounding ties included), float32/float16/bfloat16/float64 inputs into float32/bfloat16/
float16, NCHW, channels_last and strided inputs, widths below, at and past the 16-column vectors,
channel counts past the vector path's; NaN and inf; opcheck; where optimize() uses it; bad input."""
import pytest
import torch

from inception_fast import _ext, ops

pytestmark = pytest.mark.skipif(not _ext.loaded(), reason=f"inception_fast._C not built: {_ext.LOAD_ERROR}")

IN_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
OUT_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(2, 3, 17, 37), (1, 3, 5, 16), (3, 1, 4, 15), (2, 8, 3, 33), (2, 9, 6, 20), (1, 3, 1, 1), (4, 3, 2, 64)]


def _x(shape, dtype, layout, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dtype)
    if layout == "cl":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # a slice of a wider batch: no dense layout
        wide = torch.randn(shape[0], shape[1], shape[2], 2 * shape[3], generator=g).to(dtype)
        wide[..., ::2] = x
        return wide[..., ::2]
    return x


def _check(x, dtype, channels_last):
    y, nan_rows = ops.prepare_input(x, dtype, channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    ry, rn = ops.prepare_input_reference(x, dtype, channels_last)
    assert y.dtype == dtype and y.is_contiguous(memory_format=fmt) and y.data_ptr() != x.data_ptr()
    torch.testing.assert_close(y, ry, rtol=0, atol=0, equal_nan=True)  # the same values, NaN where it is NaN
    assert torch.equal(nan_rows, rn) and nan_rows.dtype == torch.bool and nan_rows.shape == (x.shape[0],)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("in_dtype", IN_DTYPES, ids=str)
@pytest.mark.parametrize("out_dtype", OUT_DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["nchw", "cl", "strided"])
@pytest.mark.parametrize("channels_last", [True, False], ids=["to_cl", "to_nchw"])
def test_matches_to_and_isnan(shape, in_dtype, out_dtype, layout, channels_last):
    x = _x(shape, in_dtype, layout, seed=hash((shape, str(in_dtype), layout)) % 1000)
    _check(x, out_dtype, channels_last)
    # NaN in some images (one each, anywhere, including the vector tails), inf in another
    x = x.clone()
    g = torch.Generator().manual_seed(7)
    for n in range(0, shape[0], 2):
        c, h, w = (int(torch.randint(0, s, (), generator=g)) for s in shape[1:])
        x[n, c, h, w] = float("nan")
    if shape[0] > 1:
        x[1, 0, 0, -1] = float("inf")
    _check(x, out_dtype, channels_last)


def test_rounding_ties_are_to_even():
    # float32 values exactly halfway between two bfloat16s / float16s, and just beside them
    bits = torch.tensor([0x3F808000, 0x3F818000, 0x3F808001, 0x3F807FFF, 0xBF808000, 0x7F7FFFFF, 0x00008000],
                        dtype=torch.int64).to(torch.int32)
    v = bits.view(torch.float32)
    half_ties = torch.tensor([1 + 2 ** -11, 1 + 3 * 2 ** -11, 65520.0, 2 ** -25], dtype=torch.float32)
    for vals in (v, half_ties):
        x = vals.repeat(2, 3, 4, 3).reshape(2, 3, 4, -1)  # widths past 16: the vector path
        for dtype in (torch.bfloat16, torch.float16):
            _check(x, dtype, True)
            _check(x, dtype, False)


@pytest.mark.parametrize("channels_last", [True, False], ids=["to_cl", "to_nchw"])
def test_opcheck(channels_last):
    x = torch.randn(2, 3, 5, 19)  # no NaN: opcheck compares outputs with NaN != NaN
    torch.library.opcheck(torch.ops.inception_fast.prepare_input.default, (x, torch.bfloat16, channels_last))
    torch.library.opcheck(torch.ops.inception_fast.prepare_input.default,
                          (x.contiguous(memory_format=torch.channels_last), torch.float32, channels_last))


def test_an_empty_batch():
    y, nan_rows = ops.prepare_input(torch.randn(0, 3, 8, 8), torch.bfloat16)
    assert y.shape == (0, 3, 8, 8) and nan_rows.shape == (0,)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="4-D"):
        ops.prepare_input(torch.randn(3, 8, 8), torch.float32)
    with pytest.raises(TypeError, match="floating point"):
        ops.prepare_input(torch.ones(1, 3, 8, 8, dtype=torch.int64), torch.float32)
    with pytest.raises(TypeError, match="dtype"):
        ops.prepare_input(torch.randn(1, 3, 8, 8), torch.float64)
    with pytest.raises(RuntimeError, match="dtype must be"):
        torch.ops.inception_fast.prepare_input(torch.randn(1, 3, 8, 8), torch.int32, True)
