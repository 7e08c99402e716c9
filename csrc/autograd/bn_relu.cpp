// Autograd of bn_relu_apply in C++, for the C++ kernels (CPU and CUDA): the formula is the one
// inception_fast/ops/bn_relu.py documents, run without the Python autograd machinery, which costs
// more than the kernels themselves on the small tensors of an Inception block at 75x75 (about
// 60 us per call against 5-10 us of kernel). The Triton namespace keeps its Python formula.
//
// Saved for the backward: x and the per-channel vectors only; the ReLU mask is recomputed from x
// by the backward kernels, exactly as the forward computed the pre-activation.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "autograd/bn_relu_apply_call.h"

namespace inception_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<at::Tensor>;

std::tuple<at::Tensor, at::Tensor> reduce_op(const at::Tensor& g, const at::Tensor& x, const OptTensor& w,
                                             const OptTensor& b, const at::Tensor& mean, const at::Tensor& invstd) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("inception_fast::bn_relu_backward_reduce", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 const OptTensor&, const OptTensor&,
                                                                 const at::Tensor&, const at::Tensor&)>();
  return op.call(g, x, w, b, mean, invstd);
}

at::Tensor elemt_op(const at::Tensor& g, const at::Tensor& x, const OptTensor& w, const OptTensor& b,
                    const at::Tensor& mean, const at::Tensor& invstd, const OptTensor& sum_dz,
                    const OptTensor& sum_dz_xmu, int64_t count) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("inception_fast::bn_relu_backward_elemt", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&,
                                         const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&,
                                         int64_t)>();
  return op.call(g, x, w, b, mean, invstd, sum_dz, sum_dz_xmu, count);
}

OptTensor opt(const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// The kernels take a second operand with exactly x's strides.
at::Tensor like(const at::Tensor& t, const at::Tensor& ref) {
  if (t.strides() == ref.strides()) return t;
  return at::empty_like(ref).copy_(t);
}

class BNReLUApply : public torch::autograd::Function<BNReLUApply> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const OptTensor& weight,
                            const OptTensor& bias, const at::Tensor& mean, const at::Tensor& invstd, bool training) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x, weight.value_or(at::Tensor()), bias.value_or(at::Tensor()), mean, invstd});
    ctx->saved_data["training"] = training;
    return bn_relu_apply_call(x, weight, bias, mean, invstd, training);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // Unpack the saved tensors before the guard: unpacking may run a torch.utils.checkpoint
    // recomputation, whose ops must record autograd (they would not under the guard).
    auto saved = ctx->get_saved_variables();
    at::AutoDispatchBelowADInplaceOrView guard;
    const at::Tensor& x = saved[0];
    OptTensor w = opt(saved[1]), b = opt(saved[2]);
    const at::Tensor& mean = saved[3];
    const at::Tensor& invstd = saved[4];
    const bool training = ctx->saved_data["training"].toBool();
    const bool need_x = ctx->needs_input_grad(0), need_w = ctx->needs_input_grad(1), need_b = ctx->needs_input_grad(2);
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    at::Tensor g = like(grads[0], x);
    at::Tensor sum_dz, sum_dz_xmu, grad_x, grad_w, grad_b;
    if (need_w || need_b || (need_x && training)) std::tie(sum_dz, sum_dz_xmu) = reduce_op(g, x, w, b, mean, invstd);
    if (need_w) grad_w = sum_dz_xmu.mul(invstd);
    if (need_b) grad_b = sum_dz;
    if (need_x) {
      // Symbolic under torch.compile's dynamic shapes: the schema's `int count` specialises it.
      const c10::SymInt channels = x.sym_size(1);
      const int64_t count = channels == 0 ? 0 : (x.sym_numel() / channels).guard_int(__FILE__, __LINE__);
      grad_x = training ? elemt_op(g, x, w, b, mean, invstd, sum_dz, sum_dz_xmu, count)
                        : elemt_op(g, x, w, b, mean, invstd, std::nullopt, std::nullopt, 0);
    }
    // mean/invstd: in training they are functions of x, whose gradient grad_x already holds;
    // in eval they are buffers.
    return {grad_x, grad_w, grad_b, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor bn_relu_apply_autograd(const at::Tensor& x, const OptTensor& weight, const OptTensor& bias,
                                  const at::Tensor& mean, const at::Tensor& invstd, bool training) {
  return BNReLUApply::apply(x, weight, bias, mean, invstd, training);
}

}  // namespace

TORCH_LIBRARY_IMPL(inception_fast, Autograd, m) { m.impl("bn_relu_apply", &bn_relu_apply_autograd); }

}  // namespace inception_fast
