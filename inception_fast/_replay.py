"""A forward recorded once as the flat list of the ops it dispatched, then replayed without the
Python around them: the CPU counterpart of a CUDA graph, for `optimize()`d models.

Why: on the CPU at batch 1 the Python of the module tree (module calls, branch bookkeeping, weight
cache lookups) costs about 30 us per op, 2.5 ms of a 20 ms googlenet forward; a replay calls the
same ops with the same arguments from a list, a few microseconds each.

How: the first call with an input signature (shape, strides, dtype, device, and the settings that
pick kernels) runs the model as it is, building what it builds on first use (prepacked weights);
the second runs it under a TorchDispatchMode that records each op, its
non-tensor arguments, its constant tensors (weights, prepacked weights: held by reference), and
which earlier result each tensor argument is. A replay runs the steps in order and drops each
result after its last use (the same peak memory as the model). The recording is refused -- the
model then runs as it is, with a warning -- when an op reads tensor data into Python
(`.item()`, nonzero, ...), draws random numbers, writes into a constant, or returns something
other than tensors: a replay could not reproduce that.
"""
from __future__ import annotations

import threading
import time
import warnings
from collections import OrderedDict
from operator import attrgetter

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["Program", "Programs", "RecordingRefused", "signature"]

# Ops whose result a replay would not reproduce: they read tensor data into Python, make the
# shape of their result depend on it, or draw random numbers.
_DATA_DEPENDENT = {
    "aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::nonzero_static", "aten::masked_select",
    "aten::unique", "aten::_unique", "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive",
    "aten::is_nonzero", "aten::equal", "aten::allclose", "aten::bernoulli", "aten::bernoulli_",
    "aten::native_dropout", "aten::rand", "aten::rand_like", "aten::randn", "aten::randn_like",
    "aten::randint", "aten::randint_like", "aten::randperm", "aten::normal", "aten::normal_", "aten::uniform_",
    "aten::multinomial", "aten::exponential_", "aten::geometric_", "aten::cauchy_", "aten::log_normal_",
    "aten::random_", "aten::_assert_async", "aten::_assert_scalar",
}


_HOOKS, _PRE_HOOKS = attrgetter("_forward_hooks"), attrgetter("_forward_pre_hooks")


class RecordingRefused(RuntimeError):
    pass


class _Recorder(TorchDispatchMode):
    def __init__(self, x: torch.Tensor):
        super().__init__()
        self.slot_of: dict[int, int] = {id(x): 0}
        self.keep = [x]  # every recorded tensor stays alive while recording: ids stay unique
        self.n_slots = 1
        self.steps: list = []  # (func, args template, kwargs, fills, list fills, out slots, out kind)

    def _arg(self, a, fills, pos):
        if isinstance(a, torch.Tensor):
            slot = self.slot_of.get(id(a))
            if slot is not None:
                fills.append((pos, slot))
                return None
            return a  # a constant: weight, bias, prepacked weight, buffer
        return a

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if name in _DATA_DEPENDENT:
            raise RecordingRefused(f"{func} reads tensor data or draws random numbers")
        for i, arg in enumerate(func._schema.arguments):
            if arg.alias_info is not None and arg.alias_info.is_write:
                value = args[i] if i < len(args) else kwargs.get(arg.name)
                for t in (value if isinstance(value, (list, tuple)) else (value,)):
                    if isinstance(t, torch.Tensor) and id(t) not in self.slot_of:
                        raise RecordingRefused(f"{func} writes into a tensor the forward did not make")
        tmpl, fills, list_fills = [], [], []
        for i, a in enumerate(args):
            if isinstance(a, (list, tuple)) and any(isinstance(t, torch.Tensor) for t in a):
                sub = []
                items = [self._arg(t, sub, j) for j, t in enumerate(a)]
                if sub:
                    list_fills.append((i, tuple(items), tuple(sub), type(a)))
                tmpl.append(type(a)(items) if not sub else None)
            else:
                tmpl.append(self._arg(a, fills, i))
        for v in kwargs.values():
            for t in (v if isinstance(v, (list, tuple)) else (v,)):
                if isinstance(t, torch.Tensor) and id(t) in self.slot_of:
                    raise RecordingRefused(f"{func} takes a forward's tensor as a keyword argument")
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            outs, kind = [out], "tensor"
        elif isinstance(out, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in out):
            outs, kind = list(out), type(out)
        else:
            raise RecordingRefused(f"{func} returns {type(out).__name__}, not tensors")
        slots = []
        for t in outs:
            slot = self.slot_of.get(id(t))
            if slot is None:  # a new tensor (an in-place op returns its input: the same slot)
                slot = self.slot_of[id(t)] = self.n_slots
                self.n_slots += 1
                self.keep.append(t)
            slots.append(slot)
        self.steps.append((func, tuple(tmpl), dict(kwargs), tuple(fills), tuple(list_fills), tuple(slots), kind))
        return out


class Program:
    """The recorded ops of one forward: `run(x)` replays them on a new input of the same signature."""

    def __init__(self, rec: _Recorder, output):
        flat = output if isinstance(output, (list, tuple)) else [output]
        if not all(isinstance(t, torch.Tensor) and id(t) in rec.slot_of for t in flat):
            raise RecordingRefused("the forward returned a tensor that none of its ops made")
        self.out_slots = tuple(rec.slot_of[id(t)] for t in flat)
        self.out_kind = None if isinstance(output, torch.Tensor) else type(output)
        # each slot dropped right after the step that reads it last (outputs kept)
        last = {}
        for k, (_, _, _, fills, list_fills, slots, _) in enumerate(rec.steps):
            for s in slots:
                last.setdefault(s, k)
            for _, s in fills:
                last[s] = k
            for _, _, sub, _ in list_fills:
                for _, s in sub:
                    last[s] = k
        frees: dict[int, list[int]] = {}
        for s, k in last.items():
            if s not in self.out_slots and s != 0:
                frees.setdefault(k, []).append(s)
        self.n_slots = rec.n_slots
        self.names = tuple(f"{func._schema.name}.{func._schema.overload_name or 'default'}" for func, *_ in rec.steps)
        # OpOverload's own entry point (its Python __call__ only forwards to it)
        self.steps = [(getattr(func, "_op", func), tmpl, kwargs or None, fills, list_fills, slots, kind,
                       tuple(frees.get(k, ())))
                      for k, (func, tmpl, kwargs, fills, list_fills, slots, kind) in enumerate(rec.steps)]
        self.native = _native(rec.steps, frees, self.n_slots, self.out_slots)

    def __len__(self) -> int:
        return len(self.steps)

    def run(self, x: torch.Tensor):
        if self.native is not None:
            outs = self.native.run(x)
            return outs[0] if self.out_kind is None else self.out_kind(outs)
        return self.run_python(x)

    def run_timed(self, x: torch.Tensor):
        """run(x), and the wall time in seconds of each step (its op's dispatch and kernels), in the
        order of `names`."""
        if self.native is not None:
            outs, times = self.native.run_timed(x)
            return (outs[0] if self.out_kind is None else self.out_kind(outs)), times
        times = []
        return self.run_python(x, times), times

    def describe(self, x: torch.Tensor) -> list[tuple[tuple, tuple]]:
        """Each step's (arguments, outputs) on a run of x, in the order of `names`: a tensor as its
        torch.Size, a list of tensors as a list of sizes, any other argument as it is (what the
        profile of a step needs: the convolution's input, weight and output sizes)."""
        def size(v):
            if isinstance(v, torch.Tensor):
                return v.shape
            if isinstance(v, (list, tuple)) and any(isinstance(t, torch.Tensor) for t in v):
                return [size(t) for t in v]
            return v

        steps = []
        self.run_python(x, trace=lambda args, outs: steps.append((tuple(size(a) for a in args),
                                                                   tuple(size(o) for o in outs))))
        return steps

    def run_python(self, x: torch.Tensor, times: list | None = None, trace=None):
        vals = [None] * self.n_slots
        vals[0] = x
        for func, tmpl, kwargs, fills, list_fills, slots, kind, frees in self.steps:
            start = time.perf_counter() if times is not None else 0.0
            a = list(tmpl)
            for i, s in fills:
                a[i] = vals[s]
            for i, items, sub, typ in list_fills:
                items = list(items)
                for j, s in sub:
                    items[j] = vals[s]
                a[i] = typ(items)
            out = func(*a, **kwargs) if kwargs else func(*a)
            if kind == "tensor":
                vals[slots[0]] = out
            else:
                for s, t in zip(slots, out):
                    vals[s] = t
            if trace is not None:
                trace(a, [out] if kind == "tensor" else out)
            for s in frees:
                vals[s] = None
            if times is not None:
                times.append(time.perf_counter() - start)
        outs = [vals[s] for s in self.out_slots]
        return outs[0] if self.out_kind is None else self.out_kind(outs)


_native_warned = False


def _native(steps, frees, n_slots: int, out_slots):
    """The program as the extension's Replay (the ops called from C++, no Python between them), or
    None, said once, where the extension is not there or cannot take an op."""
    global _native_warned
    from inception_fast import _ext

    try:
        if not _ext.loaded():
            raise RuntimeError(f"the C++ extension did not load ({_ext.LOAD_ERROR})")
        native = _ext._C.Replay(n_slots, list(out_slots))
        for k, (func, tmpl, kwargs, fills, list_fills, slots, _) in enumerate(steps):
            schema = func._schema
            args, list_slots = list(tmpl), []
            for i, items, sub, _ in list_fills:
                args[i] = list(items)
                list_slots += [(i, j, s) for j, s in sub]
            native.add_step(schema.name, schema.overload_name, tuple(args), kwargs, list(fills), list_slots,
                            list(slots), list(frees.get(k, ())))
        return native
    except Exception as e:  # an op the dispatcher does not know by name, an argument it cannot take
        if not _native_warned and _ext.loaded():  # (a missing _C was reported at import)
            _native_warned = True
            warnings.warn(f"inception_fast.optimize: recorded forwards replay from Python, slower at small batches "
                          f"({type(e).__name__}: {e})", stacklevel=4)
        return None


def signature(x: torch.Tensor, extra=None) -> tuple:
    """What a recording (or a CUDA graph) of a forward on x is specific to."""
    return (tuple(x.shape), x.stride(), x.dtype, x.device, x.requires_grad, extra)


class Programs:
    """forward(x) through a Program recorded on the second call with an input signature (the latest
    8 kept). While the model or torch has forward hooks, it runs as it is (the hooks see their calls)."""

    def __init__(self, model: nn.Module, forward, limit: int = 8):
        self.forward = forward
        self.limit = limit
        self.programs: OrderedDict = OrderedDict()
        self.refused: dict = {}
        self.seen: set = set()
        self.lock = threading.Lock()
        # every module's forward hook and pre-hook dicts (registering a hook adds to them): whether
        # any holds one is a scan over these objects only, 14 us right after a googlenet forward has
        # pushed them out of the caches, against 117 us for the modules' attribute lookups
        self._hook_dicts = [d for m in model.modules() for d in (_HOOKS(m), _PRE_HOOKS(m))]

    def hooked(self) -> bool:
        """Whether torch or any module of the model has forward hooks (a replay would skip them)."""
        m = nn.modules.module
        return bool(m._global_forward_hooks or m._global_forward_pre_hooks) or any(self._hook_dicts)

    def get(self, x: torch.Tensor, extra=None) -> "Program | None":
        """The program recorded for x's signature, if there is one."""
        with self.lock:
            return self.programs.get(signature(x, extra))

    def __call__(self, x: torch.Tensor, extra=None):
        if self.hooked():
            return self.forward(x)
        key = signature(x, extra)
        with self.lock:
            prog = self.programs.get(key)
            if prog is not None:
                self.programs.move_to_end(key)
        if prog is not None:
            return prog.run(x)
        if key in self.refused:
            return self.forward(x)
        if key not in self.seen:
            # the first call runs as it is: what the model builds on first use (prepacked weights)
            # is then there, and a recording holds it as a constant instead of redoing it
            if len(self.seen) >= 64 * self.limit:  # a stream of ever-new shapes: forget the oldest
                self.seen.clear()
            self.seen.add(key)
            return self.forward(x)
        with self.lock:
            rec = _Recorder(x)
            try:
                with rec:
                    out = self.forward(x)
                prog = Program(rec, out)
            except RecordingRefused as e:
                if len(self.refused) >= 64 * self.limit:
                    self.refused.clear()
                self.refused[key] = str(e)
                warnings.warn(f"inception_fast.optimize: this model's forward cannot be replayed ({e}); it runs "
                              "through its modules on every call", stacklevel=3)
                return self.forward(x)
            self.programs[key] = prog
            while len(self.programs) > self.limit:
                self.programs.popitem(last=False)
        return out
