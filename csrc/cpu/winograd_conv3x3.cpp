// winograd_conv3x3 on the CPU: a 3x3 convolution, stride 1, padding 0 or 1, as Winograd's F(2x2, 3x3).
//
// Why: at batch 1 a float32 3x3 convolution on oneDNN runs at ~93% of the FMA peak and cannot go
// faster; F(2x2, 3x3) computes each 2x2 block of outputs from a 4x4 input tile with 16 multiplies per
// (input, output) channel pair instead of 36: 2.25x fewer multiply-adds, at the price of a transform
// pass over the input and one over the products. Its GEMMs (16 of them, [tiles x C] x [C x K]) ran at
// 144-189 GFLOP/s on a 2-core Zen 4 (MKL's batched GEMM), so a 3x3 layer on a 28x28 or larger map
// takes 0.55-0.75x its direct time. GoogLeNet spends 68% of its FLOPs in such layers.
//
// Shapes: x (N, C, H, W) float32 (channels_last or a channel slice of it: read in place; else copied
// to channels_last); u (16, C, K): the weight transformed once,
// u[4a + b] = (G g G^T)[a][b] for each (c, k) (inception_fast.ops.winograd_weight); bias (K) or
// None; y (N, K, OH, OW) channels_last, act(conv2d(x, g, bias, stride 1, padding p)), act ReLU (NaN
// kept) or none; OH = H + 2p - 2.
//
// Tiles: th = ceil(OH / 2) rows by tw = ceil(OW / 2) columns of them per image; tile (i, j) reads
// input rows 2i-p .. 2i-p+3 and columns 2j-p .. 2j-p+3 (zeros outside the map) and writes outputs
// 2i, 2i+1 x 2j, 2j+1 (those inside the output). Transforms (B, G, A of F(2x2, 3x3), Lavin & Gray 2016):
//   V = B^T d B, B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
//   U = G g G^T,  G  = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]
//   Y = A^T M A,  A^T = [1 1 1 0; 0 1 -1 -1],  M[e] = V[e] U[e] summed over C (the GEMMs).
// The numbers differ from the direct convolution's in the last bits (other sums in other orders);
// relative error ~1e-7 in float32 against a float64 reference, as the direct one.
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

struct Geo {
  int64_t n, c, h, w, k, pad, oh, ow, th, tw, tiles;  // input h x w, padding, output oh x ow
  int64_t xs_n, xs_h, xs_w;                            // x's strides in floats (its channel stride is 1)
};

// B^T d B for one 4x4 tile of 16 channels (d[r][s] vectors, zeros outside the map), to v[4r + s].
IF_INLINE void input_tile(V16 d[4][4], V16 v[16]) {
  V16 a[4][4];
  for (int s = 0; s < 4; ++s) {
    a[0][s] = d[0][s] - d[2][s];
    a[1][s] = d[1][s] + d[2][s];
    a[2][s] = d[2][s] - d[1][s];
    a[3][s] = d[1][s] - d[3][s];
  }
  for (int r = 0; r < 4; ++r) {
    v[4 * r + 0] = a[r][0] - a[r][2];
    v[4 * r + 1] = a[r][1] + a[r][2];
    v[4 * r + 2] = a[r][2] - a[r][1];
    v[4 * r + 3] = a[r][1] - a[r][3];
  }
}

// A^T m A for one tile: y[2p + q] from m[4r + s].
IF_INLINE void output_tile(const V16 m[16], V16 y[4]) {
  V16 b0[4], b1[4];
  for (int s = 0; s < 4; ++s) {
    b0[s] = m[s] + m[4 + s] + m[8 + s];
    b1[s] = m[4 + s] - m[8 + s] - m[12 + s];
  }
  y[0] = b0[0] + b0[1] + b0[2];
  y[1] = b0[1] - b0[2] - b0[3];
  y[2] = b1[0] + b1[1] + b1[2];
  y[3] = b1[1] - b1[2] - b1[3];
}

// V[e][t - first][c] for the chunk's tiles [t0, t1): a block of 16 channels at a time, the channels after the last
// whole block with their lanes zero-padded.
IF_CPU_CLONES void input_transform(const float* __restrict__ x, float* __restrict__ vbuf, const Geo& g,
                                   int64_t first, int64_t count, int64_t t0, int64_t t1) {
  const int64_t plane = count * g.c;  // V[e] is [count x C]: the chunk of tiles first .. first + count
  for (int64_t ct = t0; ct < t1; ++ct) {
    const int64_t t = first + ct;
    const int64_t n = t / (g.th * g.tw), i = (t / g.tw) % g.th, j = t % g.tw;
    const float* xn = x + n * g.xs_n;
    for (int64_t c0 = 0; c0 < g.c; c0 += L) {
      const int64_t lanes = std::min(L, g.c - c0);
      V16 d[4][4];
      for (int r = 0; r < 4; ++r) {
        const int64_t ih = 2 * i - g.pad + r;
        for (int s = 0; s < 4; ++s) {
          const int64_t iw = 2 * j - g.pad + s;
          const bool inside = ih >= 0 && ih < g.h && iw >= 0 && iw < g.w;
          d[r][s] = inside ? winograd::load_lanes(xn + ih * g.xs_h + iw * g.xs_w + c0, lanes) : V16{};
        }
      }
      V16 v[16];
      input_tile(d, v);
      for (int e = 0; e < 16; ++e) {
        winograd::store_lanes(vbuf + e * plane + ct * g.c + c0, v[e], lanes);
      }
    }
  }
}

IF_CPU_CLONES void output_transform(const float* __restrict__ mbuf, const float* __restrict__ bias,
                                    float* __restrict__ y, const Geo& g, bool relu, int64_t first, int64_t count,
                                    int64_t t0, int64_t t1) {
  const int64_t plane = count * g.k;  // M[e] is [count x K]
  for (int64_t ct = t0; ct < t1; ++ct) {
    const int64_t t = first + ct;
    const int64_t n = t / (g.th * g.tw), i = (t / g.tw) % g.th, j = t % g.tw;
    float* yn = y + n * g.oh * g.ow * g.k;
    for (int64_t k0 = 0; k0 < g.k; k0 += L) {
      const int64_t lanes = std::min(L, g.k - k0);
      V16 m[16];
      for (int e = 0; e < 16; ++e) {
        const float* src = mbuf + e * plane + ct * g.k + k0;
        m[e] = winograd::load_lanes(src, lanes);
      }
      V16 out[4];
      output_tile(m, out);
      const V16 b = bias != nullptr ? winograd::load_lanes(bias + k0, lanes) : V16{};
      for (int p = 0; p < 2; ++p) {
        const int64_t oh = 2 * i + p;
        if (oh >= g.oh) break;
        for (int q = 0; q < 2; ++q) {
          const int64_t ow = 2 * j + q;
          if (ow >= g.ow) break;
          V16 o = out[2 * p + q] + b;
          if (relu) o = relu_vec<float>(o);
          float* dst = yn + (oh * g.ow + ow) * g.k + k0;
          winograd::store_lanes(dst, o, lanes);
        }
      }
    }
  }
}

at::Tensor winograd_conv3x3_cpu(const at::Tensor& x_in, const at::Tensor& u, const c10::optional<at::Tensor>& bias,
                                int64_t padding, bool relu) {
  constexpr const char* op = "winograd_conv3x3";
  TORCH_CHECK(x_in.device().is_cpu() && u.device().is_cpu(), op, ": x and u must be CPU tensors");
  TORCH_CHECK(x_in.dim() == 4, op, ": x must be a 4-D (N, C, H, W) batch, got shape ", x_in.sizes());
  TORCH_CHECK(x_in.scalar_type() == at::kFloat && u.scalar_type() == at::kFloat, op,
              ": x and u must be float32, got ", x_in.scalar_type(), " and ", u.scalar_type());
  TORCH_CHECK(u.dim() == 3 && u.size(0) == 16 && u.size(1) == x_in.size(1), op,
              ": u must be (16, C, K) with C = x's ", x_in.size(1), " channels, got ", u.sizes());
  TORCH_CHECK(padding == 0 || padding == 1, op, ": padding must be 0 or 1, got ", padding);
  TORCH_CHECK(x_in.size(2) + 2 * padding >= 3 && x_in.size(3) + 2 * padding >= 3, op, ": a ", x_in.size(2), "x",
              x_in.size(3), " map with padding ", padding, " is smaller than the 3x3 kernel");
  const int64_t K = u.size(2);
  const bool has_bias = winograd::check_bias(op, bias, K);
  const auto cl = at::MemoryFormat::ChannelsLast;
  // a channel slice of a channels_last tensor (a merged 1x1 convolution's output) is read where it is
  const at::Tensor x = x_in.stride(1) == 1 || x_in.size(1) == 1 ? x_in : x_in.contiguous(cl);
  Geo g{x.size(0), x.size(1), x.size(2), x.size(3), K, padding, x.size(2) + 2 * padding - 2,
         x.size(3) + 2 * padding - 2, 0, 0, 0, x.stride(0), x.stride(2), x.stride(3)};
  g.th = (g.oh + 1) / 2;
  g.tw = (g.ow + 1) / 2;
  g.tiles = g.n * g.th * g.tw;
  at::Tensor y = at::empty({g.n, K, g.oh, g.ow}, x.options().memory_format(cl));
  if (y.numel() == 0) return y;
  if (g.c == 0) return winograd::bias_only(y, bias, has_bias, relu);
  const at::Tensor uc = u.contiguous();
  const at::Tensor bc = has_bias ? bias->contiguous() : at::Tensor();
  const float* px = x.const_data_ptr<float>();
  const float* pb = has_bias ? bc.const_data_ptr<float>() : nullptr;
  float* py = y.mutable_data_ptr<float>();
  winograd::run(
      g.tiles, 16, g.c, K, uc, x.options(),
      [&](float* pv, int64_t first, int64_t count, int64_t t0, int64_t t1) {
        input_transform(px, pv, g, first, count, t0, t1);
      },
      [&](const float* pm, int64_t first, int64_t count, int64_t t0, int64_t t1) {
        output_transform(pm, pb, py, g, relu, first, count, t0, t1);
      });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(inception_fast, CPU, m) { m.impl("winograd_conv3x3", &winograd_conv3x3_cpu); }

}  // namespace cpu
}  // namespace inception_fast
