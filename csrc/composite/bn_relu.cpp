// bn_relu_train (schema in csrc/ops.cpp): bn_stats_train, then bn_relu_apply with the batch statistics,
// registered for CompositeImplicitAutograd: one definition for every device, whose gradient is
// bn_relu_apply's (csrc/autograd/bn_relu.cpp).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "autograd/bn_relu_apply_call.h"

namespace inception_fast {
namespace {

using OptTensor = std::optional<at::Tensor>;

std::tuple<at::Tensor, at::Tensor> stats_train_op(const at::Tensor& x, const OptTensor& running_mean,
                                                  const OptTensor& running_var, double momentum, double eps) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("inception_fast::bn_stats_train", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const OptTensor&,
                                                                 const OptTensor&, double, double)>();
  return op.call(x, running_mean, running_var, momentum, eps);
}

// The whole training forward in two dispatcher calls, without a round trip to Python between its
// steps: on the small tensors of an Inception block at 75x75 the Python version spent ~40 us per
// layer on dispatch (stats, rsqrt, two lerps, apply), several times the kernels' own time.
at::Tensor bn_relu_train(const at::Tensor& x, const OptTensor& weight, const OptTensor& bias,
                         const OptTensor& running_mean, const OptTensor& running_var, double momentum,
                         double eps) {
  TORCH_CHECK(running_mean.has_value() == running_var.has_value(),
              "bn_relu_train: running_mean and running_var must both be given or both be None");
  auto [mean, invstd] = stats_train_op(x.detach(), running_mean, running_var, momentum, eps);
  return bn_relu_apply_call(x, weight, bias, mean, invstd, true);
}

}  // namespace

TORCH_LIBRARY_IMPL(inception_fast, CompositeImplicitAutograd, m) { m.impl("bn_relu_train", &bn_relu_train); }

}  // namespace inception_fast
