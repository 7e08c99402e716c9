"""The fused ops vs their eager compositions on Inception-v3 shapes, training (forward+backward) and
eval (forward), with the device's copy bandwidth as the floor they are measured against."""
import pytest
import torch
import torch.nn.functional as F

from conftest import QUICK, compile_wanted, compiled, devices, run
from inception_fast import ops
from inception_fast.ops.onednn_conv import available as onednn_conv_available

# (N, C, H, W) from Inception-v3 at 299x299, batch 32: after Mixed_5b's input, Mixed_6*, Mixed_7c.
SHAPES = [(4, 64, 17, 17), (4, 96, 9, 9)] if QUICK else [(32, 192, 35, 35), (32, 768, 17, 17), (32, 2048, 8, 8)]
LAYOUTS = {"nchw": torch.contiguous_format, "cl": torch.channels_last}


def _dtypes(device):
    return [torch.float32] if device == "cpu" else [torch.bfloat16, torch.float32]


def _kernel_backends(device):
    # The Triton interpreter on CPU is a correctness tool, not a speed: only in quick (CI) mode.
    return [b for b in ops.available_backends(device) if b != "reference" and (QUICK or device == "cuda" or b != "triton")]


CASES = [(d, dt) for d in devices() for dt in _dtypes(d)]


def _ids(case):
    d, dt = case
    return f"{d}-{str(dt).split('.')[-1]}"


def contestants(*, compile_ok=True):
    """(case, contestant) pairs: eager, the copy floor, each fused backend, torch.compile if asked."""
    out = []
    for case in CASES:
        names = ["eager", "copy"] + [f"fused-{b}" for b in _kernel_backends(case[0])]
        if compile_ok and compile_wanted():
            names.append("compile")
        out += [(case, n) for n in names]
    return out


def _pair_ids(pair):
    return f"{_ids(pair[0])}-{pair[1]}"


def _inputs(shape, dtype, layout, device):
    x = (torch.randn(shape, device=device, dtype=torch.float32) * 2 + 0.5).to(dtype)
    x = x.contiguous(memory_format=LAYOUTS[layout])
    g = torch.randn_like(x)
    return x, g


def _shape_id(s):
    return "x".join(map(str, s))


def _bench_group(kind, shape, layout, dtype, device):
    return f"{kind} {_shape_id(shape)} {layout} {str(dtype).split('.')[-1]} {device}"


# ---- bn_relu ---------------------------------------------------------------------------------------
def _bn_params(C, device):
    w = (torch.rand(C, device=device) + 0.5).requires_grad_()
    b = torch.randn(C, device=device).requires_grad_()
    return w, b, torch.zeros(C, device=device), torch.ones(C, device=device)


def _eager_bn_relu(x, w, b, rm, rv, training):
    return F.relu(F.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-3))


def _fused_bn_relu(x, w, b, rm, rv, training):
    return ops.bn_relu(x, w, b, rm, rv, training, 0.1, 1e-3)


def _backend_of(contestant):
    return contestant.split("-", 1)[1] if contestant.startswith("fused-") else "reference"


@pytest.mark.parametrize("pair", contestants(), ids=_pair_ids)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
def test_bn_relu_train(benchmark, pair, layout, shape):
    (device, dtype), contestant = pair
    x, g = _inputs(shape, dtype, layout, device)
    w, b, rm, rv = _bn_params(shape[1], device)
    nbytes = x.numel() * x.element_size()
    benchmark.group = _bench_group("bn_relu train fwd+bwd", shape, layout, dtype, device)
    if contestant == "copy":
        y = torch.empty_like(x)
        run(benchmark, lambda: y.copy_(x), device, contestant="copy", bytes=2 * nbytes)
        return
    fn = {"eager": _eager_bn_relu, "compile": compiled(_eager_bn_relu, device) if contestant == "compile" else None
          }.get(contestant, _fused_bn_relu)
    xr = x.detach().requires_grad_()

    def step():
        xr.grad = w.grad = b.grad = None
        fn(xr, w, b, rm, rv, True).backward(g)

    with ops.use_backend(_backend_of(contestant)):
        # fused traffic: stats (1 read), apply (1 read + 1 write), reduce (2 reads), elemt (2 reads + 1 write)
        run(benchmark, step, device, contestant=contestant, bytes=8 * nbytes)


@pytest.mark.parametrize("pair", contestants(compile_ok=False), ids=_pair_ids)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
def test_bn_relu_eval(benchmark, pair, layout, shape):
    (device, dtype), contestant = pair
    x, _ = _inputs(shape, dtype, layout, device)
    w, b, rm, rv = _bn_params(shape[1], device)
    nbytes = x.numel() * x.element_size()
    benchmark.group = _bench_group("bn_relu eval fwd", shape, layout, dtype, device)
    if contestant == "copy":
        y = torch.empty_like(x)
        run(benchmark, lambda: y.copy_(x), device, contestant="copy", bytes=2 * nbytes)
        return
    fn = _eager_bn_relu if contestant == "eager" else _fused_bn_relu
    with torch.no_grad(), ops.use_backend(_backend_of(contestant)):
        run(benchmark, lambda: fn(x, w, b, rm, rv, False), device, contestant=contestant, bytes=2 * nbytes)


# ---- scaled_residual_add ---------------------------------------------------------------------------
# The Inception-v3 shapes above, and Inception-ResNet-v2's residual shapes at 299x299, batch 32
# (Block35, Block17, Block8: 17-50 MB per tensor, past glibc's 32 MB mmap threshold, so every
# allocation of such a tensor is page-faulted in anew -- for eager and fused alike).
RES_SHAPES = [(4, 320, 9, 9)] if QUICK else SHAPES + [(32, 320, 35, 35), (32, 1088, 17, 17), (32, 2080, 8, 8)]


def _eager_residual(x, r):
    return F.relu(r * 0.17 + x)


@pytest.mark.parametrize("pair", contestants(), ids=_pair_ids)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("shape", RES_SHAPES, ids=_shape_id)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_scaled_residual_add(benchmark, pair, layout, shape, mode):
    (device, dtype), contestant = pair
    x, g = _inputs(shape, dtype, layout, device)
    r = torch.randn_like(x)
    nbytes = x.numel() * x.element_size()
    # fused traffic: forward 2 reads + 1 write; backward 2 reads (grad, out) + 2 writes
    traffic = 7 * nbytes if mode == "train" else 3 * nbytes
    kind = "scaled_residual_add train fwd+bwd" if mode == "train" else "scaled_residual_add eval fwd"
    benchmark.group = _bench_group(kind, shape, layout, dtype, device)
    if contestant == "copy":
        y = torch.empty_like(x)
        run(benchmark, lambda: y.copy_(x), device, contestant="copy", bytes=2 * nbytes)
        return
    fn = {"eager": _eager_residual, "compile": compiled(_eager_residual, device) if contestant == "compile" else None
          }.get(contestant, lambda x, r: ops.scaled_residual_add(x, r, 0.17, True))
    name = contestant
    with ops.use_backend(_backend_of(contestant)):
        if mode == "eval":
            with torch.no_grad():
                run(benchmark, lambda: fn(x, r), device, contestant=name, bytes=traffic)
        else:
            xr, rr = x.detach().requires_grad_(), r.detach().requires_grad_()

            def step():
                xr.grad = rr.grad = None
                fn(xr, rr).backward(g)

            run(benchmark, step, device, contestant=name, bytes=traffic)


# ---- channel_cat -----------------------------------------------------------------------------------
# An Inception block's concatenation as optimize() runs it (channels_last, inference): Inception-v3's
# Mixed_5b (35x35, 64+64+96+32) and Mixed_6b (17x17, 4 x 192), Inception-ResNet-v2's Block8 (8x8,
# 192+256), at batch 1 and 8. eager = torch.cat; copy = the output copied, the floor.
CAT_CASES = [(1, 35, (64, 64, 96, 32)), (8, 17, (192, 192, 192, 192))] if QUICK else \
    [(1, 35, (64, 64, 96, 32)), (1, 17, (192, 192, 192, 192)), (1, 8, (192, 256)),
     (8, 35, (64, 64, 96, 32)), (8, 17, (192, 192, 192, 192))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("contestant", ["eager", "copy", "fused-cpu"])
@pytest.mark.parametrize("case", CAT_CASES, ids=lambda c: f"{c[0]}x{c[1]}x{c[1]}-{'+'.join(map(str, c[2]))}")
def test_channel_cat(benchmark, case, contestant, dtype):
    if "cpu" not in devices():
        pytest.skip("channel_cat's kernel is the CPU's")
    n, hw, channels = case
    xs = [torch.randn(n, c, hw, hw).to(dtype).contiguous(memory_format=torch.channels_last) for c in channels]
    out = torch.cat(xs, 1)
    nbytes = out.numel() * out.element_size()
    benchmark.group = f"channel_cat {n}x{hw}x{hw} {'+'.join(map(str, channels))} cl {str(dtype).split('.')[-1]} cpu"
    fn = {"eager": lambda: torch.cat(xs, 1), "copy": lambda: out.clone(), "fused-cpu": lambda: ops.channel_cat(xs)}
    with torch.no_grad():
        run(benchmark, fn[contestant], "cpu", contestant=contestant, bytes=2 * nbytes)


# ---- global_avg_pool -------------------------------------------------------------------------------
# The classifier's pooling as optimize() runs it: GoogLeNet's 7x7x1024 map at batch 1, Inception-v3's
# 8x8x2048 at batch 8, channels_last. eager = x.mean((2, 3)); copy = the map copied, the floor.
GAP_CASES = [(1, 1024, 7), (8, 2048, 8)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("contestant", ["eager", "copy", "fused-cpu"])
@pytest.mark.parametrize("case", GAP_CASES, ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}x{c[2]}")
def test_global_avg_pool(benchmark, case, contestant, dtype):
    if "cpu" not in devices():
        pytest.skip("global_avg_pool's kernel is the CPU's")
    n, c, hw = case
    x = torch.randn(n, c, hw, hw).to(dtype).contiguous(memory_format=torch.channels_last)
    benchmark.group = f"global_avg_pool {n}x{c}x{hw}x{hw} cl {str(dtype).split('.')[-1]} cpu"
    fn = {"eager": lambda: x.mean((2, 3)), "copy": lambda: x.clone(), "fused-cpu": lambda: ops.global_avg_pool(x)}
    with torch.no_grad():
        run(benchmark, fn[contestant], "cpu", contestant=contestant, bytes=x.numel() * x.element_size())


def _winograd_skips(op: str, contestant: str) -> None:
    """A Winograd benchmark's skips: its kernel is the CPU's; its "direct" contestant needs a kept oneDNN
    convolution (inception_fast._onednn)."""
    if "cpu" not in devices():
        pytest.skip(f"{op}'s kernel is the CPU's")
    if contestant == "direct" and not onednn_conv_available():
        pytest.skip("inception_fast._onednn is not built: no kept oneDNN convolution to compare with")


# ---- winograd_conv3x3 ------------------------------------------------------------------------------
# float32 3x3 convolutions as optimize() runs them: GoogLeNet's inception3b 128->192 at 28x28 and
# Inception-v3's Mixed_5b 64->96 at 35x35 (batch 1), Inception-v4's Inception-A 96->96 at 35x35 (batch
# 8). eager = conv2d + ReLU channels_last; direct = oneDNN's direct convolution on a kept primitive
# (what optimize() ran before); fused-cpu = Winograd F(2x2, 3x3). GB/s counts input, weight and output.
WINO_CASES = [(1, 64, 96, 35)] if QUICK else [(1, 128, 192, 28), (1, 64, 96, 35), (8, 96, 96, 35)]


@pytest.mark.parametrize("contestant", ["eager", "direct", "fused-cpu"])
@pytest.mark.parametrize("case", WINO_CASES, ids=lambda c: f"{c[0]}x{c[1]}x{c[3]}x{c[3]}-to-{c[2]}")
def test_winograd_conv3x3(benchmark, case, contestant):
    _winograd_skips("winograd_conv3x3", contestant)
    n, c, k, hw = case
    x = torch.randn(n, c, hw, hw).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(k, c, 3, 3) / (3 * c ** 0.5), torch.randn(k)
    benchmark.group = f"winograd_conv3x3 {n}x{c}x{hw}x{hw} -> {k} float32 cpu"
    if contestant == "direct":
        packed = ops.onednn_conv_pack(w, x.shape, [1, 1], [1, 1], post_op=1)
        fn = lambda: ops.onednn_conv(x, packed, w.shape, b, [1, 1], [1, 1], post_op=1)  # noqa: E731
    elif contestant == "fused-cpu":
        u = ops.winograd_weight(w)
        fn = lambda: ops.winograd_conv3x3(x, u, b, 1, True)  # noqa: E731
    else:
        fn = lambda: F.relu(F.conv2d(x, w, b, 1, 1))  # noqa: E731
    nbytes = 4 * (x.numel() + w.numel() + n * k * hw * hw)
    with torch.no_grad():
        run(benchmark, fn, "cpu", contestant=contestant, bytes=nbytes,
            gflop=2 * n * hw * hw * c * k * 9 / 1e9)


# ---- winograd_conv1d -------------------------------------------------------------------------------
# float32 1 x r / r x 1 convolutions as optimize() runs them: Inception-v4's Inception-B 192->224 1x7 at
# 17x17 (batch 1 and 8) and its Inception-C 448->512 1x3 at 8x8 (batch 1), the input a channel slice of
# the merged 1x1 convolution's output as in the model. eager = conv2d + ReLU; direct = oneDNN's direct
# convolution on a kept primitive (what optimize() ran before); fused-cpu = F(4, r).
WINO1D_CASES = [(1, 192, 224, 17, 7)] if QUICK else [(1, 192, 224, 17, 7), (8, 192, 224, 17, 7),
                                                     (1, 448, 512, 8, 3)]


@pytest.mark.parametrize("contestant", ["eager", "direct", "fused-cpu"])
@pytest.mark.parametrize("case", WINO1D_CASES, ids=lambda c: f"{c[0]}x{c[1]}x{c[3]}x{c[3]}-to-{c[2]}-1x{c[4]}")
def test_winograd_conv1d(benchmark, case, contestant):
    _winograd_skips("winograd_conv1d", contestant)
    n, c, k, hw, r = case
    x = torch.randn(n, 2 * c, hw, hw).contiguous(memory_format=torch.channels_last)[:, c // 2:c // 2 + c]
    w, b = torch.randn(k, c, 1, r) / (r * c) ** 0.5, torch.randn(k)
    benchmark.group = f"winograd_conv1d {n}x{c}x{hw}x{hw} -> {k} 1x{r} float32 cpu"
    pad = [0, r // 2]
    if contestant == "direct":
        packed = ops.onednn_conv_pack(w, x.shape, [1, 1], pad, post_op=1)
        fn = lambda: ops.onednn_conv(x, packed, w.shape, b, [1, 1], pad, post_op=1)  # noqa: E731
    elif contestant == "fused-cpu":
        u = ops.winograd_weight1d(w)
        fn = lambda: ops.winograd_conv1d(x, u, b, 3, r // 2, True)  # noqa: E731
    else:
        fn = lambda: F.relu(F.conv2d(x, w, b, 1, pad))  # noqa: E731
    nbytes = 4 * (n * c * hw * hw + w.numel() + n * k * hw * hw)
    with torch.no_grad():
        run(benchmark, fn, "cpu", contestant=contestant, bytes=nbytes,
            gflop=2 * n * hw * hw * c * k * r / 1e9)
