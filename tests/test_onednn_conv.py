"""ops.onednn_conv: optimize()'s CPU convolution on a oneDNN primitive kept per geometry.

- against conv2d (+ add, + ReLU) in float64, float32 and bfloat16, for the kernel shapes, strides and
  paddings of the six models, odd sizes, batch 1 and 3, NCHW and channels_last inputs;
- the primitive is made once per geometry and reused;
- NaN in, NaN out; opcheck; bad input is refused with the problem named;
- optimize() runs its convolutions on it (test_optimize.py checks that it is built where oneDNN is).
"""
import pytest
import torch

from _helpers import rel_err
from inception_fast import _ext
from inception_fast.ops import onednn_conv, onednn_conv_pack, onednn_conv_reference

pytestmark = pytest.mark.skipif(not _ext.onednn_loaded(), reason=f"inception_fast._onednn not built: {_ext.ONEDNN_ERROR}")

# (in, out, kernel, stride, padding, side): GoogLeNet / v3 / v4 / IR shapes, odd sides
GEOMETRIES = [
    (3, 32, (3, 3), (2, 2), (0, 0), 37),     # the stems' first convolution
    (19, 24, (1, 1), (1, 1), (0, 0), 13),
    (24, 40, (3, 3), (1, 1), (1, 1), 11),
    (16, 24, (5, 5), (1, 1), (2, 2), 9),
    (20, 28, (1, 7), (1, 1), (0, 3), 9),
    (20, 28, (7, 1), (1, 1), (3, 0), 9),
    (24, 32, (1, 3), (1, 1), (0, 1), 5),
    (24, 32, (3, 1), (1, 1), (1, 0), 5),
    (32, 48, (3, 3), (2, 2), (0, 0), 17),    # grid reductions
    (32, 48, (3, 3), (2, 2), (1, 1), 16),
    (64, 96, (7, 7), (2, 2), (3, 3), 23),    # GoogLeNet's first convolution
]
IDS = [f"{i}to{o}_k{k[0]}x{k[1]}_s{s[0]}_p{p[0]}{p[1]}_{n}" for i, o, k, s, p, n in GEOMETRIES]


def _case(geometry, dtype, batch, channels_last, post_op, seed=0):
    cin, cout, k, stride, padding, side = geometry
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cin, side, side + 2, generator=g)
    w = torch.randn(cout, cin, *k, generator=g) / (cin * k[0] * k[1]) ** 0.5
    b = torch.randn(cout, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y_shape = onednn_conv_reference(x, w, b, stride, padding, 0).shape
    other = torch.randn(y_shape, generator=g) if post_op & 2 else None
    return [t.to(dtype) if t is not None else None for t in (x, w, b, other)]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("post_op", [0, 1, 2, 3])
def test_matches_conv2d(geometry, dtype, post_op):
    for batch, channels_last in ((1, True), (3, False)):
        x, w, b, other = _case(geometry, dtype, batch, channels_last, post_op)
        _, _, _, stride, padding, _ = geometry
        packed = onednn_conv_pack(w, x.shape, stride, padding, post_op)
        y = onednn_conv(x, packed, w.shape, b, stride, padding, post_op, other)
        ref = onednn_conv_reference(x.double(), w.double(), b.double(), stride, padding, post_op,
                                    None if other is None else other.double())
        assert y.dtype == dtype and y.shape == ref.shape
        assert y.is_contiguous(memory_format=torch.channels_last)
        tol = 2e-6 if dtype == torch.float32 else 1e-2
        assert rel_err(y.double(), ref) < tol, (batch, channels_last)
        if post_op & 1:
            assert (y >= 0).all()


def test_primitives_are_kept():
    x, w, b, _ = _case(GEOMETRIES[2], torch.float32, 2, True, 1)
    packed = onednn_conv_pack(w, x.shape, (1, 1), (1, 1), 1)
    onednn_conv(x, packed, w.shape, b, (1, 1), (1, 1), 1)
    kept = _ext._onednn.cache_size()
    for _ in range(3):
        onednn_conv(torch.randn_like(x), packed, w.shape, b, (1, 1), (1, 1), 1)
    assert _ext._onednn.cache_size() == kept
    x2 = torch.randn(5, *x.shape[1:]).contiguous(memory_format=torch.channels_last)  # a geometry no other test has
    onednn_conv(x2, onednn_conv_pack(w, x2.shape, (1, 1), (1, 1), 1), w.shape, b, (1, 1), (1, 1), 1)
    assert _ext._onednn.cache_size() == kept + 1


def test_empty_batch():
    x, w, b, _ = _case(GEOMETRIES[2], torch.float32, 1, True, 1)
    packed = onednn_conv_pack(w, x.shape, (1, 1), (1, 1), 1)
    y = onednn_conv(x[:0], packed, w.shape, b, (1, 1), (1, 1), 1)
    assert y.shape == (0, w.shape[0], x.shape[2], x.shape[3])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_nan_in_nan_out(dtype):
    x, w, b, _ = _case(GEOMETRIES[2], dtype, 2, True, 0)
    x[1, 3, 4, 5] = float("nan")
    packed = onednn_conv_pack(w, x.shape, (1, 1), (1, 1), 0)
    y = onednn_conv(x, packed, w.shape, b, (1, 1), (1, 1), 0)
    ref = onednn_conv_reference(x.double(), w.double(), b.double(), (1, 1), (1, 1), 0)
    assert torch.equal(y.isnan(), ref.isnan()) and ref.isnan().any()
    assert not y[0].isnan().any()


def test_opcheck():
    x, w, b, other = _case(GEOMETRIES[3], torch.float32, 2, True, 3)
    packed = onednn_conv_pack(w, x.shape, (1, 1), (2, 2), 3)
    torch.library.opcheck(torch.ops.inception_fast.onednn_conv.default,
                          (x, packed, list(w.shape), b, [1, 1], [2, 2], 3, other))


def test_bad_input_is_refused():
    x, w, b, other = _case(GEOMETRIES[2], torch.float32, 2, True, 3)
    packed = onednn_conv_pack(w, x.shape, (1, 1), (1, 1), 3)
    run = torch.ops.inception_fast.onednn_conv
    with pytest.raises(RuntimeError, match="weight layout"):  # packed for a primitive of another layout
        run(x, onednn_conv_pack(w.bfloat16(), x.shape, (1, 1), (1, 1), 3), list(w.shape), b,
            [1, 1], [1, 1], 3, other)
    corrupt = packed.clone()
    corrupt[-1] ^= 1
    with pytest.raises(RuntimeError, match="weight layout"):
        run(x, corrupt, list(w.shape), b, [1, 1], [1, 1], 3, other)
    with pytest.raises(RuntimeError, match="dtype"):
        run(x.half(), packed, list(w.shape), b, [1, 1], [1, 1], 3, other)
    with pytest.raises(RuntimeError, match="4-D"):
        run(x[0], packed, list(w.shape), b, [1, 1], [1, 1], 3, other)
    with pytest.raises(RuntimeError, match="channels"):
        run(x[:, :20], packed, list(w.shape), b, [1, 1], [1, 1], 3, other)
    with pytest.raises(RuntimeError, match="exactly when"):
        run(x, packed, list(w.shape), b, [1, 1], [1, 1], 3, None)
    with pytest.raises(RuntimeError, match="must match the output"):
        run(x, packed, list(w.shape), b, [1, 1], [1, 1], 3, other[:, :5])
    with pytest.raises(RuntimeError, match="smaller than the kernel"):
        run(x[:, :, :1, :1], packed, list(w.shape), b, [1, 1], [0, 0], 3, other)
    with pytest.raises(RuntimeError, match="uint8"):
        run(x, packed.float(), list(w.shape), b, [1, 1], [1, 1], 3, other)
    with pytest.raises(RuntimeError, match="bias"):
        run(x, packed, list(w.shape), b[:3], [1, 1], [1, 1], 3, other)


def test_optimize_runs_its_convolutions_on_it():
    from _peers import randomise
    from inception_fast import models, optimize

    torch.manual_seed(0)
    model = randomise(models.googlenet(num_classes=10, aux_logits=False, init_weights=True)).eval()
    m = optimize(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.profiler.profile() as prof:
        m(x)
    names = {e.key for e in prof.key_averages()}
    assert "inception_fast::onednn_conv" in names and "mkldnn::_convolution_pointwise" not in names


def test_threads_share_the_primitives():
    import threading

    cases = [_case(g, torch.float32, 2, True, 1, seed=i) for i, g in enumerate(GEOMETRIES[1:6])]
    packs = [onednn_conv_pack(w, x.shape, g[3], g[4], 1) for (x, w, b, _), g in zip(cases, GEOMETRIES[1:6])]
    want = [onednn_conv(x, p, w.shape, b, g[3], g[4], 1) for (x, w, b, _), p, g in zip(cases, packs, GEOMETRIES[1:6])]
    errors = []

    def work():
        try:
            for _ in range(20):
                for (x, w, b, _), p, g, y in zip(cases, packs, GEOMETRIES[1:6], want):
                    assert torch.equal(onednn_conv(x, p, w.shape, b, g[3], g[4], 1), y)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
