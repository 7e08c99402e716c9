"""bn_relu across processes (SyncBatchNorm semantics): 2 gloo processes, each with half of the batch,
must give what one process gives on the whole batch -- outputs, input gradients, running statistics,
and weight/bias gradients that sum to the whole batch's."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from _helpers import rel_err
from conftest import DEVICE_BACKENDS

WORLD = 2
CPU_BACKENDS = [b for d, b in DEVICE_BACKENDS if d == "cpu"]


def _data(shape=(4, 6, 5, 7)):
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.5
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    w = torch.rand(shape[1], generator=gen, dtype=torch.float64) + 0.5
    b = torch.randn(shape[1], generator=gen, dtype=torch.float64)
    return x, g, w, b


def _worker(rank, init_file, backend, channels_last, out_dir):
    os.environ.setdefault("TRITON_INTERPRET", "1")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        from inception_fast import ops

        x, g, w, b = _data()
        half = x.shape[0] // WORLD
        sl = slice(rank * half, (rank + 1) * half)
        mf = torch.channels_last if channels_last else torch.contiguous_format
        xr = x[sl].float().contiguous(memory_format=mf).requires_grad_()
        wr, br = w.float().requires_grad_(), b.float().requires_grad_()
        rm, rv = torch.zeros(6), torch.ones(6)
        with ops.use_backend(backend):
            y = ops.bn_relu(xr, wr, br, rm, rv, True, 0.1, 1e-5, process_group=dist.group.WORLD)
        y.backward(g[sl].float())
        torch.save({"y": y.detach(), "gx": xr.grad, "gw": wr.grad, "gb": br.grad, "rm": rm, "rv": rv},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_two_processes_match_one(tmp_path, backend, channels_last):
    mp.spawn(_worker, args=(str(tmp_path / "init"), backend, channels_last, str(tmp_path)), nprocs=WORLD, join=True)
    res = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    x, g, w, b = _data()
    x, w, b = x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    rm, rv = torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
    y = torch.relu(torch.nn.functional.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5))
    y.backward(g)

    assert rel_err(torch.cat([r["y"] for r in res]), y) < 1e-5
    assert rel_err(torch.cat([r["gx"] for r in res]), x.grad) < 1e-5
    assert rel_err(sum(r["gw"] for r in res), w.grad) < 1e-5
    assert rel_err(sum(r["gb"] for r in res), b.grad) < 1e-5
    for r in res:
        assert rel_err(r["rm"], rm) < 1e-5 and rel_err(r["rv"], rv) < 1e-5
