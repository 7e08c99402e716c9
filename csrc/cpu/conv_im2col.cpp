// conv_im2col and conv_im2col_backward on the CPU: a k x k convolution (one group, no dilation) as
// im2col + one GEMM, forward and backward, in channels_last.
//
// Why: on the small maps an Inception network has at the seeds' 75x75 input (7x7, 3x3, 1x1), the
// oneDNN convolution ATen calls runs the backward of the strided grid reductions at a fraction of
// the GEMM's speed: Inception-v3's Mixed_6a 3x3/2 conv ([8, 288, 7, 7] -> [8, 384, 3, 3]) takes
// 7.8 ms forward + backward there, 2.4 ms as im2col GEMMs (2-core Zen 4; the same for IR-v2's
// reductions). Here the rows of im2col are the output pixels and the columns (ky, kx, c), which
// is the memory order of a channels_last weight, so the weight is the GEMM's other operand as it
// is, and the weight gradient comes out in the same layout.
//
//   forward:  y[M, O]      = cols[M, K] @ W[O, K]^T (+ bias)     M = N*OH*OW, K = kh*kw*C
//   backward: gcols[M, K]  = dy[M, O] @ W[O, K]  -> col2im -> grad_x
//             grad_W[O, K] = dy[M, O]^T @ cols[M, K]             (cols recomputed, not saved)
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <tuple>
#include <utility>
#include <vector>

#include "cpu/common.h"
#include "runtime/gemm.h"

namespace inception_fast {
namespace cpu {
namespace {

struct Geometry {
  int64_t n, c, h, w, o, kh, kw, sh, sw, ph, pw, oh, ow;
  // The taps [ky0, ky1) x [kx0, kx1) that read the map for some output pixel; the others only ever
  // read the zero padding (a 1x7 on a 3-wide map: 2 of 7 taps) and are left out of the GEMMs.
  int64_t ky0, ky1, kx0, kx1;
  int64_t rows() const { return n * oh * ow; }
  int64_t taps_h() const { return ky1 - ky0; }
  int64_t taps_w() const { return kx1 - kx0; }
  int64_t cols() const { return taps_h() * taps_w() * c; }
  bool trimmed() const { return taps_h() != kh || taps_w() != kw; }
};

// [first, last) of the taps k of a kernel whose output index o in [0, out) reads input o*s - p + k
// in [0, size) for some o.
std::pair<int64_t, int64_t> live_taps(int64_t kernel, int64_t size, int64_t out, int64_t s, int64_t p) {
  int64_t first = 0, last = kernel;
  while (first < last && (out - 1) * s - p + first < 0) ++first;  // even the last output reads before 0
  while (last > first && -p + (last - 1) >= size) --last;         // even the first output reads past the end
  return {first, last};
}

Geometry geometry(const char* op, const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                  at::IntArrayRef padding) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == x.size(1), op, ": weight must be [O, ", x.size(1),
              ", kh, kw] for x of shape ", x.sizes(), ", got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), op, ": weight is ", weight.scalar_type(), " but x is ",
              x.scalar_type());
  TORCH_CHECK(weight.device() == x.device(), op, ": weight is on ", weight.device(), " but x is on ", x.device());
  TORCH_CHECK(stride.size() == 2 && stride[0] >= 1 && stride[1] >= 1, op, ": stride must be two ints >= 1, got ",
              stride);
  TORCH_CHECK(padding.size() == 2 && padding[0] >= 0 && padding[1] >= 0, op,
              ": padding must be two ints >= 0, got ", padding);
  Geometry g{x.size(0), x.size(1), x.size(2), x.size(3), weight.size(0), weight.size(2), weight.size(3),
             stride[0], stride[1], padding[0], padding[1], 0, 0, 0, 0, 0, 0};
  TORCH_CHECK(g.h + 2 * g.ph >= g.kh && g.w + 2 * g.pw >= g.kw, op, ": the ", g.kh, "x", g.kw,
              " kernel does not fit the padded ", g.h, "x", g.w, " map (padding ", padding, ")");
  g.oh = (g.h + 2 * g.ph - g.kh) / g.sh + 1;
  g.ow = (g.w + 2 * g.pw - g.kw) / g.sw + 1;
  std::tie(g.ky0, g.ky1) = live_taps(g.kh, g.h, g.oh, g.sh, g.ph);
  std::tie(g.kx0, g.kx1) = live_taps(g.kw, g.w, g.ow, g.sw, g.pw);
  return g;
}

// cols[(n, oy, ox), (ky, kx, c)] = x[n, c, oy*sh - ph + ky, ox*sw - pw + kx], 0 outside the map;
// x channels_last.
template <typename T>
void im2col(const T* x, T* cols, const Geometry& g) {
  const int64_t k = g.cols();
  at::parallel_for(0, g.rows(), 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t ox = r % g.ow, oy = (r / g.ow) % g.oh, n = r / (g.ow * g.oh);
      T* dst = cols + r * k;
      for (int64_t ky = g.ky0; ky < g.ky1; ++ky) {
        const int64_t iy = oy * g.sh - g.ph + ky;
        for (int64_t kx = g.kx0; kx < g.kx1; ++kx, dst += g.c) {
          const int64_t ix = ox * g.sw - g.pw + kx;
          if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) {
            std::memset(dst, 0, g.c * sizeof(T));
          } else {
            std::memcpy(dst, x + ((n * g.h + iy) * g.w + ix) * g.c, g.c * sizeof(T));
          }
        }
      }
    }
  });
}

// grad_x[n, c, iy, ix] = the sum, over the taps (ky, kx) that read (iy, ix), of
// gcols[(n, oy, ox), (ky, kx, c)]: gathered per input pixel (no two threads write one place),
// summed in the arithmetic type; grad_x channels_last.
template <typename T>
void col2im(const T* gcols, T* gx, const Geometry& g) {
  using A = acc_t<T>;
  const int64_t k = g.cols();
  at::parallel_for(0, g.n * g.h, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> acc(g.c);
    for (int64_t nr = begin; nr < end; ++nr) {
      const int64_t n = nr / g.h, iy = nr % g.h;
      for (int64_t ix = 0; ix < g.w; ++ix) {
        std::fill(acc.begin(), acc.end(), A(0));
        for (int64_t ky = g.ky0; ky < g.ky1; ++ky) {
          const int64_t ty = iy + g.ph - ky;  // = oy * sh for the output row that reads iy through ky
          if (ty < 0 || ty % g.sh != 0 || ty / g.sh >= g.oh) continue;
          const int64_t oy = ty / g.sh;
          for (int64_t kx = g.kx0; kx < g.kx1; ++kx) {
            const int64_t tx = ix + g.pw - kx;
            if (tx < 0 || tx % g.sw != 0 || tx / g.sw >= g.ow) continue;
            const int64_t ox = tx / g.sw;
            const T* src = gcols + ((n * g.oh + oy) * g.ow + ox) * k +
                           ((ky - g.ky0) * g.taps_w() + (kx - g.kx0)) * g.c;
            for (int64_t c = 0; c < g.c; ++c) acc[c] += to_acc(src[c]);
          }
        }
        T* dst = gx + ((n * g.h + iy) * g.w + ix) * g.c;
        for (int64_t c = 0; c < g.c; ++c) dst[c] = from_acc<T>(acc[c]);
      }
    }
  });
}

at::Tensor cols_of(const at::Tensor& x, const Geometry& g) {
  const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor cols = at::empty({g.rows(), g.cols()}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "conv_im2col",
                                  [&] { im2col(xc.const_data_ptr<scalar_t>(), cols.data_ptr<scalar_t>(), g); });
  return cols;
}

// The live taps of the weight as the [O, K] matrix of (ky, kx, c) columns: a view of a
// channels_last weight when no tap is left out, else a copy of the live ones.
at::Tensor weight_matrix(const at::Tensor& weight, const Geometry& g) {
  return weight.permute({0, 2, 3, 1})
      .slice(1, g.ky0, g.ky1)
      .slice(2, g.kx0, g.kx1)
      .reshape({g.o, g.cols()});
}

at::Tensor conv_im2col(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       at::IntArrayRef stride, at::IntArrayRef padding) {
  const Geometry g = geometry("conv_im2col", x, weight, stride, padding);
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == g.o, "conv_im2col: bias must be [", g.o, "], got ",
                bias->sizes());
    TORCH_CHECK(bias->scalar_type() == x.scalar_type() && bias->device() == x.device(),
                "conv_im2col: bias must have x's dtype and device");
  }
  const at::Tensor y = cpu::mm(cols_of(x, g), weight_matrix(weight, g).t(), bias);  // [M, O]
  return y.view({g.n, g.oh, g.ow, g.o}).permute({0, 3, 1, 2});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_im2col_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                                                    const at::Tensor& weight, at::IntArrayRef stride,
                                                                    at::IntArrayRef padding,
                                                                    std::array<bool, 3> output_mask) {
  const Geometry g = geometry("conv_im2col_backward", x, weight, stride, padding);
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == g.n && grad_out.size(1) == g.o && grad_out.size(2) == g.oh &&
                  grad_out.size(3) == g.ow,
              "conv_im2col_backward: grad_out must be [", g.n, ", ", g.o, ", ", g.oh, ", ", g.ow, "], got ",
              grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == x.scalar_type(), "conv_im2col_backward: grad_out is ",
              grad_out.scalar_type(), " but x is ", x.scalar_type());
  const at::Tensor gm = grad_out.permute({0, 2, 3, 1}).reshape({g.rows(), g.o});  // a view when channels_last
  at::Tensor grad_x, grad_w, grad_b;
  if (output_mask[0]) {
    const at::Tensor gcols = cpu::mm(gm, weight_matrix(weight, g)).contiguous();
    grad_x = at::empty({g.n, g.c, g.h, g.w}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "conv_im2col_backward", [&] {
      col2im(gcols.const_data_ptr<scalar_t>(), grad_x.data_ptr<scalar_t>(), g);
    });
  }
  if (output_mask[1]) {
    const at::Tensor live = cpu::mm(gm.t(), cols_of(x, g)).view({g.o, g.taps_h(), g.taps_w(), g.c});
    if (g.trimmed()) {  // the taps left out read only zeros: their gradient is 0
      at::Tensor full = at::zeros({g.o, g.kh, g.kw, g.c}, live.options());
      full.slice(1, g.ky0, g.ky1).slice(2, g.kx0, g.kx1).copy_(live);
      grad_w = full.permute({0, 3, 1, 2});
    } else {
      grad_w = live.permute({0, 3, 1, 2});
    }
  }
  if (output_mask[2]) grad_b = gm.sum(0);
  return {grad_x, grad_w, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(inception_fast, CPU, m) {
  m.impl("conv_im2col", &conv_im2col);
  m.impl("conv_im2col_backward", &conv_im2col_backward);
}

}  // namespace cpu
}  // namespace inception_fast
