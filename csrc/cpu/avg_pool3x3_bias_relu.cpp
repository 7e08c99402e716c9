// avg_pool3x3_bias_relu on the CPU: the tail of an Inception block's average-pool branch, which
// optimize() projects first (the 1x1 convolution and the pool are both linear) and pools after:
// y = relu(avg_pool2d(r, 3, stride 1, padding 1, count_include_pad) + bias), in one pass.
//
// Why: as ATen ops that is avg_pool2d, add_ and relu_, three passes over the projected tensor and
// three parallel regions; here each output row reads its three input rows once (their column sums
// kept in a float row buffer), and adds the bias and applies the ReLU (NaN kept, as torch.relu) on
// the way out. The sum is in float32 and rounded once to the storage type, where the three ATen ops
// round after each.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu/common.h"

namespace inception_fast {
namespace cpu {
namespace {

// Output row h of one image: r and y channels_last rows of W x C, vs a W x C float buffer, zero C
// floats of zeros, b the bias as float (or zeros).
template <typename T>
IF_CPU_CLONES void pool_row(const T* r, int64_t H, int64_t W, int64_t C, int64_t h, const float* b, bool include_pad,
                            float* vs, const float* zero, T* y) {
  const int64_t h0 = std::max<int64_t>(h - 1, 0), h1 = std::min<int64_t>(h + 1, H - 1);
  const int64_t wc = W * C;
  const T* p = r + h0 * wc;
  for (int64_t i = 0; i < wc; ++i) vs[i] = to_acc(p[i]);
  for (int64_t hh = h0 + 1; hh <= h1; ++hh) {
    p = r + hh * wc;
    for (int64_t i = 0; i < wc; ++i) vs[i] += to_acc(p[i]);
  }
  const int64_t rows = h1 - h0 + 1;
  for (int64_t w = 0; w < W; ++w) {
    const float* left = w > 0 ? vs + (w - 1) * C : zero;
    const float* mid = vs + w * C;
    const float* right = w + 1 < W ? vs + (w + 1) * C : zero;
    const int64_t cols = (w > 0) + 1 + (w + 1 < W);
    const float inv = 1.f / static_cast<float>(include_pad ? 9 : rows * cols);
    T* out = y + w * C;
    for (int64_t c = 0; c < C; ++c) {
      const float s = (left[c] + mid[c] + right[c]) * inv + b[c];
      out[c] = from_acc<T>(s < 0.f ? 0.f : s);  // NaN < 0 is false: NaN kept
    }
  }
}

at::Tensor avg_pool3x3_bias_relu_cpu(const at::Tensor& r_in, const c10::optional<at::Tensor>& bias,
                                     bool count_include_pad) {
  constexpr const char* op = "avg_pool3x3_bias_relu";
  TORCH_CHECK(r_in.dim() == 4, op, ": r must be a 4-D (N, C, H, W) tensor, got shape ", r_in.sizes());
  const auto dt = r_in.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf, op,
              ": r must be float32, bfloat16 or float16, got ", dt);
  const int64_t N = r_in.size(0), C = r_in.size(1), H = r_in.size(2), W = r_in.size(3);
  at::Tensor b = at::zeros({C}, r_in.options().dtype(at::kFloat));
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->device() == r_in.device() && bias->dim() == 1 && bias->size(0) == C && bias->is_floating_point(),
                op, ": bias must be a floating-point vector of ", C, " values on ", r_in.device(), ", got ",
                bias->sizes(), " ", bias->scalar_type(), " on ", bias->device());
    b = bias->to(at::kFloat).contiguous();
  }
  const auto cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor r = r_in.contiguous(cl);
  at::Tensor y = at::empty_like(r, r.options().memory_format(cl));
  if (y.numel() == 0) return y;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(W * C, 1));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, op, [&] {
    const scalar_t* rp = r.const_data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    const float* bp = b.const_data_ptr<float>();
    at::parallel_for(0, N * H, grain, [&](int64_t begin, int64_t end) {
      std::vector<float> vs(W * C), zero(C, 0.f);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t n = i / H, h = i % H;
        pool_row<scalar_t>(rp + n * H * W * C, H, W, C, h, bp, count_include_pad, vs.data(), zero.data(),
                           yp + (n * H + h) * W * C);
      }
    });
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(inception_fast, CPU, m) { m.impl("avg_pool3x3_bias_relu", &avg_pool3x3_bias_relu_cpu); }

}  // namespace cpu
}  // namespace inception_fast
