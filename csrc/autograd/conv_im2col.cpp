// Autograd and autocast of conv_im2col, in C++ as conv1x1's (autograd/conv1x1.cpp): the forward
// saves x (only when the weight gradient will read it, else its shape) and the weight; the
// backward is one conv_im2col_backward. Under autocast it runs in the autocast dtype, as
// F.conv2d does.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace inception_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<at::Tensor>;

at::Tensor forward_op(const at::Tensor& x, const at::Tensor& w, const OptTensor& b, at::IntArrayRef stride,
                      at::IntArrayRef padding) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("inception_fast::conv_im2col", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, at::IntArrayRef,
                                         at::IntArrayRef)>();
  return op.call(x, w, b, stride, padding);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_op(const at::Tensor& g, const at::Tensor& x,
                                                           const at::Tensor& w, at::IntArrayRef stride,
                                                           at::IntArrayRef padding, std::array<bool, 3> mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("inception_fast::conv_im2col_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, at::IntArrayRef,
                           at::IntArrayRef, std::array<bool, 3>)>();
  return op.call(g, x, w, stride, padding, mask);
}

class ConvIm2col : public torch::autograd::Function<ConvIm2col> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const OptTensor& bias, at::IntArrayRef stride, at::IntArrayRef padding) {
    at::AutoDispatchBelowADInplaceOrView guard;
    const bool keep_x = weight.requires_grad();  // only grad_weight reads x's values
    ctx->save_for_backward({keep_x ? x : at::Tensor(), weight});
    ctx->saved_data["has_bias"] = bias.has_value();
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    if (!keep_x) ctx->saved_data["x_shape"] = x.sizes().vec();
    return forward_op(x, weight, bias, stride, padding);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // Unpack the saved tensors before the guard: unpacking may run a torch.utils.checkpoint
    // recomputation, whose ops must record autograd (they would not under the guard).
    auto saved = ctx->get_saved_variables();
    at::AutoDispatchBelowADInplaceOrView guard;
    const at::Tensor& g = grads[0];
    const variable_list none = {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    if (!g.defined()) return none;
    at::Tensor x = saved[0];
    const at::Tensor& weight = saved[1];
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)};
    if (!x.defined()) {  // a stand-in of x's shape, never read (no weight gradient wanted)
      x = at::empty(ctx->saved_data["x_shape"].toIntVector(), g.options().memory_format(at::MemoryFormat::ChannelsLast));
    }
    auto [grad_x, grad_w, grad_b] = backward_op(g, x, weight, ctx->saved_data["stride"].toIntVector(),
                                                ctx->saved_data["padding"].toIntVector(), mask);
    return {grad_x, grad_w, grad_b, at::Tensor(), at::Tensor()};
  }
};

at::Tensor conv_im2col_autograd(const at::Tensor& x, const at::Tensor& weight, const OptTensor& bias,
                                at::IntArrayRef stride, at::IntArrayRef padding) {
  return ConvIm2col::apply(x, weight, bias, stride, padding);
}

at::Tensor conv_im2col_autocast(const at::Tensor& x, const at::Tensor& weight, const OptTensor& bias,
                                at::IntArrayRef stride, at::IntArrayRef padding) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  const auto dtype = at::autocast::get_autocast_dtype(c10::DeviceType::CPU);
  const auto cast = [&](const at::Tensor& t) { return at::autocast::cached_cast(dtype, t, c10::DeviceType::CPU); };
  return forward_op(cast(x), cast(weight), bias.has_value() ? OptTensor(cast(*bias)) : std::nullopt, stride, padding);
}

}  // namespace

TORCH_LIBRARY_IMPL(inception_fast, Autograd, m) { m.impl("conv_im2col", &conv_im2col_autograd); }
TORCH_LIBRARY_IMPL(inception_fast, AutocastCPU, m) { m.impl("conv_im2col", &conv_im2col_autocast); }

}  // namespace inception_fast
