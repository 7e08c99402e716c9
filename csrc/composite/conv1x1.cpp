// conv1x1 and conv1x1_backward: a 1x1 convolution (stride 1, no padding, one group) as the GEMM it
// is, on any device ATen has a GEMM for (oneDNN or MKL on the CPU, see runtime/gemm.cpp; cuBLAS on
// CUDA): registered for CompositeExplicitAutograd, so CPU, CUDA and Meta (shape inference) share
// this one definition.
//
// Why not at::convolution: on the small maps of an Inception block (3x3 or 1x1 at the seeds'
// 75x75 input, 8x8 at 299) oneDNN's 1x1 convolution and its backward run at 10-60% of what the
// same GEMM reaches (measured on a 2-core Zen 4: a 384->1088 up-projection on [8, 384, 3, 3],
// forward + backward, 2.9 ms as a convolution, 1.2 ms as three GEMMs).
//
// Layout: a channels_last x (or any x whose map is 1x1) is already the [N*H*W, C] row matrix, so
// forward and backward are each one GEMM over views, with no copy; the output is channels_last. An
// NCHW x takes one batched GEMM per direction ([O, C] x [C, H*W] per image) and gives NCHW.
#include <torch/library.h>

#include <ATen/ATen.h>

#include "runtime/gemm.h"

namespace inception_fast {
namespace {

// Whether x's memory is the row matrix [N*H*W, C] (channels_last, or a 1x1 map in either layout).
bool rows_layout(const at::Tensor& x) {
  return x.is_contiguous(at::MemoryFormat::ChannelsLast) || (x.size(2) * x.size(3) == 1 && x.is_contiguous());
}

at::Tensor as_rows(const at::Tensor& t) {  // [N, C, H, W] -> [N*H*W, C]; a view when rows_layout(t)
  return t.permute({0, 2, 3, 1}).reshape({-1, t.size(1)});
}

at::Tensor from_rows(const at::Tensor& m, int64_t n, int64_t h, int64_t w) {  // [N*H*W, C] -> channels_last
  return m.view({n, h, w, m.size(1)}).permute({0, 3, 1, 2});
}

void check(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 4, "conv1x1: x must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == 1 && weight.size(3) == 1 && weight.size(1) == x.size(1),
              "conv1x1: weight must be [O, ", x.size(1), ", 1, 1] for x of shape ", x.sizes(), ", got ",
              weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "conv1x1: weight is ", weight.scalar_type(), " but x is ",
              x.scalar_type());
  TORCH_CHECK(weight.device() == x.device(), "conv1x1: weight is on ", weight.device(), " but x is on ", x.device());
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "conv1x1: bias must be [", weight.size(0),
                "], got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == x.scalar_type() && bias->device() == x.device(),
                "conv1x1: bias must have x's dtype and device");
  }
}

at::Tensor conv1x1(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check(x, weight, bias);
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3), o = weight.size(0);
  const at::Tensor wm = weight.reshape({o, c});
  if (rows_layout(x)) {
    const at::Tensor xm = as_rows(x);
    at::Tensor y = cpu::mm(xm, wm.t(), bias);
    return from_rows(y, n, h, w);
  }
  at::Tensor y = at::matmul(wm, x.reshape({n, c, h * w}));  // [N, O, H*W]
  if (bias.has_value()) y.add_(bias->view({1, o, 1}));
  return y.view({n, o, h, w});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv1x1_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                                                const at::Tensor& weight,
                                                                std::array<bool, 3> output_mask) {
  check(x, weight, std::nullopt);
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3), o = weight.size(0);
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == n && grad_out.size(1) == o && grad_out.size(2) == h &&
                  grad_out.size(3) == w,
              "conv1x1_backward: grad_out must be [", n, ", ", o, ", ", h, ", ", w, "], got ", grad_out.sizes());
  const at::Tensor wm = weight.reshape({o, c});
  at::Tensor grad_x, grad_w, grad_b;
  if (rows_layout(x)) {
    const at::Tensor gm = as_rows(grad_out);  // a copy only when grad_out is not channels_last
    if (output_mask[0]) grad_x = from_rows(cpu::mm(gm, wm), n, h, w);
    if (output_mask[1]) grad_w = cpu::mm(gm.t(), as_rows(x)).view({o, c, 1, 1});
    if (output_mask[2]) grad_b = gm.sum(0);
  } else {
    const at::Tensor g3 = grad_out.reshape({n, o, h * w});
    const at::Tensor x3 = x.reshape({n, c, h * w});
    if (output_mask[0]) grad_x = at::matmul(wm.t(), g3).view({n, c, h, w});
    if (output_mask[1]) grad_w = at::bmm(g3, x3.transpose(1, 2)).sum(0).view({o, c, 1, 1});
    if (output_mask[2]) grad_b = g3.sum(at::IntArrayRef{0, 2});
  }
  return {grad_x, grad_w, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(inception_fast, CompositeExplicitAutograd, m) {
  m.impl("conv1x1", &conv1x1);
  m.impl("conv1x1_backward", &conv1x1_backward);
}

}  // namespace inception_fast
