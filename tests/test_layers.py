"""ConvBNReLU and ScaledResidual: drop-in names, fused path == reference path, training included."""
import copy

import pytest
import torch
import torch.nn as nn

from _helpers import assert_close, rel_err
from inception_fast import ConvBNReLU, ScaledResidual, use_fused


class _TorchvisionBasicConv2d(nn.Module):
    # torchvision.models.inception.BasicConv2d, written out so the test needs no torchvision.
    def __init__(self, cin, cout, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


def _randomise_bn(bn):
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
        bn.running_mean.normal_(0, 0.2)
        bn.running_var.uniform_(0.5, 2.0)


def test_state_dict_is_that_of_basic_conv2d():
    ours = ConvBNReLU(8, 16, kernel_size=3, padding=1)
    peer = _TorchvisionBasicConv2d(8, 16, kernel_size=3, padding=1)
    assert list(ours.state_dict()) == list(peer.state_dict())
    _randomise_bn(peer.bn)
    ours.load_state_dict(peer.state_dict(), strict=True)
    x = torch.randn(2, 8, 9, 9)
    peer.eval(), ours.eval()
    with use_fused(True):
        assert_close(ours(x), peer(x), torch.float32, "fused eval vs peer")


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_fused_training_matches_reference(channels_last, momentum):
    ref = ConvBNReLU(5, 13, kernel_size=(1, 3), padding=(0, 1), momentum=momentum, fused=False)
    _randomise_bn(ref.bn)
    fused = copy.deepcopy(ref)
    fused.fused = True
    opt_r = torch.optim.SGD(ref.parameters(), lr=0.1)
    opt_f = torch.optim.SGD(fused.parameters(), lr=0.1)
    mf = torch.channels_last if channels_last else torch.contiguous_format
    for step in range(3):
        x = torch.randn(4, 5, 7, 9).contiguous(memory_format=mf)
        losses = []
        for m, opt in ((ref, opt_r), (fused, opt_f)):
            opt.zero_grad()
            y = m(x)
            loss = (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert abs(losses[0] - losses[1]) <= 1e-5 * max(1.0, abs(losses[0])), f"step {step}: {losses}"
    for (name, a), (_, b) in zip(ref.state_dict().items(), fused.state_dict().items()):
        if a.is_floating_point():
            assert rel_err(b, a) < 1e-5, name
        else:
            assert torch.equal(a, b), name  # num_batches_tracked
    ref.eval(), fused.eval()
    x = torch.randn(2, 5, 7, 9)
    assert_close(fused(x), ref(x), torch.float32, "eval after training")


def test_global_switch_and_module_override():
    m = ConvBNReLU(3, 4, kernel_size=1)
    calls = []
    import inception_fast.layers as layers

    orig = layers.bn_relu_module
    layers.bn_relu_module = lambda *a: calls.append(1) or orig(*a)
    try:
        x = torch.randn(2, 3, 5, 5)
        with use_fused(False):
            m(x)
        assert calls == []
        m(x)
        assert calls == [1]
        m.fused = False
        m(x)
        assert calls == [1]
    finally:
        layers.bn_relu_module = orig


@pytest.mark.parametrize("relu", [True, False])
def test_scaled_residual_matches_timm_block_arithmetic(relu):
    res = ScaledResidual(0.17, relu=relu)
    shortcut = torch.randn(2, 32, 9, 9, requires_grad=True)
    branch = torch.randn(2, 32, 9, 9, requires_grad=True)
    with use_fused(True):
        y = res(shortcut, branch)
    ref = branch.detach().double() * 0.17 + shortcut.detach().double()  # timm: out * scale + x
    ref = ref.relu() if relu else ref
    assert_close(y, ref, torch.float32)
    assert "scale=0.17" in repr(res)
    y.sum().backward()
    assert shortcut.grad is not None and branch.grad is not None


def test_bf16_autocast_and_channels_last():
    m = ConvBNReLU(4, 8, kernel_size=3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(2, 4, 11, 11).contiguous(memory_format=torch.channels_last)
    ref = copy.deepcopy(m)
    ref.fused = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
        y_ref = ref(x)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(y, y_ref) < 1e-2
    y.float().sum().backward()
    assert m.bn.weight.grad is not None and m.bn.weight.grad.dtype == torch.float32


@pytest.mark.parametrize("kernel,padding,stride,bias,hw", [
    (1, 0, 1, False, (1, 1)), ((1, 3), (0, 1), 1, False, (1, 1)), ((3, 1), (1, 0), 1, True, (1, 1)),
    (3, 1, 1, False, (1, 1)), (3, 1, 2, True, (1, 1)),        # a 1x1 map: one tap of the kernel
    (1, 0, 1, True, (3, 5)), (1, 0, 1, False, (7, 7)),          # 1x1 convs on larger maps
    (3, 1, 1, False, (5, 4)), ((1, 7), (0, 3), 1, True, (3, 3)), (3, 0, 2, False, (7, 7)),  # k x k: the conv
])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_conv2d_fast_is_the_conv(kernel, padding, stride, bias, hw, layout):
    # The fused path's conv: a GEMM where it is one (1x1 convs; any conv on a 1x1 map, which touches
    # only one tap), oneDNN's convolution elsewhere, channels_last throughout. The conv's numbers
    # and gradients either way (the unused taps get zero gradient, as they touch only padding).
    from inception_fast.layers import conv2d_fast

    conv = torch.nn.Conv2d(37, 23, kernel, stride=stride, padding=padding, bias=bias).double()
    x = torch.randn(5, 37, *hw, dtype=torch.float64)
    x = x.contiguous(memory_format=torch.channels_last if layout == "cl" else torch.contiguous_format)
    x.requires_grad_()
    y_ref = conv(x)
    y = conv2d_fast(conv, x)
    assert y.shape == y_ref.shape and torch.allclose(y, y_ref, atol=1e-12)
    assert y.is_contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(y_ref)
    params = [x, conv.weight] + ([conv.bias] if bias else [])
    for a, b in zip(torch.autograd.grad(y, params, g), torch.autograd.grad(y_ref, params, g)):
        assert torch.allclose(a, b, atol=1e-12)


def test_conv2d_fast_takes_the_gemm_where_there_is_one():
    from inception_fast.layers import _gemm_weight

    one = torch.randn(2, 8, 1, 1)
    assert _gemm_weight(torch.nn.Conv2d(8, 8, 1), torch.randn(2, 8, 5, 5)) is not None
    assert _gemm_weight(torch.nn.Conv2d(8, 8, 3, padding=1), one) is not None
    assert _gemm_weight(torch.nn.Conv2d(8, 8, 3, padding=1), torch.randn(2, 8, 2, 1)) is None
    assert _gemm_weight(torch.nn.Conv2d(8, 8, 1, stride=2), torch.randn(2, 8, 4, 4)) is None
    assert _gemm_weight(torch.nn.Conv2d(8, 8, 3, padding=1, dilation=2), one) is None
    assert _gemm_weight(torch.nn.Conv2d(8, 8, 3, padding=1, groups=2), one) is None
    assert _gemm_weight(torch.nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"), one) is None
    assert _gemm_weight(torch.nn.Conv2d(8, 8, 3, padding="same"), one) is None


def test_set_conv_weight_layout_in_place():
    # In place, on the parameters themselves: same values, same objects (an optimizer holding them
    # keeps them), same state_dict; 1x1 weights are left alone (the GEMM takes either layout).
    from inception_fast.layers import set_conv_weight_layout

    block = nn.Sequential(ConvBNReLU(6, 5, kernel_size=3, padding=1), ConvBNReLU(5, 4, kernel_size=1))
    weight, before = block[0].conv.weight, block[0].conv.weight.detach().clone()
    opt = torch.optim.SGD(block.parameters(), lr=0.1, momentum=0.9)
    set_conv_weight_layout(block, channels_last=True)
    assert block[0].conv.weight is weight and weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(weight.detach(), before)
    assert block[1].conv.weight.is_contiguous()
    block.train()(torch.randn(2, 6, 4, 4)).sum().backward()
    opt.step()
    assert not torch.equal(weight.detach(), before)  # trained through the optimizer that held it
    restored = nn.Sequential(ConvBNReLU(6, 5, kernel_size=3, padding=1), ConvBNReLU(5, 4, kernel_size=1))
    restored.load_state_dict(block.state_dict())
    assert torch.equal(restored[0].conv.weight, block[0].conv.weight)
    set_conv_weight_layout(block, channels_last=False)
    assert weight.is_contiguous() and torch.equal(restored[0].conv.weight, weight)


def test_model_set_fused_sets_the_weight_layout():
    from inception_fast.models import create_model

    m = create_model("googlenet", num_classes=3, aux_logits=False, init_weights=False)
    kxk = m.conv1.conv.weight
    assert kxk.is_contiguous()  # built as the peer builds it
    assert m.set_fused(True) is m and kxk.is_contiguous(memory_format=torch.channels_last)
    m.set_fused(None)
    assert kxk.is_contiguous(memory_format=torch.channels_last)  # None: the path only
    m.set_fused(False)
    assert kxk.is_contiguous()


def test_fused_ops_under_activation_checkpointing():
    # The C++ autograd of each fused op unpacks its saved tensors where a non-reentrant
    # torch.utils.checkpoint can recompute them (a recomputation inside the backward's dispatch
    # guard would record nothing): same gradients with and without checkpointing.
    from torch.utils.checkpoint import checkpoint

    from inception_fast import layers

    torch.manual_seed(0)
    block = nn.Sequential(layers.ConvBNReLU(6, 8, 1), layers.ConvBNReLU(8, 8, 3, padding=1)).train()
    layers.set_conv_weight_layout(block, channels_last=True)
    res = layers.ScaledResidual(0.3)
    x = torch.randn(3, 6, 3, 3, requires_grad=True)

    def f(x):
        y = block(x)
        return res(y, y * 0.5)

    grads = []
    for use_ckpt in (False, True):
        for p in list(block.parameters()) + [x]:
            p.grad = None
        with layers.use_fused(True):
            out = checkpoint(f, x, use_reentrant=False) if use_ckpt else f(x)
            out.square().sum().backward()
        grads.append([p.grad.clone() for p in list(block.parameters()) + [x]])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
