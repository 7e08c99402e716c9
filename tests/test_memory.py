"""inception_fast.memory: the caching CPU allocator that optimize()d models run under.

- inside `pooled()` a freed block of >= 256 KiB is handed out again (no page faults), never while a
  tensor still holds it; small blocks and everything outside a scope go to torch's allocator;
- a pooled block returns to the pool wherever it is freed: outside the scope, on another thread;
- the cache limit and empty_cache() hold; scopes nest; wrong use raises;
- an optimize()d model gives the same bits in and out of the pool, and reuses blocks.
"""
import threading

import pytest
import torch

from _peers import randomise
from inception_fast import memory, models, optimize

pytestmark = pytest.mark.skipif(not memory.available(), reason="inception_fast._C not built")

BIG = 1 << 18  # float32 elements: 1 MiB, pooled


@pytest.fixture(autouse=True)
def _fresh_pool():
    memory.empty_cache()
    before = memory.limit()
    yield
    memory.set_limit(before)
    memory.empty_cache()


def test_a_freed_block_is_handed_out_again():
    with memory.pooled():
        x = torch.randn(BIG)
        ptr = x.data_ptr()
        del x
        hits = memory.stats()["hits"]
        y = torch.randn(BIG)
        assert y.data_ptr() == ptr
        assert memory.stats()["hits"] == hits + 1


def test_live_tensors_never_share_a_block():
    gen = torch.Generator().manual_seed(0)
    sizes = [BIG, BIG + 1, 3 * BIG, BIG // 2 + 7, 2 * BIG, BIG]
    with memory.pooled():
        live = {}
        for round_ in range(4):
            for i, n in enumerate(sizes):
                live[(round_, i)] = torch.full((n,), float(round_ * 100 + i))
            for key in list(live)[::2]:  # free half, so the next round reuses their blocks
                del live[key]
            spans = sorted((t.data_ptr(), t.data_ptr() + t.numel() * 4) for t in live.values())
            assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
        for (round_, i), t in live.items():
            assert torch.equal(t, torch.full_like(t, float(round_ * 100 + i))), (round_, i)
        x = torch.randn(BIG, generator=gen)
        assert x.isfinite().all()


def test_small_blocks_and_allocations_outside_a_scope_are_not_pooled():
    before = memory.stats()
    keep = [torch.randn(BIG), torch.randn(2 * BIG)]  # outside
    with memory.pooled():
        keep.append(torch.randn(1000))  # 4 KB
    after = memory.stats()
    assert after["live_bytes"] == before["live_bytes"]
    assert after["hits"] + after["misses"] == before["hits"] + before["misses"]
    del keep


def test_a_pooled_block_returns_to_the_pool_wherever_it_is_freed():
    with memory.pooled():
        a = torch.randn(BIG)
        b = torch.randn(2 * BIG)
    base = memory.stats()["cached_bytes"]
    del a  # outside the scope
    assert memory.stats()["cached_bytes"] == base + BIG * 4
    holder = [b]
    t = threading.Thread(target=holder.clear)  # on another thread
    t.start()
    t.join()
    del b
    assert memory.stats()["cached_bytes"] == base + 3 * BIG * 4


def test_limit_and_empty_cache():
    memory.set_limit(0)
    with memory.pooled():
        torch.randn(BIG)
    assert memory.stats()["cached_bytes"] == 0
    memory.set_limit(BIG * 4)
    with memory.pooled():
        a, b = torch.randn(BIG), torch.randn(BIG)
        del a, b  # one fits under the limit, the other goes back to the system
    assert memory.stats()["cached_bytes"] == BIG * 4
    memory.set_limit(64 << 20)
    with memory.pooled():
        del [torch.randn(BIG) for _ in range(3)][:]
    memory.empty_cache()
    assert memory.stats()["cached_bytes"] == 0
    with pytest.raises(ValueError, match="byte count"):
        memory.set_limit(-1)
    with pytest.raises(ValueError, match="byte count"):
        memory.set_limit(1.5)


def test_scopes_nest_and_exits_are_counted():
    with memory.pooled():
        with memory.pooled():
            x = torch.randn(BIG)
        y = torch.randn(BIG)  # still inside the outer scope
    live = memory.stats()["live_bytes"]
    del x, y
    assert memory.stats()["live_bytes"] == live - 2 * BIG * 4
    from inception_fast import _ext
    with pytest.raises(RuntimeError, match="exited more often than entered"):
        _ext._C._pool_exit()


def test_storage_resize_and_numpy_views_of_pooled_blocks():
    with memory.pooled():
        x = torch.arange(BIG, dtype=torch.float32)
        v = torch.arange(BIG, dtype=torch.float32).numpy()  # the array keeps its block alive
    cached = memory.stats()["cached_bytes"]
    x.resize_(3 * BIG)  # outside: a new block from torch's allocator, the old one back to the pool
    assert torch.equal(x[:BIG], torch.arange(BIG, dtype=torch.float32))
    assert memory.stats()["cached_bytes"] == cached + BIG * 4
    with memory.pooled():
        y = torch.arange(BIG, dtype=torch.float32) * 2  # may take x's old block, never v's
    assert torch.equal(torch.from_numpy(v), y / 2)


def test_optimized_model_same_bits_in_and_out_of_the_pool():
    torch.manual_seed(0)
    model = randomise(models.googlenet(num_classes=10, aux_logits=False, init_weights=True)).eval()
    m = optimize(model)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        plain = m.model(x.contiguous(memory_format=torch.channels_last))  # no pool
    first = m(x)
    hits = memory.stats()["hits"]
    second = m(x)
    assert memory.stats()["hits"] > hits  # the second forward reused the first one's blocks
    assert torch.equal(first, plain) and torch.equal(second, plain)


def _child_uses_the_pool(q):
    torch.set_num_threads(1)  # GNU OpenMP hangs in a forked child of a parent that used it (as DataLoader workers do)
    with memory.pooled():
        x = torch.ones(BIG)
        del x
        y = torch.ones(BIG)
    q.put(float(y.sum()))


def test_a_forked_child_uses_the_pool():
    import multiprocessing as mp

    with memory.pooled():
        keep = torch.randn(BIG)  # the parent holds pooled blocks when it forks
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_uses_the_pool, args=(q,))
    p.start()
    assert q.get(timeout=60) == BIG
    p.join(timeout=60)
    assert p.exitcode == 0
    del keep


def _googlenet_fused(aux: bool):
    torch.manual_seed(0)
    return randomise(models.googlenet(num_classes=10, aux_logits=aux, init_weights=True)).set_fused(True)


def _counted() -> int:
    s = memory.stats()
    return s["hits"] + s["misses"]


def test_a_fused_training_step_runs_in_the_pool_with_the_same_bits():
    """Forward and backward of a model on the fused path allocate from the pool (its output, a
    namedtuple with the auxiliary logits, comes back whole), the scope ends with the backward, and the
    gradients are the bits of the same step with the pool bypassed (nn.Module.__call__)."""
    model = _googlenet_fused(aux=True).train()
    x = torch.randn(2, 3, 96, 96)

    def step(call):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same dropout masks
        out = call(x)
        assert type(out).__name__ == "GoogLeNetOutputs"
        loss = out.logits.square().mean() + out.aux_logits2.mean() + out.aux_logits1.abs().mean()
        before = _counted()
        loss.backward()
        return [p.grad.clone() for p in model.parameters()], out.logits.detach(), _counted() - before

    plain, plain_out, plain_allocs = step(lambda x: torch.nn.Module.__call__(model, x))
    assert plain_allocs == 0  # no pool: none of the backward's allocations came from it
    for _ in range(2):  # the second step reuses the first one's blocks
        hits = memory.stats()["hits"]
        grads, out, pooled_allocs = step(model)
        assert pooled_allocs > 0, "the backward did not allocate from the pool"
        assert torch.equal(out, plain_out)
        assert all(torch.equal(g, p) for g, p in zip(grads, plain))
    assert memory.stats()["hits"] > hits
    assert not getattr(memory._backward, "entered", False)
    live = memory.stats()["live_bytes"]
    keep = torch.randn(BIG)  # after the backward: outside any scope
    assert memory.stats()["live_bytes"] == live
    del keep


def test_the_pool_stays_out_of_the_reference_path_and_of_outputs_without_gradient():
    model = _googlenet_fused(aux=False).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        before = _counted()
        y = model(x)
        assert _counted() > before  # the fused forward is pooled
        assert y.grad_fn is None
        model.set_fused(False)
        before = _counted()
        model(x)
        assert _counted() == before  # the reference path, what eager users had, is not


class _FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("boom in backward")


def test_a_backward_that_raises_leaves_the_pool_at_the_next_forward():
    model = _googlenet_fused(aux=False).train()
    x = torch.randn(2, 3, 96, 96, requires_grad=True)
    out = model(_FailingBackward.apply(x))  # its backward runs last, after the pool was entered
    with pytest.raises(RuntimeError, match="boom in backward"):
        out.sum().backward()
    assert memory._backward.entered  # the engine never reached the end of the graph
    with torch.no_grad():
        model(x.detach())
    assert not memory._backward.entered
    live = memory.stats()["live_bytes"]
    keep = torch.randn(BIG)
    assert memory.stats()["live_bytes"] == live
    del keep
