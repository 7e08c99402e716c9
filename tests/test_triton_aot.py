"""The Triton kernels compiled ahead of time for sm_80 and sm_90 (tools/triton_aot.py): every
launch configuration the models make compiles, fits the multiprocessor's shared memory and spills no
registers; recording launches changes nothing; the GPU tile configuration of branch_conv's
convolution computes what the reference does (run here through the interpreter)."""
import contextlib
import os

import pytest
import torch

from inception_fast import _ext
from inception_fast.ops import _backend
from tools import triton_aot as aot

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1" or _backend.triton_importable() is not None,
    reason="records launches through the Triton interpreter (CPU machines: TRITON_INTERPRET=1, which conftest sets)")


def test_recording_notes_each_launch_and_changes_nothing():
    from inception_fast.triton import branch_conv as tbc

    x = torch.randn(2, 8, 9, 9).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(12, 8, 3, 3), torch.randn(12)
    ref = torch.relu(torch.nn.functional.conv2d(x, w, b, 1, 1))
    y = torch.empty_like(ref, memory_format=torch.channels_last)
    with aot.record() as specs:
        tbc.conv_into(x, w, b, (1, 1), (1, 1), y)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    (spec,) = specs
    sig = dict(spec.signature)
    assert spec.kernel == "_conv_kernel" and spec.module == "inception_fast.triton.branch_conv"
    assert sig["x_ptr"] == "*fp32" and sig["M"] == "i32" and sig["BLOCK_M"] == "constexpr"
    assert dict(spec.constexprs)["HAS_BIAS"] is True and spec.num_warps == 4
    y2 = torch.zeros_like(y)
    with aot.record(run=False) as specs2:
        tbc.conv_into(x, w, b, (1, 1), (1, 1), y2)
    assert specs2 == specs and not y2.any()  # noted, not run


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_the_gpu_tile_configuration_matches_the_reference(monkeypatch, dtype):
    from inception_fast.triton import branch_conv as tbc

    monkeypatch.setattr(tbc, "_CONV_CONFIG", "gpu")
    x = torch.randn(1, 40, 13, 11).to(dtype).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(70, 40, 3, 3).to(dtype) * 0.1, torch.randn(70).to(dtype)
    ref = torch.relu(torch.nn.functional.conv2d(x.double(), w.double(), b.double(), 2, 1))
    full = torch.empty(1, 75, 7, 6, dtype=dtype).contiguous(memory_format=torch.channels_last)
    full.fill_(float("nan"))
    tbc.conv_into(x, w, b, (2, 2), (1, 1), full[:, 3:73])  # into a channel slice: every element written
    assert tbc._conv_config(42, 70, 40, dtype)[0] == 64
    y = full[:, 3:73].double()
    assert not y.isnan().any() and full[:, :3].isnan().all() and full[:, 73:].isnan().all()
    assert ((y - ref).norm() / ref.norm()).item() < (1e-6 if dtype == torch.float32 else 1e-2)


def test_problems_names_what_would_fail_on_a_gpu():
    spec = aot.Spec("m", "_k", (("x", "*bf16"), ("B", "constexpr")), (("B", 64),), 8, 3).to_json()
    rows = [dict(spec=spec, arch=90, ok=True, shared=1024, reg=100, stack=0, local=0),
            dict(spec=spec, arch=80, ok=True, shared=200_000, reg=100, stack=0, local=0),
            dict(spec=spec, arch=90, ok=True, shared=1024, reg=255, stack=96, local=0),
            dict(spec=spec, arch=90, ok=False, error="CompilationError: boom")]
    found = aot.problems(rows)
    assert len(found) == 3
    assert "shared memory" in found[0] and "spills" in found[1] and "boom" in found[2]


@pytest.mark.skipif(not _ext.loaded(), reason="the models' fused path needs inception_fast._C")
def test_the_models_launches_compile_for_sm80_and_sm90_without_spills():
    # (Inception-ResNet-v2 launches every kernel kind: its Mixed_5b has the average-pool branch)
    specs = aot.model_specs(["inception_resnet_v2"], batch=2, size=75)
    kernels = {s.kernel for s in specs}
    assert {"_conv_kernel", "_pool_kernel", "_bn_stats_cl_kernel", "_bn_relu_apply_kernel",
            "_scaled_residual_add_kernel", "_scaled_residual_add_backward_kernel"} <= kernels, kernels
    rows = aot.compile_specs(specs)
    assert len(rows) == 2 * len(specs)
    assert aot.problems(rows) == []
    assert all(r["ok"] and r["shared"] > 0 for r in rows if r["spec"]["kernel"] == "_conv_kernel")


def test_as_on_a_gpu_records_the_gpu_configuration_and_restores_the_interpreters():
    from inception_fast.triton import bn_relu
    from inception_fast.triton import branch_conv as tbc

    x = torch.randn(2, 8, 9, 9).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(12, 8, 3, 3).bfloat16(), torch.randn(12).bfloat16()
    y = torch.empty(2, 12, 9, 9, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    launches = {}
    for where in ("interpreter", "gpu"):
        with aot.record(run=False) as specs, (aot.as_on_a_gpu() if where == "gpu" else contextlib.nullcontext()):
            tbc.conv_into(x.bfloat16(), w, b, (1, 1), (1, 1), y)
            bn_relu.bn_stats(torch.randn(4, 8, 16, 16))
        launches[where] = {s.kernel: dict(s.constexprs) | {"num_warps": s.num_warps} for s in specs}
    conv, gpu_conv = launches["interpreter"]["_conv_kernel"], launches["gpu"]["_conv_kernel"]
    assert conv["UPCAST"] and conv["ROUND_BF16"] and not gpu_conv["UPCAST"] and not gpu_conv["ROUND_BF16"]
    with tbc.launches_as_on_gpu():
        block_m, block_n, _, warps, _ = tbc._conv_config(2 * 81, 12, 8, torch.bfloat16)
    assert (gpu_conv["BLOCK_M"], gpu_conv["BLOCK_N"], gpu_conv["num_warps"]) == (block_m, block_n, warps) == (64, 16, 8)
    assert launches["interpreter"] != launches["gpu"]
    # the hooks put back what they replaced
    assert tbc._interpreting() and bn_relu._target_programs(torch.device("cpu")) == bn_relu._CPU_PROGRAMS
