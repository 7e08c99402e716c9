"""torch.compile(fullgraph=True) traces the ops (custom ops, no graph break), forward and backward."""
import copy

import pytest
import torch
import torch.nn as nn

from _helpers import assert_close
from conftest import DEVICE_BACKEND_IDS, DEVICE_BACKENDS
from inception_fast import ConvBNReLU, ScaledResidual, ops


class _Block(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.a = ConvBNReLU(c, c, kernel_size=3, padding=1)
        self.b = ConvBNReLU(c, c, kernel_size=1)
        self.up = nn.Conv2d(c, c, 1)
        self.res = ScaledResidual(0.17)

    def forward(self, x):
        return self.res(x, self.up(self.b(self.a(x))))


@pytest.mark.parametrize("device,backend", [p for p in DEVICE_BACKENDS if p[1] != "reference"],
                         ids=[i for p, i in zip(DEVICE_BACKENDS, DEVICE_BACKEND_IDS) if p[1] != "reference"])
def test_compile_fullgraph_matches_eager(device, backend):
    torch._dynamo.reset()
    model = _Block().to(device)
    compiled_model = copy.deepcopy(model)
    x = torch.randn(2, 16, 9, 9, device=device)
    with ops.use_backend(backend):
        compiled = torch.compile(compiled_model, fullgraph=True, backend="aot_eager" if backend == "triton" else "inductor")
        # training: forward, backward and the running-stat update
        y_e = model(x)
        y_c = compiled(x)
        assert_close(y_c, y_e, torch.float32, "train forward")
        y_e.square().sum().backward()
        y_c.square().sum().backward()
        for (n, p), (_, q) in zip(model.named_parameters(), compiled_model.named_parameters()):
            assert_close(q.grad, p.grad, torch.float32, f"grad {n}")
        for (n, p), (_, q) in zip(model.named_buffers(), compiled_model.named_buffers()):
            if p.is_floating_point():
                assert_close(q, p, torch.float32, f"buffer {n}")
            else:
                assert torch.equal(p, q), n
        # eval
        model.eval(), compiled_model.eval()
        with torch.no_grad():
            assert_close(compiled(x), model(x), torch.float32, "eval forward")


def test_compiled_graph_calls_the_custom_ops():
    torch._dynamo.reset()
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("aot_eager")
    model = _Block()
    with ops.use_backend("cpu"):
        torch.compile(model, backend=counter, fullgraph=True)(torch.randn(2, 16, 9, 9))
    assert counter.frame_count == 1
    targets = {str(n.target).removesuffix(".default") for g in counter.graphs for n in g.graph.nodes
               if n.op == "call_function"}
    # Training: BatchNorm + ReLU as the one-call bn_relu_train (bn_stats + bn_relu_apply inside), the
    # 1x1 convs as conv1x1, the residual as scaled_residual_add.
    assert {"inception_fast.bn_relu_train", "inception_fast.conv1x1", "inception_fast.scaled_residual_add"} <= targets
    assert not any("batch_norm" in t or "relu" == t.split(".")[-1] for t in targets), targets
