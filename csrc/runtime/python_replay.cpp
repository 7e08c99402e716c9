// The C++ side of inception_fast._replay.Program: a recorded forward replayed as boxed dispatcher
// calls, with no Python between the ops. On a 2-core CPU the Python loop cost 5-10 us per op
// (argument parsing, list building, result wrapping): 0.9 ms of an 11 ms googlenet bf16 forward at
// batch 1. Each op still goes through the dispatcher (autograd, profiler, Python modes), as a
// Python call would.
//
// A step is an operator, its whole argument stack converted once (constants: weights, prepacked
// weights, sizes, flags), the stack positions (and Tensor[] items) that take an earlier result,
// the slots its results go to, and the slots to drop after it.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/jit/python/pybind_utils.h>
#include <torch/extension.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "runtime/memory_pool.h"

namespace inception_fast {
namespace {

namespace py = pybind11;

// A Python number where the schema takes a Tensor (x * 2 reaches a dispatch mode as aten::mul.Tensor
// with a 2) becomes a wrapped-number tensor, as Python's argument parser makes it: one that does not
// promote the other operand's dtype.
c10::IValue to_ivalue(const py::handle& obj, const c10::Argument& arg) {
  const bool number = PyBool_Check(obj.ptr()) || PyLong_Check(obj.ptr()) || PyFloat_Check(obj.ptr()) ||
                      PyComplex_Check(obj.ptr());
  if (number && arg.type()->kind() == c10::TypeKind::TensorType) {
    at::Tensor t = c10::scalar_to_tensor(torch::jit::toIValue(obj, c10::NumberType::get()).toScalar());
    t.unsafeGetTensorImpl()->set_wrapped_number(true);
    return t;
  }
  return torch::jit::toIValue(obj, arg.type());
}

struct ListFill {
  int pos;                           // stack position of the Tensor[] argument
  std::vector<at::Tensor> items;     // constants, undefined where a slot goes
  std::vector<std::pair<int, int>> slots;  // (item index, slot)
};

struct Step {
  c10::OperatorHandle op;
  std::vector<c10::IValue> stack;           // the full argument stack; None where a slot goes
  std::vector<std::pair<int, int>> fills;   // (stack position, slot)
  std::vector<ListFill> list_fills;
  std::vector<int> outs;                    // slots of the results, in order (Tensor[] flattened)
  std::vector<int> frees;                   // slots dropped after this step
};

class Replay {
 public:
  Replay(int n_slots, std::vector<int> out_slots) : n_slots_(n_slots), out_slots_(std::move(out_slots)) {
    TORCH_CHECK(n_slots_ >= 1, "Replay: a program has at least its input slot");
    for (int s : out_slots_) check_slot(s);
  }

  // args / kwargs as the recording saw them (None where fills / list_fills put a slot); missing
  // trailing arguments take the schema's defaults.
  void add_step(const std::string& name, const std::string& overload, const py::tuple& args,
                const py::dict& kwargs, const std::vector<std::pair<int, int>>& fills,
                const std::vector<std::tuple<int, int, int>>& list_slots, std::vector<int> outs,
                std::vector<int> frees) {
    auto handle = c10::Dispatcher::singleton().findSchemaOrThrow(name.c_str(), overload.c_str());
    const auto& arguments = handle.schema().arguments();
    TORCH_CHECK(args.size() <= arguments.size(), "Replay: ", name, " got ", args.size(),
                " arguments, its schema has ", arguments.size());
    Step step{handle, {}, fills, {}, std::move(outs), std::move(frees)};
    std::vector<bool> from_slot(arguments.size(), false);
    for (const auto& [pos, slot] : fills) {
      TORCH_CHECK(pos >= 0 && pos < static_cast<int>(arguments.size()), "Replay: fill position out of range");
      check_slot(slot);
      from_slot[pos] = true;
    }
    for (const auto& [pos, item, slot] : list_slots) {
      TORCH_CHECK(pos >= 0 && pos < static_cast<int>(args.size()), "Replay: list position out of range");
      check_slot(slot);
      ListFill* lf = nullptr;
      for (auto& l : step.list_fills) {
        if (l.pos == pos) lf = &l;
      }
      if (lf == nullptr) {
        step.list_fills.push_back({pos, {}, {}});
        lf = &step.list_fills.back();
        for (const auto& o : py::reinterpret_borrow<py::sequence>(args[pos])) {
          lf->items.push_back(o.is_none() ? at::Tensor() : py::cast<at::Tensor>(o));
        }
        from_slot[pos] = true;
      }
      TORCH_CHECK(item >= 0 && item < static_cast<int>(lf->items.size()), "Replay: list item out of range");
      lf->slots.emplace_back(item, slot);
    }
    step.stack.reserve(arguments.size());
    for (size_t i = 0; i < arguments.size(); ++i) {
      const auto& arg = arguments[i];
      if (from_slot[i]) {
        step.stack.emplace_back();
      } else if (i < args.size()) {
        step.stack.push_back(to_ivalue(args[i], arg));
      } else if (kwargs.contains(arg.name().c_str())) {
        step.stack.push_back(to_ivalue(kwargs[arg.name().c_str()], arg));
      } else {
        TORCH_CHECK(arg.default_value().has_value(), "Replay: ", name, " has no value for ", arg.name());
        step.stack.push_back(*arg.default_value());
      }
    }
    for (int s : step.outs) check_slot(s);
    for (int s : step.frees) check_slot(s);
    steps_.push_back(std::move(step));
  }

  // times: when given, each step's wall time in seconds (the op's dispatch and kernels, its results
  // stored), for a breakdown of where a forward's time goes.
  std::vector<at::Tensor> run(const at::Tensor& x, std::vector<double>* times = nullptr) const {
    if (times != nullptr) times->assign(steps_.size(), 0.0);
    std::vector<c10::IValue> vals(n_slots_);
    vals[0] = x;
    std::vector<c10::IValue> stack;
    for (size_t i = 0; i < steps_.size(); ++i) {
      const Step& step = steps_[i];
      const auto start = std::chrono::steady_clock::now();
      stack.assign(step.stack.begin(), step.stack.end());
      for (const auto& [pos, slot] : step.fills) stack[pos] = vals[slot];
      for (const auto& lf : step.list_fills) {
        std::vector<at::Tensor> items = lf.items;
        for (const auto& [item, slot] : lf.slots) items[item] = vals[slot].toTensor();
        stack[lf.pos] = c10::List<at::Tensor>(items);
      }
      step.op.callBoxed(stack);
      size_t k = 0;
      for (auto& r : stack) {
        if (r.isTensor()) {
          TORCH_CHECK(k < step.outs.size(), "Replay: ", step.op.schema().name(), " returned more than recorded");
          vals[step.outs[k++]] = std::move(r);
        } else if (r.isTensorList()) {
          for (const at::Tensor& t : r.toTensorVector()) {
            TORCH_CHECK(k < step.outs.size(), "Replay: ", step.op.schema().name(), " returned more than recorded");
            vals[step.outs[k++]] = t;
          }
        } else {
          TORCH_CHECK(false, "Replay: ", step.op.schema().name(), " returned a ", r.tagKind(), ", not tensors");
        }
      }
      TORCH_CHECK(k == step.outs.size(), "Replay: ", step.op.schema().name(), " returned ", k,
                  " tensors, the recording ", step.outs.size());
      for (int s : step.frees) vals[s] = c10::IValue();
      if (times != nullptr) (*times)[i] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
    std::vector<at::Tensor> out;
    out.reserve(out_slots_.size());
    for (int s : out_slots_) out.push_back(vals[s].toTensor());
    return out;
  }

  // An optimize()d model's whole CPU forward in one call (OptimizedModel.forward's fast path), for
  // a program with one output: in the memory pool and without gradients, x converted by the
  // prepare_input op (dtype, layout, which images hold a NaN), the recorded ops, then the output in
  // float32 with NaN in the rows whose image held one (see OptimizedModel._output). In Python these
  // were a context stack, three calls and a lookup around run(); right after a forward their objects
  // are out of the caches, and that glue took 0.3-0.4 ms of GoogLeNet's 8.4 ms bf16 forward at batch 1
  // (2-core Zen 4), ten times its time in a loop.
  at::Tensor run_model(const at::Tensor& x, at::ScalarType dtype, bool channels_last) const {
    TORCH_CHECK(out_slots_.size() == 1, "Replay.run_model: the program has ", out_slots_.size(),
                " outputs, run_model returns one");
    static const auto prepare =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("inception_fast::prepare_input", "")
            .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, at::ScalarType, bool)>();
    at::NoGradGuard no_grad;
    cpu::pool_enter();
    struct Leave {
      ~Leave() { cpu::pool_exit(); }
    } leave;
    auto [xin, nan_rows] = prepare.call(x, dtype, channels_last);
    at::Tensor y = run(xin)[0].to(at::kFloat);
    if (y.dim() >= 1 && y.size(0) == nan_rows.size(0)) {
      const bool* rows = nan_rows.const_data_ptr<bool>();
      if (std::any_of(rows, rows + nan_rows.numel(), [](bool r) { return r; })) {
        std::vector<int64_t> shape(y.dim(), 1);
        shape[0] = -1;
        y = at::where(nan_rows.view(shape), std::numeric_limits<float>::quiet_NaN(), y);
      }
    }
    return y;
  }

  size_t size() const { return steps_.size(); }

 private:
  void check_slot(int s) const {
    TORCH_CHECK(s >= 0 && s < n_slots_, "Replay: slot ", s, " out of range [0, ", n_slots_, ")");
  }

  int n_slots_;
  std::vector<int> out_slots_;
  std::vector<Step> steps_;
};

}  // namespace

void add_replay(PyObject* module) {
  auto m = py::reinterpret_borrow<py::module_>(module);
  py::class_<Replay>(m, "Replay", "A recorded forward replayed as dispatcher calls (see inception_fast._replay).")
      .def(py::init<int, std::vector<int>>(), py::arg("n_slots"), py::arg("out_slots"))
      .def("add_step", &Replay::add_step, py::arg("name"), py::arg("overload"), py::arg("args"),
           py::arg("kwargs"), py::arg("fills"), py::arg("list_slots"), py::arg("outs"), py::arg("frees"))
      .def("run", [](const Replay& r, const at::Tensor& x) { return r.run(x); }, py::arg("x"),
           py::call_guard<py::gil_scoped_release>())
      .def(
          "run_timed",
          [](const Replay& r, const at::Tensor& x) {
            std::vector<double> times;
            auto out = r.run(x, &times);
            return std::make_pair(out, times);
          },
          py::arg("x"), py::call_guard<py::gil_scoped_release>(),
          "run(x), and each step's wall time in seconds")
      .def("run_model", &Replay::run_model, py::arg("x"), py::arg("dtype"), py::arg("channels_last"),
           py::call_guard<py::gil_scoped_release>(),
           "An optimize()d model's CPU forward: prepare_input, run, the output in float32 with NaN rows")
      .def("__len__", &Replay::size);
}

}  // namespace inception_fast
