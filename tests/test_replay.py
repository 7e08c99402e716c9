"""inception_fast._replay: an optimize()d model's CPU forward recorded once per input signature and
replayed without its module tree.

- the replay gives the bits the modules give, call after call, on fresh inputs, for several input
  shapes and layouts, in float32 and bf16;
- forward hooks are honoured (the model runs through its modules while there are any);
- a change of the package's kernel settings records a new program;
- a forward that reads tensor data, draws random numbers or writes into its own state is not
  replayed (a warning, and the model's own results every call);
- a program drops each intermediate after its last use; copies and pickles of the model record again;
- the extension's C++ replay (no Python between the ops) gives the Python replay's bits, with
  Tensor[] arguments, tensor-list results, keyword and default arguments, Python numbers where an op
  takes a tensor (wrapped numbers: no dtype promotion), in-place ops and constants;
- run_timed gives run's bits and a time per step; OptimizedModel.op_times sums them per op, records
  on its own, changes no result, and refuses what does not replay.
"""
import copy
import io
import pickle

import pytest
import torch
import torch.nn as nn

from _peers import randomise
from inception_fast import _ext, models, ops, optimize
from inception_fast._replay import Program, Programs


def _googlenet():
    torch.manual_seed(0)
    return randomise(models.googlenet(num_classes=10, aux_logits=False, init_weights=True)).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_replay_gives_the_modules_bits(dtype):
    model = _googlenet()
    fast, plain = optimize(model, dtype=dtype), optimize(model, dtype=dtype, replay=False)
    gen = torch.Generator().manual_seed(1)
    shapes = [(2, 3, 96, 96), (1, 3, 75, 83), (2, 3, 96, 96)]
    for call in range(3):
        for shape in shapes:
            x = torch.randn(shape, generator=gen)
            if call == 1:
                x = x.contiguous(memory_format=torch.channels_last)
            assert torch.equal(fast(x), plain(x)), (call, shape)
    programs = fast._programs.programs
    assert len(programs) == 2  # one per shape: the model runs on its input made channels_last
    assert all(len(p) > 40 for p in programs.values())


def test_residual_model_replays():
    torch.manual_seed(0)
    model = randomise(models.inception_resnet_v2(num_classes=7)).eval()
    fast, plain = optimize(model), optimize(model, replay=False)
    for _ in range(3):
        x = torch.randn(1, 3, 75, 75)
        assert torch.equal(fast(x), plain(x))
    assert len(fast._programs.programs) == 1


def test_hooks_see_their_calls():
    fast = optimize(_googlenet())
    x = torch.randn(1, 3, 64, 64)
    fast(x), fast(x)
    assert len(fast._programs.programs) == 1
    assert fast._whole  # the forward is on the one-call path (Replay.run_model)
    seen = []
    handle = fast.model.inception3a.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    y = fast(x)
    assert len(seen) == 1
    handle.remove()
    assert torch.equal(fast(x), y) and len(seen) == 1
    pre = fast.model.conv1.register_forward_pre_hook(lambda m, i: seen.append("pre"))
    fast(x)
    pre.remove()
    glob = nn.modules.module.register_module_forward_hook(lambda m, i, o: seen.append("global"))
    try:
        fast(x)
    finally:
        glob.remove()
    assert seen.count("pre") == 1 and seen.count("global") > 10
    assert torch.equal(fast(x), y) and len(seen) == 2 + seen.count("global")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_the_one_call_forward_gives_the_modules_bits(dtype):
    # Replay.run_model: the input conversion, the recorded ops and the float32 output (NaN put back
    # into the rows of images that held one) in one C++ call, once a shape's forward is recorded
    model = _googlenet()
    fast, plain = optimize(model, dtype=dtype), optimize(model, dtype=dtype, replay=False)
    gen = torch.Generator().manual_seed(2)
    for call in range(4):
        x = torch.randn(3, 3, 80, 72, generator=gen)
        if call == 2:
            x = x.contiguous(memory_format=torch.channels_last)
        if call == 3:
            x[1, 2, 5, 7] = float("nan")
        y = fast(x)
        assert y.dtype == torch.float32
        torch.testing.assert_close(y, plain(x), rtol=0, atol=0, equal_nan=True, msg=f"call {call}")
    assert len(fast._whole) == 1
    assert torch.isnan(y[1]).all() and not torch.isnan(y[[0, 2]]).any()
    # another shape and another dtype of the same shape take the recorded path first, then their own
    for x in (torch.randn(1, 3, 64, 64, generator=gen), torch.randn(3, 3, 80, 72, generator=gen).double()):
        for _ in range(3):
            assert torch.equal(fast(x), plain(x))
    assert len(fast._whole) == 3
    with pytest.raises(TypeError, match="floating-point"):
        fast(torch.ones(3, 3, 80, 72, dtype=torch.int64))


def test_a_settings_change_records_a_new_program():
    fast = optimize(_googlenet())
    x = torch.randn(1, 3, 64, 64)
    fast(x), fast(x)
    with ops.use_backend("reference"):
        plain = optimize(_googlenet(), replay=False)
        for _ in range(2):
            assert torch.equal(fast(x), plain(x))
    assert len(fast._programs.programs) == 2


def test_a_block_switch_change_records_a_new_program():
    fast = optimize(_googlenet())
    plain = optimize(_googlenet(), branch_conv=True, replay=False)
    x = torch.randn(1, 3, 64, 64)
    fast(x), fast(x)
    for m in fast.model.modules():
        if hasattr(m, "use_branch_conv"):
            m.use_branch_conv = True
    for _ in range(2):
        assert torch.equal(fast(x), plain(x))
    assert len(fast._programs.programs) == 2


class _ReadsData(nn.Module):
    def forward(self, x):
        return x * x.sum().item()


class _Random(nn.Module):
    def forward(self, x):
        return x + torch.rand_like(x)


class _Counts(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls.add_(1)
        return x * self.calls


@pytest.mark.parametrize("module", [_ReadsData, _Random, _Counts])
def test_forwards_a_replay_cannot_reproduce_are_run_as_they_are(module):
    m = module()
    progs = Programs(m, m)
    with pytest.warns(UserWarning, match="cannot be replayed"):
        for i in range(4):
            x = torch.randn(3, 5)
            y = progs(x)
            if module is _ReadsData:
                assert torch.equal(y, x * x.sum().item())
            elif module is _Counts:
                assert torch.equal(y, x * (i + 1))
            else:
                assert ((y - x) >= 0).all() and ((y - x) < 1).all()
    assert not progs.programs and progs.refused


def test_a_program_drops_intermediates_after_their_last_use():
    class Chain(nn.Module):
        def forward(self, x):
            skip = x * 2
            for _ in range(5):
                x = torch.relu(x + 1)
            return x + skip

    m = Chain()
    progs = Programs(m, m)
    x = torch.randn(4, 4)
    progs(x), progs(x)
    (prog,) = progs.programs.values()
    assert isinstance(prog, Program) and len(prog) == 12
    freed = {s for step in prog.steps for s in step[-1]}
    made = {s for step in prog.steps for s in step[5]}
    assert freed == made - set(prog.out_slots)
    x = torch.randn(4, 4)
    assert torch.equal(progs(x), m(x))


def test_copies_and_pickles_record_again():
    fast = optimize(_googlenet())
    x = torch.randn(1, 3, 64, 64)
    y = [fast(x) for _ in range(3)][-1]
    for other in (copy.deepcopy(fast), pickle.loads(pickle.dumps(fast))):
        assert not other._programs.programs
        assert all(torch.equal(other(x), y) for _ in range(3))
        assert len(other._programs.programs) == 1
    buf = io.BytesIO()
    torch.save(fast, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert torch.equal(loaded(x), y)


def test_threads_share_a_model():
    import threading

    fast, plain = optimize(_googlenet()), optimize(_googlenet(), replay=False)
    gen = torch.Generator().manual_seed(2)
    inputs = [torch.randn(1, 3, 64 + 8 * (i % 2), 64, generator=gen) for i in range(8)]
    expected = [plain(x) for x in inputs]
    errors = []

    def work(k):
        for i in range(k, k + 8):
            x = inputs[i % 8]
            if not torch.equal(fast(x), expected[i % 8]):
                errors.append(i)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(fast._programs.programs) == 2


class _Glue(nn.Module):
    """The ops a recorded forward holds besides convolutions: split (a Tensor[] result), cat (a
    Tensor[] argument mixing results and a constant), keyword and default arguments, Python numbers
    for tensor arguments, an in-place op, a reduction, a dtype change."""

    def __init__(self):
        super().__init__()
        self.register_buffer("const", torch.randn(1, 3, 5, 5))

    def forward(self, x):
        a, b = x.split([2, 3], dim=1)
        y = torch.cat([b, self.const.expand(x.shape[0], -1, -1, -1).to(x.dtype), a * 2], 1)
        y = y.to(memory_format=torch.channels_last).relu_()
        i = y.to(torch.int32) * 3  # int32, not int64: the 3 is a wrapped number
        f = i * 0.5  # float32 (the default dtype), not float64
        return y.sum(dim=(2, 3), keepdim=True) + 1.5, f, i


@pytest.mark.skipif(not _ext.loaded(), reason="needs the C++ extension (its replay)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_the_cpp_replay_gives_the_python_replays_bits(dtype):
    m = _Glue()
    progs = Programs(m, m)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 5, 5, 5, generator=gen).to(dtype)
    progs(x), progs(x)
    (prog,) = progs.programs.values()
    assert prog.native is not None and len(prog.native) == len(prog)
    for _ in range(3):
        x = torch.randn(3, 5, 5, 5, generator=gen).to(dtype)
        want = m(x)
        for got in (prog.run(x), prog.run_python(x), progs(x)):
            assert [t.dtype for t in got] == [t.dtype for t in want] == [dtype, torch.float32, torch.int32]
            assert all(torch.equal(g, w) for g, w in zip(got, want))


@pytest.mark.skipif(not _ext.loaded(), reason="needs the C++ extension (its replay)")
def test_an_optimized_model_replays_from_cpp():
    model = _googlenet()
    fast = optimize(model)
    x = torch.randn(2, 3, 96, 96)
    fast(x), fast(x)
    (prog,) = fast._programs.programs.values()
    assert prog.native is not None and len(prog.native) == len(prog) > 50
    xin = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(prog.run(xin), prog.run_python(xin))


def test_without_the_cpp_replay_programs_replay_from_python_and_say_so(monkeypatch):
    from inception_fast import _replay

    class NoReplay:
        def __init__(self, *args):
            raise RuntimeError("no Replay here")

    monkeypatch.setattr(_replay, "_native_warned", False)
    monkeypatch.setattr(_ext, "_C", type("C", (), {"Replay": NoReplay}), raising=False)
    m = _Glue()
    progs = Programs(m, m)
    x = torch.randn(2, 5, 5, 5)
    progs(x)
    with pytest.warns(UserWarning, match="replay from Python.*no Replay here"):
        progs(x)
    (prog,) = progs.programs.values()
    assert prog.native is None
    x = torch.randn(2, 5, 5, 5)
    assert all(torch.equal(g, w) for g, w in zip(progs(x), m(x)))


def _glue_program():
    """(_Glue(), its forward recorded on a (3, 5, 5, 5) input)."""
    m = _Glue()
    progs = Programs(m, m)
    x = torch.randn(3, 5, 5, 5)
    progs(x), progs(x)  # the first call runs, the second records
    (prog,) = progs.programs.values()
    return m, prog


def test_run_timed_gives_runs_bits_and_a_time_per_step():
    m, prog = _glue_program()
    assert prog.names[0] == "aten::split_with_sizes.default" and "aten::cat.default" in prog.names
    x = torch.randn(3, 5, 5, 5)
    want = m(x)
    runs = [prog.run_timed(x)] + ([] if prog.native is None else [(prog.run_python(x, t := []), t)])
    for got, times in runs:
        assert all(torch.equal(g, w) for g, w in zip(got, want))
        assert len(times) == len(prog.names) == len(prog) and all(t > 0 for t in times)


def test_describe_gives_each_steps_argument_and_output_sizes():
    _, prog = _glue_program()
    steps = prog.describe(torch.randn(3, 5, 5, 5))
    assert len(steps) == len(prog.names)
    args, outs = steps[0]  # split: the input, the sizes, the dim; two outputs
    assert prog.names[0] == "aten::split_with_sizes.default"
    assert args == (torch.Size([3, 5, 5, 5]), [2, 3], 1) and outs == (torch.Size([3, 2, 5, 5]), torch.Size([3, 3, 5, 5]))
    k = prog.names.index("aten::cat.default")  # a list of tensors: a list of sizes
    (tensors, dim), (out,) = steps[k][0][:2], steps[k][1]
    assert [t[1] for t in tensors] == [3, 3, 2] and dim == 1 and out == torch.Size([3, 8, 5, 5])


def test_op_times_says_where_a_forward_goes():
    model = _googlenet()
    fast = optimize(model)
    x = torch.randn(1, 3, 96, 96)
    rows = fast.op_times(x, runs=3)  # records on its own: no call before
    (prog,) = fast._programs.programs.values()
    names = [r[0] for r in rows]
    assert len(set(names)) == len(names) and sum(r[1] for r in rows) == len(prog)
    assert all(r[2] > 0 for r in rows) and [r[2] for r in rows] == sorted((r[2] for r in rows), reverse=True)
    conv = "inception_fast::onednn_conv.default" if _ext.onednn_loaded() else None
    if conv is not None:
        calls = dict((r[0], r[1]) for r in rows)
        # the stem; a block: its 1x1s merged, two 3x3s, the pool projection; the classifier (the
        # wider 3x3s on Winograd's F(2x2, 3x3) in float32)
        assert rows[0][0] in (conv, "inception_fast::winograd_conv3x3.default")
        assert calls[conv] + calls.get("inception_fast::winograd_conv3x3.default", 0) == 3 + 9 * 4 + 1
    assert "inception_fast::max_pool.default" in names
    steps = fast.step_times(x, runs=2)  # the same steps one by one, in order, with their sizes
    assert [s[0] for s in steps] == list(prog.names) and all(s[3] > 0 for s in steps)
    if conv is not None:
        (args, outs) = next((s[1], s[2]) for s in steps if s[0] == conv)  # the stem: 7x7 stride 2, 3 -> 64
        assert args[0] == torch.Size([1, 3, 96, 96]) and list(args[2]) == [64, 3, 7, 7] and list(args[4]) == [2, 2]
        assert outs == (torch.Size([1, 64, 48, 48]),)
    assert torch.equal(fast(x), optimize(model, replay=False)(x))  # timing changed nothing
    with pytest.raises(ValueError, match="runs must be at least 1"):
        fast.op_times(x, runs=0)
    with pytest.raises(ValueError, match=r"step_times\(\): runs must be at least 1"):
        fast.step_times(x, runs=0)
    with pytest.raises(ValueError, match="replay=True"):
        optimize(model, replay=False).op_times(x)
    fast.register_forward_hook(lambda *a: None)
    fast.model.fc.register_forward_hook(lambda *a: None)
    with pytest.raises(RuntimeError, match="not replayed"):
        fast.op_times(torch.randn(1, 3, 80, 80))
