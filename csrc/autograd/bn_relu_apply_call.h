// bn_relu_apply through the dispatcher (below Autograd: the backend's kernel), for the C++ that
// composes it: its autograd formula (csrc/autograd/bn_relu.cpp) and bn_relu_train
// (csrc/composite/bn_relu.cpp).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>

namespace inception_fast {

inline at::Tensor bn_relu_apply_call(const at::Tensor& x, const std::optional<at::Tensor>& w,
                                     const std::optional<at::Tensor>& b, const at::Tensor& mean,
                                     const at::Tensor& invstd, bool training) {
  using OptTensor = std::optional<at::Tensor>;
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("inception_fast::bn_relu_apply", "")
                       .typed<at::Tensor(const at::Tensor&, const OptTensor&, const OptTensor&, const at::Tensor&,
                                         const at::Tensor&, bool)>();
  return op.call(x, w, b, mean, invstd, training);
}

}  // namespace inception_fast
