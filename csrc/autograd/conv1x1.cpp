// Autograd and autocast of conv1x1, in C++ (see autograd/bn_relu.cpp for why not in Python): the
// forward saves x and the weight (only what the needed gradients read); the backward is one
// conv1x1_backward, three GEMMs at most. Under autocast conv1x1 runs in the autocast dtype, as
// torch's own convolutions do, so it drops into an autocast region wherever F.conv2d would.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace inception_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<at::Tensor>;

at::Tensor forward_op(const at::Tensor& x, const at::Tensor& w, const OptTensor& b) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("inception_fast::conv1x1", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&)>();
  return op.call(x, w, b);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_op(const at::Tensor& g, const at::Tensor& x,
                                                           const at::Tensor& w, std::array<bool, 3> mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("inception_fast::conv1x1_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, std::array<bool, 3>)>();
  return op.call(g, x, w, mask);
}

class Conv1x1 : public torch::autograd::Function<Conv1x1> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const OptTensor& bias) {
    at::AutoDispatchBelowADInplaceOrView guard;
    // grad_weight reads x; grad_x only x's shape and layout: keep x only when it will be read,
    // else just its shape and layout.
    const bool keep_x = weight.requires_grad();
    ctx->save_for_backward({keep_x ? x : at::Tensor(), weight});
    ctx->saved_data["has_bias"] = bias.has_value();
    if (!keep_x) {
      ctx->saved_data["x_shape"] = x.sizes().vec();
      ctx->saved_data["x_channels_last"] = x.is_contiguous(at::MemoryFormat::ChannelsLast);
    }
    return forward_op(x, weight, bias);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // Unpack the saved tensors before the guard: unpacking may run a torch.utils.checkpoint
    // recomputation, whose ops must record autograd (they would not under the guard).
    auto saved = ctx->get_saved_variables();
    at::AutoDispatchBelowADInplaceOrView guard;
    const at::Tensor& g = grads[0];
    if (!g.defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    at::Tensor x = saved[0];
    const at::Tensor& weight = saved[1];
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)};
    if (!x.defined()) {
      // Not saved (no weight gradient wanted): a stand-in of x's shape and layout, never read.
      const auto shape = ctx->saved_data["x_shape"].toIntVector();
      x = ctx->saved_data["x_channels_last"].toBool()
              ? at::empty(shape, g.options().memory_format(at::MemoryFormat::ChannelsLast))
              : at::empty(shape, g.options());
    }
    auto [grad_x, grad_w, grad_b] = backward_op(g, x, weight, mask);
    return {grad_x, grad_w, grad_b};
  }
};

at::Tensor conv1x1_autograd(const at::Tensor& x, const at::Tensor& weight, const OptTensor& bias) {
  return Conv1x1::apply(x, weight, bias);
}

template <c10::DeviceType device, c10::DispatchKey key>
at::Tensor conv1x1_autocast(const at::Tensor& x, const at::Tensor& weight, const OptTensor& bias) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  const auto dtype = at::autocast::get_autocast_dtype(device);
  return forward_op(at::autocast::cached_cast(dtype, x, device), at::autocast::cached_cast(dtype, weight, device),
                    bias.has_value() ? OptTensor(at::autocast::cached_cast(dtype, *bias, device)) : std::nullopt);
}

}  // namespace

TORCH_LIBRARY_IMPL(inception_fast, Autograd, m) { m.impl("conv1x1", &conv1x1_autograd); }
TORCH_LIBRARY_IMPL(inception_fast, AutocastCPU, m) {
  m.impl("conv1x1", &conv1x1_autocast<c10::DeviceType::CPU, c10::DispatchKey::AutocastCPU>);
}
TORCH_LIBRARY_IMPL(inception_fast, AutocastCUDA, m) {
  m.impl("conv1x1", &conv1x1_autocast<c10::DeviceType::CUDA, c10::DispatchKey::AutocastCUDA>);
}

}  // namespace inception_fast
