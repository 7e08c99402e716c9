// The host side of branch_conv's CUDA backend: checks, the output, and which kernel of
// branch_conv_kernels.h runs each step of each branch. Templated on the executor that runs the
// kernels -- CUDA launches (csrc/cuda/branch_conv.cu) or the CPU emulation that tests them
// (csrc/testing/branch_conv_emulated.cpp) -- so both take the same steps. Every tensor the plan makes
// goes through ex.fresh() (the emulation fills it with NaN: an element no kernel wrote shows).
//
// Per branch, into its channel slice of the output:
//   plain 1x1 (pool 0, depth 0):       conv_point, 1x1, straight into the slice;
//   1x1 reduce -> k x k (pool 0):      the fused tile (the reduced tile and its halo in shared
//                                      memory), when a tile of at least one output pixel fits the
//                                      executor's shared memory; else a 1x1 conv_point into a
//                                      temporary and a k x k conv_point;
//   average pool (pool 1 / 2):         the 1x1 projection first (no bias), then pool_point with
//                                      the bias and ReLU (both linear: the pool runs on the
//                                      narrower tensor);
//   max pool (pool 3):                 ATen's 3x3/1 max pool of x, then the 1x1 projection;
// then the branch's remaining convolutions as conv_point, the last one into the slice.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "cuda/branch_conv_kernels.h"

namespace inception_fast {
namespace branch_conv_kernels {

template <typename T>
View<T> view_of(const at::Tensor& t, int64_t c0 = 0, int64_t channels = -1) {
  return View<T>{static_cast<T*>(t.data_ptr()) + c0 * t.stride(1), t.stride(0), t.stride(2), t.stride(3),
                 t.stride(1), static_cast<int>(t.size(0)), static_cast<int>(t.size(2)), static_cast<int>(t.size(3)),
                 static_cast<int>(channels < 0 ? t.size(1) : channels)};
}

template <typename T>
View<const T> const_view_of(const at::Tensor& t) {
  const View<T> v = view_of<T>(t);
  return View<const T>{v.p, v.sn, v.sh, v.sw, v.sc, v.n, v.h, v.w, v.c};
}

// [O, C, KH, KW] -> [KH][KW][C][O], contiguous: the kernels' weight layout.
inline at::Tensor khwco(const at::Tensor& w) { return w.permute({2, 3, 1, 0}).contiguous(); }

inline int64_t out_size(int64_t in, int64_t k, int64_t s, int64_t p) { return (in + 2 * p - k) / s + 1; }

// The largest output tile (th x tw, from 8 x 8 down to 1 x 1) whose input window fits `smem_bytes`,
// clipped to the output; {0, 0} when none does.
template <typename T>
std::pair<int, int> pick_tile(int64_t smem_bytes, int oh, int ow, int kh, int kw, int sh, int sw, int R) {
  static constexpr int kTiles[][2] = {{8, 8}, {8, 4}, {4, 4}, {4, 2}, {2, 2}, {2, 1}, {1, 1}};
  for (const auto& t : kTiles) {
    const int th = std::min(t[0], oh), tw = std::min(t[1], ow);
    if (tile_smem_bytes<T>(th, tw, kh, kw, sh, sw, R) <= smem_bytes) return {th, tw};
  }
  return {0, 0};
}

template <typename T, typename Exec>
void run_conv(Exec& ex, const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,
              int sh, int sw, int ph, int pw, bool relu, const at::Tensor& y, int64_t y_c0) {
  const at::Tensor wt = khwco(w);
  ConvArgs<T> a{const_view_of<T>(x), view_of<T>(y, y_c0, w.size(0)), static_cast<const T*>(wt.data_ptr()),
                b.has_value() ? static_cast<const T*>(b->data_ptr()) : nullptr,
                static_cast<int>(w.size(2)), static_cast<int>(w.size(3)), sh, sw, ph, pw, relu};
  const int64_t total = static_cast<int64_t>(a.y.n) * a.y.h * a.y.w * a.y.c;
  if (total > 0) ex.conv(a, total);
}

template <typename T, typename Exec>
at::Tensor branch_conv_plan(Exec& ex, const char* op, const at::Tensor& x_in, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef split, at::IntArrayRef pool,
                            at::IntArrayRef depth, at::TensorList conv_weight,
                            const c10::List<std::optional<at::Tensor>>& conv_bias, at::IntArrayRef conv_stride,
                            at::IntArrayRef conv_padding) {
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t S = static_cast<int64_t>(split.size());
  struct Geom {
    int sh, sw, ph, pw;
  };
  auto geom = [&](int64_t k) {  // convolution k's stride and padding
    for (const int64_t v : {conv_stride[2 * k], conv_stride[2 * k + 1], conv_padding[2 * k], conv_padding[2 * k + 1]}) {
      TORCH_CHECK(v >= 0 && v < (int64_t{1} << 30), op, ": conv ", k, " has a stride or padding out of range: ", v);
    }
    return Geom{static_cast<int>(conv_stride[2 * k]), static_cast<int>(conv_stride[2 * k + 1]),
                static_cast<int>(conv_padding[2 * k]), static_cast<int>(conv_padding[2 * k + 1])};
  };
  auto contiguous = [](const std::optional<at::Tensor>& t) -> std::optional<at::Tensor> {
    if (!t.has_value() || !t->defined()) return std::nullopt;
    return t->contiguous();
  };
  // Each branch's output size and width; the branches must end on one map size.
  std::vector<int64_t> offset(S + 1, 0), width(S);
  int64_t OH = -1, OW = -1, out_c = 0, j = 0;
  for (const auto i : c10::irange(S)) {
    offset[i + 1] = offset[i] + split[i];
    int64_t c = split[i], h = H, w = W;
    for (int64_t d = 0; d < depth[i]; ++d, ++j) {
      const at::Tensor& cw = conv_weight[j];
      TORCH_CHECK(cw.dim() == 4 && cw.size(1) == c && cw.scalar_type() == x.scalar_type() &&
                      cw.device() == x.device(),
                  op, ": conv_weight[", j, "] must be [O, ", c, ", kh, kw] of x's dtype and device, got ", cw.sizes(),
                  " ", cw.scalar_type(), " on ", cw.device());
      const std::optional<at::Tensor> cb = conv_bias.get(j);
      if (cb.has_value() && cb->defined()) {
        TORCH_CHECK(cb->dim() == 1 && cb->size(0) == cw.size(0) && cb->scalar_type() == x.scalar_type() &&
                        cb->device() == x.device(),
                    op, ": conv_bias[", j, "] must be [", cw.size(0), "] of x's dtype and device, got ", cb->sizes());
      }
      const auto [sh, sw, ph, pw] = geom(j);
      TORCH_CHECK(sh >= 1 && sw >= 1 && ph >= 0 && pw >= 0, op, ": conv ", j,
                  " needs strides >= 1 and paddings >= 0");
      TORCH_CHECK(h + 2 * ph >= cw.size(2) && w + 2 * pw >= cw.size(3), op, ": conv ", j, "'s ", cw.size(2), "x",
                  cw.size(3), " kernel does not fit its ", h, "x", w, " input with padding (", ph, ", ", pw, ")");
      h = out_size(h, cw.size(2), sh, ph);
      w = out_size(w, cw.size(3), sw, pw);
      c = cw.size(0);
    }
    TORCH_CHECK(OH < 0 || (h == OH && w == OW), op, ": the branches end on different map sizes (", OH, "x", OW,
                " and ", h, "x", w, ")");
    OH = h;
    OW = w;
    width[i] = c;
    out_c += c;
  }
  TORCH_CHECK(OH * OW * N * out_c < (int64_t{1} << 31) && N * H * W * C < (int64_t{1} << 31), op,
              ": tensors of 2^31 elements or more are not supported by this kernel");
  const auto cl = x.options().memory_format(at::MemoryFormat::ChannelsLast);
  at::Tensor out = ex.fresh(at::empty({N, out_c, OH, OW}, cl));

  j = 0;
  int64_t c_out = 0;
  for (const auto i : c10::irange(S)) {
    const at::Tensor rows = weight.narrow(0, offset[i], split[i]);
    const std::optional<at::Tensor> b_i =
        bias.has_value() && bias->defined() ? std::optional<at::Tensor>(bias->narrow(0, offset[i], split[i]).contiguous())
                                            : std::nullopt;
    const int64_t first = j, last = j + depth[i];  // this branch's convolutions [first, last)
    j = last;
    // where step k of the branch writes: its slice of `out` for the last step, else a temporary
    auto target = [&](int64_t channels, int64_t h, int64_t w, bool is_last) -> std::pair<at::Tensor, int64_t> {
      if (is_last) return {out, c_out};
      return {ex.fresh(at::empty({N, channels, h, w}, cl)), 0};
    };
    at::Tensor a;  // the branch's running activation (when not already in the slice)
    int64_t next = first;
    if (pool[i] == 0 && depth[i] == 0) {
      run_conv<T>(ex, x, rows, b_i, 1, 1, 0, 0, true, out, c_out);
    } else if (pool[i] == 0) {
      const at::Tensor& cw = conv_weight[first];
      const auto [sh, sw, ph, pw] = geom(first);
      const int kh = static_cast<int>(cw.size(2)), kw = static_cast<int>(cw.size(3));
      const int64_t h1 = out_size(H, kh, sh, ph), w1 = out_size(W, kw, sw, pw);
      const auto [dst, dst_c0] = target(cw.size(0), h1, w1, depth[i] == 1);
      const auto tile = pick_tile<T>(ex.smem_limit(), static_cast<int>(h1), static_cast<int>(w1), kh, kw, sh, sw,
                                     static_cast<int>(split[i]));
      if (tile.first > 0) {
        const at::Tensor w1t = khwco(rows), w2t = khwco(cw);
        const std::optional<at::Tensor> cb = contiguous(conv_bias.get(first));
        TileArgs<T> ta{const_view_of<T>(x),
                       view_of<T>(dst, dst_c0, cw.size(0)),
                       static_cast<const T*>(w1t.data_ptr()),
                       b_i.has_value() ? static_cast<const T*>(b_i->data_ptr()) : nullptr,
                       static_cast<const T*>(w2t.data_ptr()),
                       cb.has_value() ? static_cast<const T*>(cb->data_ptr()) : nullptr,
                       static_cast<int>(split[i]), kh, kw, sh, sw, ph, pw, tile.first, tile.second,
                       static_cast<int>((h1 + tile.first - 1) / tile.first),
                       static_cast<int>((w1 + tile.second - 1) / tile.second)};
        const int64_t blocks = N * ta.tiles_h * ta.tiles_w;
        if (blocks > 0) ex.tile(ta, blocks);
      } else {  // not even one output pixel's window fits: the reduction through device memory
        const at::Tensor r = ex.fresh(at::empty({N, split[i], H, W}, cl));
        run_conv<T>(ex, x, rows, b_i, 1, 1, 0, 0, true, r, 0);
        run_conv<T>(ex, r, cw, contiguous(conv_bias.get(first)), sh, sw, ph, pw, true, dst, dst_c0);
      }
      a = dst.narrow(1, dst_c0, cw.size(0));
      next = first + 1;
    } else if (pool[i] == 1 || pool[i] == 2) {
      const at::Tensor proj = ex.fresh(at::empty({N, split[i], H, W}, cl));
      run_conv<T>(ex, x, rows, std::nullopt, 1, 1, 0, 0, false, proj, 0);
      const auto [dst, dst_c0] = target(split[i], H, W, depth[i] == 0);
      PoolArgs<T> pa{const_view_of<T>(proj), view_of<T>(dst, dst_c0, split[i]),
                     b_i.has_value() ? static_cast<const T*>(b_i->data_ptr()) : nullptr, pool[i] == 1};
      const int64_t total = N * H * W * split[i];
      if (total > 0) ex.pool(pa, total);
      a = dst.narrow(1, dst_c0, split[i]);
    } else {
      const at::Tensor pooled = at::max_pool2d(x, {3, 3}, {1, 1}, {1, 1}).contiguous(at::MemoryFormat::ChannelsLast);
      const auto [dst, dst_c0] = target(split[i], H, W, depth[i] == 0);
      run_conv<T>(ex, pooled, rows, b_i, 1, 1, 0, 0, true, dst, dst_c0);
      a = dst.narrow(1, dst_c0, split[i]);
    }
    for (int64_t k = next; k < last; ++k) {
      const at::Tensor& cw = conv_weight[k];
      const auto [sh, sw, ph, pw] = geom(k);
      const auto [dst, dst_c0] = target(cw.size(0), out_size(a.size(2), cw.size(2), sh, ph),
                                        out_size(a.size(3), cw.size(3), sw, pw), k == last - 1);
      run_conv<T>(ex, a, cw, contiguous(conv_bias.get(k)), sh, sw, ph, pw, true, dst, dst_c0);
      a = dst.narrow(1, dst_c0, cw.size(0));
    }
    c_out += width[i];
  }
  return out;
}

// The checks both executors share, then the plan in x's dtype (float32, float16 or bfloat16).
template <typename Exec>
at::Tensor branch_conv_dispatch(Exec& ex, const char* op, const at::Tensor& x, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, at::IntArrayRef split, at::IntArrayRef pool,
                                at::IntArrayRef depth, at::TensorList conv_weight,
                                const c10::List<std::optional<at::Tensor>>& conv_bias, at::IntArrayRef conv_stride,
                                at::IntArrayRef conv_padding) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16, op,
              ": x must be float32, float16 or bfloat16, got ", dt);
  const int64_t S = static_cast<int64_t>(split.size());
  TORCH_CHECK(S >= 1 && static_cast<int64_t>(pool.size()) == S && static_cast<int64_t>(depth.size()) == S, op,
              ": split, pool and depth must have one entry per branch");
  int64_t R = 0, convs = 0;
  for (const auto i : c10::irange(S)) {
    TORCH_CHECK(split[i] >= 1 && pool[i] >= 0 && pool[i] <= 3 && depth[i] >= 0, op, ": branch ", i,
                " needs split >= 1, pool in 0..3 and depth >= 0");
    R += split[i];
    convs += depth[i];
  }
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == R && weight.size(1) == x.size(1) && weight.size(2) == 1 &&
                  weight.size(3) == 1 && weight.scalar_type() == dt && weight.device() == x.device(),
              op, ": weight must be [", R, ", ", x.size(1), ", 1, 1] of x's dtype and device, got ", weight.sizes(), " ",
              weight.scalar_type());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == R && bias->scalar_type() == dt && bias->device() == x.device(),
                op, ": bias must be [", R, "] of x's dtype and device, got ", bias->sizes());
  }
  TORCH_CHECK(static_cast<int64_t>(conv_weight.size()) == convs && static_cast<int64_t>(conv_bias.size()) == convs &&
                  static_cast<int64_t>(conv_stride.size()) == 2 * convs &&
                  static_cast<int64_t>(conv_padding.size()) == 2 * convs,
              op, ": sum(depth) = ", convs, " convolutions need as many conv_weight and conv_bias entries and twice as "
              "many conv_stride and conv_padding values");
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "branch_conv", [&] {
    if constexpr (!std::is_same_v<scalar_t, double>) {
      out = branch_conv_plan<scalar_t>(ex, op, x, weight.contiguous(), bias, split, pool, depth, conv_weight,
                                       conv_bias, conv_stride, conv_padding);
    }
  });
  return out;
}

}  // namespace branch_conv_kernels
}  // namespace inception_fast
