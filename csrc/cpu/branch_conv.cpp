// branch_conv on the CPU: an Inception block's branches that start at its input, BatchNorm folded
// (inference), as ATen's convolutions (oneDNN) over channels_last tensors, each branch's result
// written into its channel slice of the block output. Semantics in csrc/ops.cpp; the Python
// reference is inception_fast/ops/branch_conv.py's branch_conv_reference.
//
// The branches whose 1x1 reads x itself (pool 0) run as ONE convolution over their concatenated
// weights; an average-pool branch is projected first and pooled after (narrower tensor); the
// max-pool branch pools x, then projects.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <vector>

#include "cpu/common.h"

namespace inception_fast {
namespace cpu {
namespace {

constexpr const char* kOp = "inception_fast::branch_conv";

at::Tensor conv_relu(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,
                     at::IntArrayRef stride, at::IntArrayRef padding, bool relu = true) {
  at::Tensor y = at::convolution(x, w, b, stride, padding, /*dilation=*/{1, 1}, /*transposed=*/false,
                                 /*output_padding=*/{0, 0}, /*groups=*/1);
  return relu ? y.relu_() : y;
}

// The 3x3/1 max pool of the max-pool branch: the extension's max_pool op (no index tensor, several
// times ATen's max_pool2d on these maps; csrc/cpu/max_pool.cpp).
at::Tensor max_pool_3x3(const at::Tensor& x) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("inception_fast::max_pool", "")
                       .typed<at::Tensor(const at::Tensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, bool)>();
  return op.call(x, {3, 3}, {1, 1}, {1, 1}, false);
}

// relu(avg_pool2d(r, 3, 1, 1, count_include_pad) + bias) in one pass: the extension's
// avg_pool3x3_bias_relu op (csrc/cpu/avg_pool3x3_bias_relu.cpp), as optimize()'s plain path runs it.
at::Tensor avg_pool_3x3_bias_relu(const at::Tensor& r, const std::optional<at::Tensor>& bias, bool include_pad) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("inception_fast::avg_pool3x3_bias_relu", "")
                       .typed<at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, bool)>();
  return op.call(r, bias, include_pad);
}

at::Tensor branch_conv(const at::Tensor& x_in, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       at::IntArrayRef split, at::IntArrayRef pool, at::IntArrayRef depth,
                       at::TensorList conv_weight, const c10::List<std::optional<at::Tensor>>& conv_bias,
                       at::IntArrayRef conv_stride, at::IntArrayRef conv_padding) {
  TORCH_CHECK(x_in.device().is_cpu(), kOp, ": x must be a CPU tensor for this kernel, got ", x_in.device());
  check_float_dtype(x_in, kOp, "x");
  TORCH_CHECK(x_in.dim() == 4, kOp, ": x must be 4-D (N, C, H, W), got ", x_in.dim(), "-D");
  const int64_t S = static_cast<int64_t>(split.size());
  TORCH_CHECK(S >= 1 && static_cast<int64_t>(pool.size()) == S && static_cast<int64_t>(depth.size()) == S, kOp,
              ": split, pool and depth must have one entry per branch, got ", split.size(), ", ", pool.size(), ", ",
              depth.size());
  int64_t R = 0, convs = 0;
  for (int64_t i = 0; i < S; ++i) {
    TORCH_CHECK(split[i] >= 1, kOp, ": split[", i, "] must be >= 1, got ", split[i]);
    TORCH_CHECK(pool[i] >= 0 && pool[i] <= 3, kOp, ": pool[", i, "] must be 0, 1, 2 or 3, got ", pool[i]);
    TORCH_CHECK(depth[i] >= 0, kOp, ": depth[", i, "] must be >= 0, got ", depth[i]);
    R += split[i];
    convs += depth[i];
  }
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == R && weight.size(1) == x_in.size(1) && weight.size(2) == 1 &&
                  weight.size(3) == 1,
              kOp, ": weight must be [", R, ", ", x_in.size(1), ", 1, 1] (sum(split) 1x1 filters over x's channels), got ",
              weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x_in.scalar_type() && weight.device() == x_in.device(), kOp,
              ": weight must have x's dtype and device");
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == R && bias->scalar_type() == x_in.scalar_type(), kOp,
                ": bias must be [", R, "] of x's dtype, got ", bias->sizes(), " ", bias->scalar_type());
  }
  TORCH_CHECK(static_cast<int64_t>(conv_weight.size()) == convs && static_cast<int64_t>(conv_bias.size()) == convs &&
                  static_cast<int64_t>(conv_stride.size()) == 2 * convs &&
                  static_cast<int64_t>(conv_padding.size()) == 2 * convs,
              kOp, ": sum(depth) = ", convs, " convolutions need as many conv_weight and conv_bias entries and twice as "
              "many conv_stride and conv_padding values");

  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t n = x.size(0);
  std::vector<int64_t> offset(S + 1, 0);
  for (int64_t i = 0; i < S; ++i) offset[i + 1] = offset[i] + split[i];
  auto rows = [&](int64_t i) { return weight.narrow(0, offset[i], split[i]); };
  auto bias_of = [&](int64_t i) -> std::optional<at::Tensor> {
    if (!bias.has_value()) return std::nullopt;
    return bias->narrow(0, offset[i], split[i]);
  };

  // The branches whose 1x1 reads x: one convolution over their filters (a view of `weight` for a
  // single branch, their rows concatenated otherwise).
  std::vector<int64_t> direct;
  for (int64_t i = 0; i < S; ++i)
    if (pool[i] == 0) direct.push_back(i);
  std::vector<at::Tensor> heads(S);
  if (!direct.empty()) {
    std::vector<at::Tensor> ws, bs;
    for (int64_t i : direct) {
      ws.push_back(rows(i));
      if (bias.has_value()) bs.push_back(*bias_of(i));
    }
    const at::Tensor wm = ws.size() == 1 ? ws[0] : at::cat(ws);
    const std::optional<at::Tensor> bm =
        bias.has_value() ? std::optional<at::Tensor>(bs.size() == 1 ? bs[0] : at::cat(bs)) : std::nullopt;
    const at::Tensor r = conv_relu(x, wm, bm, {1, 1}, {0, 0});
    int64_t c = 0;
    for (int64_t i : direct) {
      heads[i] = r.narrow(1, c, split[i]);
      c += split[i];
    }
  }
  for (int64_t i = 0; i < S; ++i) {
    if (pool[i] == 1 || pool[i] == 2) {
      const at::Tensor r = conv_relu(x, rows(i), std::nullopt, {1, 1}, {0, 0}, /*relu=*/false);
      heads[i] = avg_pool_3x3_bias_relu(r, bias.has_value() ? bias_of(i) : std::nullopt, /*include_pad=*/pool[i] == 1);
    } else if (pool[i] == 3) {
      heads[i] = conv_relu(max_pool_3x3(x), rows(i), bias_of(i), {1, 1}, {0, 0});
    }
  }

  // Each branch's following convolutions, its result written into its channel slice of the output.
  std::vector<at::Tensor> results(S);
  int64_t j = 0;
  for (int64_t i = 0; i < S; ++i) {
    at::Tensor a = heads[i];
    for (int64_t d = 0; d < depth[i]; ++d, ++j) {
      const at::Tensor& cw = conv_weight[j];
      TORCH_CHECK(cw.dim() == 4 && cw.size(1) == a.size(1) && cw.scalar_type() == x.scalar_type() &&
                      cw.device() == x.device(),
                  kOp, ": conv_weight[", j, "] must be [O, ", a.size(1), ", kh, kw] of x's dtype and device, got ",
                  cw.sizes(), " ", cw.scalar_type());
      const std::optional<at::Tensor> cb = conv_bias.get(j);
      if (cb.has_value()) {
        TORCH_CHECK(cb->dim() == 1 && cb->size(0) == cw.size(0) && cb->scalar_type() == x.scalar_type(), kOp,
                    ": conv_bias[", j, "] must be [", cw.size(0), "] of x's dtype, got ", cb->sizes());
      }
      const at::IntArrayRef st = conv_stride.slice(2 * j, 2), pd = conv_padding.slice(2 * j, 2);
      TORCH_CHECK(st[0] >= 1 && st[1] >= 1 && pd[0] >= 0 && pd[1] >= 0, kOp, ": conv ", j,
                  " needs strides >= 1 and paddings >= 0, got stride ", st, " padding ", pd);
      TORCH_CHECK(a.size(2) + 2 * pd[0] >= cw.size(2) && a.size(3) + 2 * pd[1] >= cw.size(3), kOp, ": conv ", j,
                  "'s ", cw.size(2), "x", cw.size(3), " kernel does not fit its ", a.size(2), "x", a.size(3),
                  " input with padding ", pd);
      a = conv_relu(a.contiguous(at::MemoryFormat::ChannelsLast), cw, cb, st, pd);
    }
    results[i] = a;
  }
  int64_t out_c = 0;
  for (int64_t i = 0; i < S; ++i) {
    TORCH_CHECK(results[i].size(2) == results[0].size(2) && results[i].size(3) == results[0].size(3), kOp,
                ": the branches end on different map sizes (branch 0: ", results[0].size(2), "x", results[0].size(3),
                ", branch ", i, ": ", results[i].size(2), "x", results[i].size(3), ")");
    out_c += results[i].size(1);
  }
  at::Tensor out = at::empty({n, out_c, results[0].size(2), results[0].size(3)},
                             x.options().memory_format(at::MemoryFormat::ChannelsLast));
  int64_t c = 0;
  for (int64_t i = 0; i < S; ++i) {
    out.narrow(1, c, results[i].size(1)).copy_(results[i]);
    c += results[i].size(1);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(inception_fast, CPU, m) { m.impl("branch_conv", &branch_conv); }

}  // namespace cpu
}  // namespace inception_fast
