"""OptimizedModel: the compiled model at run time -- the input's conversion, the memory pool, the
recorded CPU forward replayed (inception_fast._replay), CUDA graphs, and where the time goes."""
from __future__ import annotations

import collections
import contextlib
import statistics

import torch
import torch.nn as nn

from inception_fast import layers, memory, ops
from inception_fast._cache import LatestCache
from inception_fast._replay import Programs
from inception_fast.optimize.blocks import FusedBranches
from inception_fast.optimize.cuda_graphs import CudaGraphs


def settings_key() -> tuple:
    """The package settings that pick kernels at run time: a recorded program is per their values."""
    return ops.get_backend(), layers.fused_enabled(), layers.merged_1x1_enabled()


class OptimizedModel(nn.Module):
    """The compiled model, for inference: takes what the model took (float32, NCHW or channels_last)
    and returns float32; runs in `dtype` and channels_last inside. Attributes not found here are the
    model's (pretrained_cfg, num_classes, ...)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, channels_last: bool, cuda_graph: bool = False,
                 replay: bool = True):
        super().__init__()
        self.model = model
        self.dtype = dtype
        self.channels_last = channels_last
        self.cuda_graph = cuda_graph
        self.replay = replay
        self._make_runners()

    def _make_runners(self) -> None:
        # forward's CUDA graphs and CPU programs (not state: dropped on copy, made again on use)
        self._graphs = CudaGraphs(self._run) if self.cuda_graph else None
        self._programs = Programs(self.model, self._run) if self.replay else None
        # (input shape, dtype, settings) -> the native program that runs the whole CPU forward
        # (Replay.run_model); filled when a forward finds its recording
        self._whole = LatestCache()

    def __getstate__(self):
        state = super().__getstate__()
        state["_graphs"] = None  # CUDA graphs do not copy or pickle: captured again on use
        state["_programs"] = None  # nor do recorded programs (they hold the modules' tensors)
        state["_whole"] = None
        state.pop("_fused_branches", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("replay", True)
        self._make_runners()

    def _run(self, x: torch.Tensor):
        return self.model(x)

    def _switches(self) -> tuple:
        """The per-block kernel switches (FusedBranches.use_branch_conv): a recorded program is per them."""
        fused = self.__dict__.get("_fused_branches")
        if fused is None:
            fused = self.__dict__["_fused_branches"] = [m for m in self.model.modules() if isinstance(m, FusedBranches)]
        return tuple(m.use_branch_conv for m in fused)

    def _extra(self) -> tuple:
        return settings_key(), self._switches()

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError("an optimize()d model is for inference only (BatchNorm is folded into its "
                               "convolutions): train the original model")
        return super().train(False)

    def _input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x in the model's dtype and layout, which images of x hold a NaN)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"the model takes a tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"the model takes a floating-point batch, got {x.dtype}")
        if x.dim() == 4 and x.device.type == "cpu":  # (optimize() admits only the op's dtypes)
            return ops.prepare_input(x, self.dtype, self.channels_last)  # one pass for both
        if x.dim() == 4 and self.channels_last:
            return x.to(dtype=self.dtype, memory_format=torch.channels_last), self._nan_rows(x)
        return x.to(self.dtype), self._nan_rows(x)

    @staticmethod
    def _output(y, nan_rows: torch.Tensor | None):
        """float32, and NaN in the rows whose input held a NaN: oneDNN's ReLU post-op maps NaN to 0
        (max(x, 0)), where eager's ReLU keeps it and the NaN reaches every output of its image."""
        if isinstance(y, torch.Tensor):
            y = y.float()
            if nan_rows is not None and y.dim() >= 1 and y.shape[0] == nan_rows.shape[0]:
                y = torch.where(nan_rows.view(-1, *[1] * (y.dim() - 1)), float("nan"), y)
            return y
        if isinstance(y, tuple):
            items = [OptimizedModel._output(v, nan_rows) for v in y]
            return type(y)(*items) if hasattr(y, "_fields") else type(y)(items)
        return y

    @staticmethod
    def _nan_rows(x: torch.Tensor) -> torch.Tensor | None:
        return x.isnan().flatten(1).any(1) if x.dim() >= 2 else None

    def _scope(self, x):
        """no_grad, and on the CPU the memory pool (inception_fast.memory): a forward's activations
        reuse the blocks of the previous one instead of page-faulting fresh memory in."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        if isinstance(x, torch.Tensor) and x.device.type == "cpu":
            stack.enter_context(memory.pooled())
        return stack

    def forward(self, x: torch.Tensor):
        if torch.onnx.is_in_onnx_export():
            raise RuntimeError("an optimize()d model does not export to ONNX (its convolutions are kept oneDNN "
                               "primitives and ops of inception_fast): export the model itself, "
                               "torch.onnx.export(model, ...); ONNX Runtime folds its BatchNorms as optimize() does")
        if self._whole and type(x) is torch.Tensor and x.is_cpu:
            # A CPU input of a shape and dtype whose forward was recorded: the input conversion, the
            # recorded ops and the float32 output in one C++ call (Replay.run_model), unless hooks
            # were registered since (the model then runs as it is, hooks called).
            native = self._whole.get((x.shape, x.dtype, self._extra()))
            if native is not None and not self._programs.hooked():
                try:
                    return native.run_model(x, self.dtype, self.channels_last)
                except RuntimeError:  # e.g. the memory pool cannot be installed: the usual path says why
                    self._whole.clear()
        with self._scope(x):
            xin, nan_rows = self._input(x)
            # (A graph is captured after two eager warm-up runs, which check the input as forward does.)
            if self._graphs is not None and xin.is_cuda:
                y = self._graphs(xin)
            elif self._programs is not None and xin.device.type == "cpu":
                extra = self._extra()
                y = self._programs(xin, extra)
                self._keep_whole(x, xin, extra)
            else:
                y = self.model(xin)
            return self._output(y, nan_rows)

    def _keep_whole(self, x: torch.Tensor, xin: torch.Tensor, extra) -> None:
        """Keep the native program of x's recorded forward for forward's one-call path, where it can
        run it: one output, the conversion on the prepare_input op, the memory pool there."""
        prog = self._programs.get(xin, extra)
        if prog is None or prog.native is None or prog.out_kind is not None or not memory.available() \
                or ops.resolve(x, "prepare_input") == "reference":
            return
        self._whole.put((x.shape, x.dtype, extra), prog.native)

    def op_times(self, x: torch.Tensor, runs: int = 20) -> list[tuple[str, int, float]]:
        """Where a CPU forward on x spends its time: (op, calls a forward, median seconds a forward),
        the slowest first, from `runs` timed replays of the recorded forward (each op's dispatch and
        kernels; the input conversion before them and the float32 output after them excluded).
        Raises where forward does not replay (a GPU model, replay=False, forward hooks)."""
        names, per_step, _ = self._time_steps(x, runs, "op_times", describe=False)
        calls, seconds = collections.Counter(names), collections.defaultdict(float)
        for name, t in zip(names, per_step):
            seconds[name] += t
        return sorted(((name, calls[name], seconds[name]) for name in calls), key=lambda r: -r[2])

    def step_times(self, x: torch.Tensor, runs: int = 20) -> list[tuple[str, tuple, tuple, float]]:
        """op_times() step by step, in the order the forward runs them: (op, its arguments, its
        outputs, median seconds), a tensor given as its torch.Size (`Program.describe`), e.g. an
        `onednn_conv` step's input, packed weight, weight size, bias, stride, padding, post-op."""
        names, per_step, steps = self._time_steps(x, runs, "step_times", describe=True)
        return [(name, args, outs, t) for name, (args, outs), t in zip(names, steps, per_step)]

    def _time_steps(self, x: torch.Tensor, runs: int, caller: str, describe: bool):
        """(the recorded forward's op names, median seconds of each step over `runs` timed replays,
        each step's (arguments, outputs) sizes where `describe`, else None)."""
        if self._programs is None or not isinstance(x, torch.Tensor) or x.device.type != "cpu":
            raise ValueError(f"{caller}() times the replay of a recorded CPU forward: it needs a CPU input and a "
                             "model optimize()d with replay=True")
        if runs < 1:
            raise ValueError(f"{caller}(): runs must be at least 1, got {runs}")
        extra = self._extra()
        with self._scope(x):
            xin, _ = self._input(x)
            for _ in range(2):  # the first call runs the modules (building what they build), the second records
                if self._programs.get(xin, extra) is not None:
                    break
                self._programs(xin, extra)
            prog = self._programs.get(xin, extra)
            if prog is None:
                raise RuntimeError(f"{caller}(): this forward is not replayed (forward hooks, or a recording "
                                   "refused: see the warning)")
            steps = prog.describe(xin) if describe else None
            per_run = [prog.run_timed(xin)[1] for _ in range(runs)]
        per_step = [statistics.median(t[k] for t in per_run) for k in range(len(prog.names))]
        return prog.names, per_step, steps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        with self._scope(x):
            xin, nan_rows = self._input(x)
            return self._output(self.model.forward_features(xin), nan_rows)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        with self._scope(x):
            return self._output(self.model.forward_head(x.to(self.dtype), pre_logits=pre_logits), self._nan_rows(x))
