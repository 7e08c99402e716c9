"""Shared checking helpers: relative errors against float64 references, per-dtype tolerances."""
import torch

TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.float64: 1e-10}
LAYOUTS = {"nchw": torch.contiguous_format, "cl": torch.channels_last}


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """||a - ref|| / ||ref|| in float64 (0 when both are 0)."""
    a, ref = a.detach().double().cpu(), ref.detach().double().cpu()
    den = ref.norm().item()
    num = (a - ref).norm().item()
    return num / den if den > 0 else num


def assert_close(a, ref, dtype, what=""):
    err = rel_err(a, ref)
    assert err < TOL[dtype], f"{what}: relative error {err:.3e} >= {TOL[dtype]:.0e} ({dtype})"


def rand_act(shape, dtype, layout, device, scale=2.0, shift=0.5):
    """Fresh random activations, never zeros, in the requested memory format."""
    x = torch.randn(shape, dtype=torch.float64) * scale + shift
    return x.to(device=device, dtype=dtype).contiguous(memory_format=LAYOUTS[layout])
