// Autograd of scaled_residual_add in C++, for the C++ kernels (CPU and CUDA): as
// inception_fast/ops/scaled_residual_add.py documents it, without the Python autograd machinery
// (see autograd/bn_relu.cpp for why). Saves only the output; its sign is the ReLU mask.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace inception_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor forward_op(const at::Tensor& x, const at::Tensor& r, double scale, bool relu) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("inception_fast::scaled_residual_add", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double, bool)>();
  return op.call(x, r, scale, relu);
}

std::tuple<at::Tensor, at::Tensor> backward_op(const at::Tensor& g, const at::Tensor& out, double scale, bool relu) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("inception_fast::scaled_residual_add_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double, bool)>();
  return op.call(g, out, scale, relu);
}

class ScaledResidualAdd : public torch::autograd::Function<ScaledResidualAdd> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& residual, double scale,
                            bool relu) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor out = forward_op(x, residual, scale, relu);
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["relu"] = relu;
    if (relu) ctx->save_for_backward({out});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // Unpack the saved tensors before the guard: unpacking may run a torch.utils.checkpoint
    // recomputation, whose ops must record autograd (they would not under the guard).
    auto saved = ctx->get_saved_variables();
    at::AutoDispatchBelowADInplaceOrView guard;
    const double scale = ctx->saved_data["scale"].toDouble();
    const bool relu = ctx->saved_data["relu"].toBool();
    const at::Tensor& g = grads[0];
    if (!g.defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    if (!relu) return {g, g.mul(scale), at::Tensor(), at::Tensor()};
    const at::Tensor out = saved[0];
    at::Tensor gl = g.strides() == out.strides() ? g : at::empty_like(out).copy_(g);
    auto [grad_x, grad_r] = backward_op(gl, out, scale, true);
    return {ctx->needs_input_grad(0) ? grad_x : at::Tensor(), ctx->needs_input_grad(1) ? grad_r : at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

at::Tensor scaled_residual_add_autograd(const at::Tensor& x, const at::Tensor& residual, double scale, bool relu) {
  return ScaledResidualAdd::apply(x, residual, scale, relu);
}

}  // namespace

TORCH_LIBRARY_IMPL(inception_fast, Autograd, m) { m.impl("scaled_residual_add", &scaled_residual_add_autograd); }

}  // namespace inception_fast
