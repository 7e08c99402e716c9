// winograd_conv1d on the CPU: a 1 x r or r x 1 convolution (r = 7 or 3), stride 1, zero padding along
// the kernel's axis only, as Winograd's (Toom-Cook's) F(4, r).
//
// Why: Inception-v4 spends a third of its float32 FLOPs in its 1x7 / 7x1 layers (Inception-v3 and
// Inception-ResNet-v2 a sixth), and 1x3 / 3x1 layers fill their last blocks; oneDNN runs them at the
// FMA peak (224-237 GFLOP/s on a 2-core Zen 4), so only fewer multiply-adds make them faster. F(4, 7)
// computes 4 outputs along the axis from a 10-pixel input tile with 10 multiplies per (input, output)
// channel pair instead of 28 (2.8x fewer); F(4, 3) 6 instead of 12 (2x). Their GEMMs ([tiles x C] x
// [C x K], 10 or 6 of them, MKL's batched GEMM) took 0.5-0.65x the direct convolution's time on the
// Inception shapes (17x17 maps of 128-256 channels, 8x8 maps of 192-512), the transforms add a pass
// over the input and one over the products.
//
// Shapes: x (N, C, H, W) float32 with unit channel stride (channels_last, or a channel slice of a
// channels_last tensor: read in place); u (A, C, K) the weight transformed once (winograd_weight1d,
// A = 10 for r = 7, 6 for r = 3); dim 3 for a 1 x r kernel (along the width), 2 for r x 1 (along the
// height); bias (K) or None; y (N, K, OH, OW) channels_last = act(conv2d(x, g, bias, stride 1,
// padding p along dim, 0 across)), act ReLU (NaN kept) or none.
//
// Tiles: along the axis, ceil(L_out / 4) tiles per line (L_out = L + 2p - r + 1); tile j of a line reads
// its input pixels 4j - p .. 4j - p + A - 1 (zeros outside the map) and writes outputs 4j .. 4j + 3 (those
// inside). With d the tile's pixels and g a filter (Toom-Cook on the points 0, 1, -1, 2, -2, 1/2, -1/2,
// 4, -1/4 and infinity for r = 7; 0, 1, -1, 1/2, -2 and infinity for r = 3; B^T's rows scaled to
// integers, G's by the inverse):
//   V = B^T d,   U = G g,   Y = A^T M,   M[e] = V[e] U[e] summed over C (the GEMMs).
// The numbers differ from the direct convolution's: relative error ~4e-6 (r = 7) and ~8e-7 (r = 3)
// against a float64 reference, against ~2e-7 for the direct one; optimize()'s float32 model stays
// within its 1e-4 of the peer (tests/test_winograd_conv1d.py, tests/test_optimize.py).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "cpu/common.h"
#include "cpu/winograd_common.h"

namespace inception_fast {
namespace cpu {
namespace {

using V16 = vec_t<float>;
constexpr int64_t L = vec_lanes<float>;

template <int R>
struct F4;  // F(4, R): the transforms

template <>
struct F4<7> {
  static constexpr int M = 4, A = 10;
  static constexpr float BT[A][A] = {
      {16, 60, -100, -315, 168, 315, -100, -60, 16, 0},  {0, -16, -76, 24, 339, 171, -144, -44, 16, 0},
      {0, -16, -44, 144, 171, -339, 24, 76, -16, 0},     {0, 8, 34, -33, -174, -3, 156, 28, -16, 0},
      {0, 8, 26, -63, -126, 147, 84, -92, 16, 0},        {0, 16, 92, 84, -147, -126, 63, 26, -8, 0},
      {0, 16, 28, -156, -3, 174, -33, -34, 8, 0},        {0, -4, -16, 21, 84, -21, -84, 4, 16, 0},
      {0, -16, 4, 84, -21, -84, 21, 16, -4, 0},          {0, 16, 60, -100, -315, 168, 315, -100, -60, 16}};
  static constexpr float AT[M][A] = {{1, 1, 1, 1, 1, 1, 1, 1, 1, 0},
                                     {0, 1, -1, 2, -2, 0.5f, -0.5f, 4, -0.25f, 0},
                                     {0, 1, 1, 4, 4, 0.25f, 0.25f, 16, 0.0625f, 0},
                                     {0, 1, -1, 8, -8, 0.125f, -0.125f, 64, -0.015625f, 1}};
  // G[e][j] = p_e^j / s_e (p_e the e-th point, s_e the scale of B^T's row e; row 9: infinity)
  static constexpr double P[A - 1] = {0, 1, -1, 2, -2, 0.5, -0.5, 4, -0.25};
  static constexpr double S[A] = {16, 270, 270, 6480, 15120, 945.0 / 32, 405.0 / 32, 771120, 48195.0 / 16384, 16};
};

template <>
struct F4<3> {
  static constexpr int M = 4, A = 6;
  static constexpr float BT[A][A] = {{2, -3, -4, 3, 2, 0},  {0, -2, 1, 5, 2, 0}, {0, -2, 5, -1, -2, 0},
                                     {0, 2, 1, -2, -1, 0},  {0, 1, -2, -1, 2, 0}, {0, 2, -3, -4, 3, 2}};
  static constexpr float AT[M][A] = {
      {1, 1, 1, 1, 1, 0}, {0, 1, -1, 0.5f, -2, 0}, {0, 1, 1, 0.25f, 4, 0}, {0, 1, -1, 0.125f, -8, 1}};
  static constexpr double P[A - 1] = {0, 1, -1, 0.5, -2};
  static constexpr double S[A] = {2, 6, 6, 15.0 / 16, 30, 2};
};

struct Geo {
  int64_t n, c, k;
  int64_t lines, len, olen, pad, tpl, tiles;  // lines across the axis, input / output length along it, tiles per line
  int64_t xs_n, xs_line, xs_axis;             // x's strides (floats): image, line, pixel along the axis
  int64_t ys_n, ys_line, ys_axis;             // y's
  bool along_h;
};

// Where tile t of the geometry starts: image, line, first output along the axis.
IF_INLINE void locate(const Geo& g, int64_t t, int64_t& n, int64_t& line, int64_t& j0) {
  n = t / (g.lines * g.tpl);
  const int64_t r = t % (g.lines * g.tpl);
  // along the height the lines (columns) are the fast index, so neighbouring tiles read neighbouring pixels
  line = g.along_h ? r % g.lines : r / g.tpl;
  j0 = 4 * (g.along_h ? r / g.lines : r % g.tpl);
}

template <int R>
IF_CPU_CLONES void input_transform(const float* __restrict__ x, float* __restrict__ vbuf, const Geo& g, int64_t first,
                                   int64_t count, int64_t t0, int64_t t1) {
  using T = F4<R>;
  constexpr int A = T::A;
  const int64_t plane = count * g.c;
  for (int64_t ct = t0; ct < t1; ++ct) {
    int64_t n, line, j0;
    locate(g, first + ct, n, line, j0);
    const float* xl = x + n * g.xs_n + line * g.xs_line;
    for (int64_t c0 = 0; c0 < g.c; c0 += L) {
      const int64_t lanes = std::min(L, g.c - c0);
      V16 d[A];
#pragma GCC unroll 16
      for (int s = 0; s < A; ++s) {
        const int64_t p = j0 - g.pad + s;
        d[s] = p >= 0 && p < g.len ? winograd::load_lanes(xl + p * g.xs_axis + c0, lanes) : V16{};
      }
#pragma GCC unroll 16
      for (int e = 0; e < A; ++e) {
        V16 v{};
#pragma GCC unroll 16
        for (int s = 0; s < A; ++s) {
          if (T::BT[e][s] != 0.0f) v += T::BT[e][s] * d[s];
        }
        float* dst = vbuf + e * plane + ct * g.c + c0;
        winograd::store_lanes(dst, v, lanes);
      }
    }
  }
}

template <int R>
IF_CPU_CLONES void output_transform(const float* __restrict__ mbuf, const float* __restrict__ bias,
                                    float* __restrict__ y, const Geo& g, bool relu, int64_t first, int64_t count,
                                    int64_t t0, int64_t t1) {
  using T = F4<R>;
  constexpr int A = T::A, M = T::M;
  const int64_t plane = count * g.k;
  for (int64_t ct = t0; ct < t1; ++ct) {
    int64_t n, line, j0;
    locate(g, first + ct, n, line, j0);
    float* yl = y + n * g.ys_n + line * g.ys_line;
    const int64_t outs = std::min<int64_t>(M, g.olen - j0);
    for (int64_t k0 = 0; k0 < g.k; k0 += L) {
      const int64_t lanes = std::min(L, g.k - k0);
      V16 m[A];
#pragma GCC unroll 16
      for (int e = 0; e < A; ++e) {
        const float* src = mbuf + e * plane + ct * g.k + k0;
        m[e] = winograd::load_lanes(src, lanes);
      }
      const V16 b = bias != nullptr ? winograd::load_lanes(bias + k0, lanes) : V16{};
#pragma GCC unroll 4
      for (int q = 0; q < M; ++q) {
        if (q >= outs) break;
        V16 o = b;
#pragma GCC unroll 16
        for (int e = 0; e < A; ++e) {
          if (T::AT[q][e] != 0.0f) o += T::AT[q][e] * m[e];
        }
        if (relu) o = relu_vec<float>(o);
        float* dst = yl + (j0 + q) * g.ys_axis + k0;
        winograd::store_lanes(dst, o, lanes);
      }
    }
  }
}

template <int R>
void run(const float* px, const float* pb, float* py, const Geo& g, const at::Tensor& u, bool relu,
         const at::TensorOptions& opts) {
  winograd::run(
      g.tiles, F4<R>::A, g.c, g.k, u, opts,
      [&](float* pv, int64_t first, int64_t count, int64_t t0, int64_t t1) {
        input_transform<R>(px, pv, g, first, count, t0, t1);
      },
      [&](const float* pm, int64_t first, int64_t count, int64_t t0, int64_t t1) {
        output_transform<R>(pm, pb, py, g, relu, first, count, t0, t1);
      });
}

int64_t kernel_of(int64_t a) { return a == F4<7>::A ? 7 : a == F4<3>::A ? 3 : 0; }

at::Tensor winograd_conv1d_cpu(const at::Tensor& x_in, const at::Tensor& u, const c10::optional<at::Tensor>& bias,
                               int64_t dim, int64_t padding, bool relu) {
  constexpr const char* op = "winograd_conv1d";
  TORCH_CHECK(x_in.device().is_cpu() && u.device().is_cpu(), op, ": x and u must be CPU tensors");
  TORCH_CHECK(x_in.dim() == 4, op, ": x must be a 4-D (N, C, H, W) batch, got shape ", x_in.sizes());
  TORCH_CHECK(x_in.scalar_type() == at::kFloat && u.scalar_type() == at::kFloat, op,
              ": x and u must be float32, got ", x_in.scalar_type(), " and ", u.scalar_type());
  const int64_t r = u.dim() == 3 ? kernel_of(u.size(0)) : 0;
  TORCH_CHECK(r != 0 && u.size(1) == x_in.size(1), op, ": u must be (10, C, K) (a 7-tap kernel) or (6, C, K) (3-tap) ",
              "with C = x's ", x_in.size(1), " channels, got ", u.sizes());
  TORCH_CHECK(dim == 2 || dim == 3, op, ": dim must be 2 (an r x 1 kernel) or 3 (1 x r), got ", dim);
  TORCH_CHECK(padding >= 0 && padding < r, op, ": padding must be in [0, ", r - 1, "], got ", padding);
  TORCH_CHECK(x_in.size(dim) + 2 * padding >= r, op, ": a map of ", x_in.size(dim), " pixels along dim ", dim,
              " with padding ", padding, " is shorter than the ", r, "-tap kernel");
  const int64_t K = u.size(2);
  const bool has_bias = winograd::check_bias(op, bias, K);
  const auto cl = at::MemoryFormat::ChannelsLast;
  // a channel slice of a channels_last tensor (a merged 1x1 convolution's output) is read where it is
  const at::Tensor x = x_in.stride(1) == 1 || x_in.size(1) == 1 ? x_in : x_in.contiguous(cl);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const bool along_h = dim == 2;
  const int64_t OH = along_h ? H + 2 * padding - r + 1 : H, OW = along_h ? W : W + 2 * padding - r + 1;
  at::Tensor y = at::empty({N, K, OH, OW}, x.options().memory_format(cl));
  if (y.numel() == 0) return y;
  if (C == 0) return winograd::bias_only(y, bias, has_bias, relu);  // no input channels: the bias alone
  Geo g{};
  g.n = N;
  g.c = C;
  g.k = K;
  g.along_h = along_h;
  g.pad = padding;
  g.lines = along_h ? W : H;
  g.len = along_h ? H : W;
  g.olen = along_h ? OH : OW;
  g.tpl = (g.olen + 3) / 4;
  g.tiles = N * g.lines * g.tpl;
  g.xs_n = x.stride(0);
  g.xs_line = along_h ? x.stride(3) : x.stride(2);
  g.xs_axis = along_h ? x.stride(2) : x.stride(3);
  g.ys_n = OH * OW * K;
  g.ys_line = along_h ? K : OW * K;
  g.ys_axis = along_h ? OW * K : K;
  const at::Tensor uc = u.contiguous();
  const at::Tensor bc = has_bias ? bias->contiguous() : at::Tensor();
  const float* px = x.const_data_ptr<float>();
  const float* pb = has_bias ? bc.const_data_ptr<float>() : nullptr;
  float* py = y.mutable_data_ptr<float>();
  if (r == 7) {
    run<7>(px, pb, py, g, uc, relu, x.options());
  } else {
    run<3>(px, pb, py, g, uc, relu, x.options());
  }
  return y;
}

template <int R>
at::Tensor transform_weight(const at::Tensor& w) {  // w (K, C, R) float64 -> (A, C, K) float32
  using T = F4<R>;
  at::Tensor gm = at::empty({T::A, R}, w.options());
  auto ga = gm.accessor<double, 2>();
  for (int e = 0; e < T::A; ++e) {
    for (int j = 0; j < R; ++j) {
      double p = e < T::A - 1 ? 1.0 : (j == R - 1 ? 1.0 : 0.0);  // the last row: infinity, g's top coefficient
      if (e < T::A - 1) {
        for (int i = 0; i < j; ++i) p *= T::P[e];
      }
      ga[e][j] = p / T::S[e];
    }
  }
  return at::einsum("ej,kcj->eck", {gm, w}).to(at::kFloat).contiguous();
}

at::Tensor winograd_weight1d_cpu(const at::Tensor& weight) {
  constexpr const char* op = "winograd_weight1d";
  TORCH_CHECK(weight.dim() == 4 && (weight.size(2) == 1) != (weight.size(3) == 1) &&
                  (weight.size(2) * weight.size(3) == 7 || weight.size(2) * weight.size(3) == 3),
              op, ": the weight must be (K, C, 1, r) or (K, C, r, 1) with r = 7 or 3, got ", weight.sizes());
  TORCH_CHECK(at::isFloatingType(weight.scalar_type()), op, ": the weight must be floating point, got ",
              weight.scalar_type());
  const int64_t r = weight.size(2) * weight.size(3);
  const at::Tensor w = weight.to(weight.options().dtype(at::kDouble)).reshape({weight.size(0), weight.size(1), r});
  return r == 7 ? transform_weight<7>(w) : transform_weight<3>(w);
}

}  // namespace

TORCH_LIBRARY_IMPL(inception_fast, CPU, m) {
  m.impl("winograd_conv1d", &winograd_conv1d_cpu);
  m.impl("winograd_weight1d", &winograd_weight1d_cpu);
}

}  // namespace cpu
}  // namespace inception_fast
