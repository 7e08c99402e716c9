// Autograd of max_pool in C++, for the CPU kernels: saves x (not an index tensor; the backward
// recomputes each window's argmax from it).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <vector>

namespace inception_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor forward_op(const at::Tensor& x, at::IntArrayRef k, at::IntArrayRef s, at::IntArrayRef p, bool ceil_mode) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("inception_fast::max_pool", "")
                       .typed<at::Tensor(const at::Tensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, bool)>();
  return op.call(x, k, s, p, ceil_mode);
}

at::Tensor backward_op(const at::Tensor& g, const at::Tensor& x, at::IntArrayRef k, at::IntArrayRef s,
                       at::IntArrayRef p, bool ceil_mode) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("inception_fast::max_pool_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                                         at::IntArrayRef, bool)>();
  return op.call(g, x, k, s, p, ceil_mode);
}

class MaxPool : public torch::autograd::Function<MaxPool> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, at::IntArrayRef k, at::IntArrayRef s,
                            at::IntArrayRef p, bool ceil_mode) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["k"] = k.vec();
    ctx->saved_data["s"] = s.vec();
    ctx->saved_data["p"] = p.vec();
    ctx->saved_data["ceil_mode"] = ceil_mode;
    ctx->save_for_backward({x});
    return forward_op(x, k, s, p, ceil_mode);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // Unpack the saved tensors before the guard (a checkpoint recomputation must record autograd).
    auto saved = ctx->get_saved_variables();
    at::AutoDispatchBelowADInplaceOrView guard;
    const at::Tensor& g = grads[0];
    if (!g.defined() || !ctx->needs_input_grad(0)) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    const std::vector<int64_t> k = ctx->saved_data["k"].toIntVector(), s = ctx->saved_data["s"].toIntVector(),
                               p = ctx->saved_data["p"].toIntVector();
    at::Tensor gx = backward_op(g, saved[0], k, s, p, ctx->saved_data["ceil_mode"].toBool());
    return {gx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor max_pool_autograd(const at::Tensor& x, at::IntArrayRef k, at::IntArrayRef s, at::IntArrayRef p,
                             bool ceil_mode) {
  return MaxPool::apply(x, k, s, p, ceil_mode);
}

}  // namespace

TORCH_LIBRARY_IMPL(inception_fast, Autograd, m) { m.impl("max_pool", &max_pool_autograd); }

}  // namespace inception_fast
