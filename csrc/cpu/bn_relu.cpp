// CPU kernels of bn_stats, bn_relu_apply, bn_relu_backward_reduce and bn_relu_backward_elemt.
//
// The four passes of a training step: stats (read x), apply (read x, write y), backward reduce
// (read dy, x) and backward elementwise (read dy, x, write dx) -- 8 tensor passes where
// batch_norm + relu and their backwards take 13. Every loop is written once per layout, never
// through a layout copy: NCHW walks each (n, c) plane of H*W contiguous values, channels_last
// walks rows of C contiguous channels.
#include "common.h"

#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

namespace inception_fast {
namespace cpu {
namespace {

constexpr int kLanes = 16;         // float32 accumulators per plane (one AVX-512 vector)
constexpr int64_t kFlush = 1024;   // values summed in float32 before moving to double
constexpr int64_t kRowFlush = 64;  // channels_last rows summed in float32 before moving to double

// ---- statistics --------------------------------------------------------------------------
// Sums of d = x - K and d^2, K a value of the same channel: shifting by a sample keeps the
// one-pass variance E[d^2] - E[d]^2 free of cancellation when |mean| >> std. Partial sums stay
// short in float32 (kFlush values per lane), the rest is accumulated in double.
template <typename T, typename A = acc_t<T>>
IF_CPU_CLONES void plane_shifted_sums(const T* __restrict__ x, int64_t S, A K, double* out_sum,
                                      double* out_sumsq) {
  double s = 0, ss = 0;
  for (int64_t b0 = 0; b0 < S; b0 += kFlush) {
    const int64_t b1 = std::min(S, b0 + kFlush);
    A ps[kLanes] = {0}, pss[kLanes] = {0};
    int64_t i = b0;
    for (; i + kLanes <= b1; i += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        const A d = to_acc(x[i + l]) - K;
        ps[l] += d;
        pss[l] += d * d;
      }
    }
    for (; i < b1; ++i) {
      const A d = to_acc(x[i]) - K;
      ps[0] += d;
      pss[0] += d * d;
    }
    for (int l = 0; l < kLanes; ++l) {
      s += ps[l];
      ss += pss[l];
    }
  }
  *out_sum = s;
  *out_sumsq = ss;
}

template <typename T, typename A = acc_t<T>>
IF_CPU_CLONES void rows_shifted_sums(const T* __restrict__ x, int64_t rows, int64_t C,
                                     const A* __restrict__ K, double* __restrict__ sum,
                                     double* __restrict__ sumsq, A* __restrict__ ps,
                                     A* __restrict__ pss) {
  for (int64_t r0 = 0; r0 < rows; r0 += kRowFlush) {
    const int64_t r1 = std::min(rows, r0 + kRowFlush);
    for (int64_t c = 0; c < C; ++c) ps[c] = pss[c] = A(0);
    for (int64_t r = r0; r < r1; ++r) {
      const T* __restrict__ row = x + r * C;
      for (int64_t c = 0; c < C; ++c) {
        const A d = to_acc(row[c]) - K[c];
        ps[c] += d;
        pss[c] += d * d;
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      sum[c] += ps[c];
      sumsq[c] += pss[c];
    }
  }
}

// ---- the pre-activation, identical in the forward and both backward passes -------------------
// z = (x - mean) * scale + bias, scale = weight * invstd. Subtracting the mean first keeps z
// accurate when |mean| >> std; the backward recomputes z with this very expression so the
// ReLU mask it derives is the forward's.
template <typename A>
IF_INLINE A preact(A x, A m, A a, A b) {
  return (x - m) * a + b;
}

template <typename T, typename A = acc_t<T>>
IF_CPU_CLONES void plane_apply(const T* __restrict__ x, T* __restrict__ y, int64_t S, A m, A a,
                               A b) {
  for (int64_t i = 0; i < S; ++i) y[i] = from_acc<T>(relu(preact(to_acc(x[i]), m, a, b)));
}

template <typename T, typename A = acc_t<T>>
IF_CPU_CLONES void rows_apply(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int64_t C,
                              const A* __restrict__ m, const A* __restrict__ a,
                              const A* __restrict__ b) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* __restrict__ xr = x + r * C;
    T* __restrict__ yr = y + r * C;
    for (int64_t c = 0; c < C; ++c) yr[c] = from_acc<T>(relu(preact(to_acc(xr[c]), m[c], a[c], b[c])));
  }
}

// ---- backward --------------------------------------------------------------------------------
template <typename T, typename A = acc_t<T>>
IF_CPU_CLONES void plane_backward_sums(const T* __restrict__ g, const T* __restrict__ x, int64_t S, A m,
                                       A a, A b, double* out_dz, double* out_dz_xmu) {
  double s1 = 0, s2 = 0;
  for (int64_t b0 = 0; b0 < S; b0 += kFlush) {
    const int64_t b1 = std::min(S, b0 + kFlush);
    A p1[kLanes] = {0}, p2[kLanes] = {0};
    int64_t i = b0;
    for (; i + kLanes <= b1; i += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        const A xv = to_acc(x[i + l]);
        const A dz = preact(xv, m, a, b) > A(0) ? to_acc(g[i + l]) : A(0);
        p1[l] += dz;
        p2[l] += dz * (xv - m);
      }
    }
    for (; i < b1; ++i) {
      const A xv = to_acc(x[i]);
      const A dz = preact(xv, m, a, b) > A(0) ? to_acc(g[i]) : A(0);
      p1[0] += dz;
      p2[0] += dz * (xv - m);
    }
    for (int l = 0; l < kLanes; ++l) {
      s1 += p1[l];
      s2 += p2[l];
    }
  }
  *out_dz = s1;
  *out_dz_xmu = s2;
}

template <typename T, typename A = acc_t<T>>
IF_CPU_CLONES void rows_backward_sums(const T* __restrict__ g, const T* __restrict__ x, int64_t rows,
                                      int64_t C, const A* __restrict__ m, const A* __restrict__ a,
                                      const A* __restrict__ b, double* __restrict__ s1,
                                      double* __restrict__ s2, A* __restrict__ p1,
                                      A* __restrict__ p2) {
  for (int64_t r0 = 0; r0 < rows; r0 += kRowFlush) {
    const int64_t r1 = std::min(rows, r0 + kRowFlush);
    for (int64_t c = 0; c < C; ++c) p1[c] = p2[c] = A(0);
    for (int64_t r = r0; r < r1; ++r) {
      const T* __restrict__ xr = x + r * C;
      const T* __restrict__ gr = g + r * C;
      for (int64_t c = 0; c < C; ++c) {
        const A xv = to_acc(xr[c]);
        const A dz = preact(xv, m[c], a[c], b[c]) > A(0) ? to_acc(gr[c]) : A(0);
        p1[c] += dz;
        p2[c] += dz * (xv - m[c]);
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      s1[c] += p1[c];
      s2[c] += p2[c];
    }
  }
}

// dx = a * dz + k * (x - m) + d, with a = weight * invstd and, in training,
// k = -a * invstd^2 * sum_dz_xmu / count and d = -a * sum_dz / count (both 0 in eval).
template <typename T, typename A = acc_t<T>>
IF_CPU_CLONES void plane_backward_elemt(const T* __restrict__ g, const T* __restrict__ x, T* __restrict__ dx,
                                        int64_t S, A m, A a, A b, A k, A d) {
  for (int64_t i = 0; i < S; ++i) {
    const A xv = to_acc(x[i]);
    const A dz = preact(xv, m, a, b) > A(0) ? to_acc(g[i]) : A(0);
    dx[i] = from_acc<T>(a * dz + k * (xv - m) + d);
  }
}

template <typename T, typename A = acc_t<T>>
IF_CPU_CLONES void rows_backward_elemt(const T* __restrict__ g, const T* __restrict__ x, T* __restrict__ dx,
                                       int64_t rows, int64_t C, const A* __restrict__ m,
                                       const A* __restrict__ a, const A* __restrict__ b,
                                       const A* __restrict__ k, const A* __restrict__ d) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* __restrict__ xr = x + r * C;
    const T* __restrict__ gr = g + r * C;
    T* __restrict__ dr = dx + r * C;
    for (int64_t c = 0; c < C; ++c) {
      const A xv = to_acc(xr[c]);
      const A dz = preact(xv, m[c], a[c], b[c]) > A(0) ? to_acc(gr[c]) : A(0);
      dr[c] = from_acc<T>(a[c] * dz + k[c] * (xv - m[c]) + d[c]);
    }
  }
}

// ---- scheduling ------------------------------------------------------------------------------
// Grain sizes in elements: below ~32K values a second thread costs more than it saves.
constexpr int64_t kGrainElems = 32768;

inline int64_t plane_grain(int64_t S) { return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(S, 1)); }
inline int64_t row_grain(int64_t C) { return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(C, 1)); }

// Row chunks for the channels_last reductions: one per thread (each keeps [C] accumulators).
inline int64_t num_row_chunks(int64_t rows, int64_t C) {
  const int64_t by_work = std::max<int64_t>(1, rows * C / kGrainElems);
  return std::max<int64_t>(1, std::min<int64_t>({(int64_t)at::get_num_threads(), by_work, rows}));
}

// Per-channel vectors as they go into the loops, in the arithmetic type A.
template <typename A>
struct ChannelParams {
  std::vector<A> m, a, b;  // mean, weight * invstd, bias
};

template <typename A>
ChannelParams<A> channel_params(int64_t C, const c10::optional<at::Tensor>& weight,
                                const c10::optional<at::Tensor>& bias, const at::Tensor& mean,
                                const at::Tensor& invstd) {
  ChannelParams<A> p{std::vector<A>(C), std::vector<A>(C), std::vector<A>(C)};
  const A* mp = mean.data_ptr<A>();
  const A* ip = invstd.data_ptr<A>();
  const A* wp = weight.has_value() ? weight->data_ptr<A>() : nullptr;
  const A* bp = bias.has_value() ? bias->data_ptr<A>() : nullptr;
  for (int64_t c = 0; c < C; ++c) {
    p.m[c] = mp[c];
    p.a[c] = (wp ? wp[c] : A(1)) * ip[c];
    p.b[c] = bp ? bp[c] : A(0);
  }
  return p;
}

Layout check_x(const char* op, const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu(), op, ": x must be a CPU tensor for this kernel, got ", x.device());
  check_float_dtype(x, op, "x");
  return layout_of(x, op);
}

Layout check_bn_inputs(const char* op, const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                       const c10::optional<at::Tensor>& bias, const at::Tensor& mean, const at::Tensor& invstd) {
  const Layout l = check_x(op, x);
  check_channel_vec(weight, x, l.C, op, "weight");
  check_channel_vec(bias, x, l.C, op, "bias");
  check_channel_vec(mean, x, l.C, op, "mean");
  check_channel_vec(invstd, x, l.C, op, "invstd");
  return l;
}

// Sums over the (n, c) planes (NCHW) or over row chunks (channels_last) of a reduction that
// yields two per-channel values, accumulated in double. `plane(q, &s1, &s2)` reduces plane q;
// `rows(r0, r1, s1, s2)` adds rows [r0, r1) into the [C] arrays s1, s2.
template <typename PlaneFn, typename RowsFn>
void reduce_two(const Layout& l, std::vector<double>& s1, std::vector<double>& s2, const PlaneFn& plane,
                const RowsFn& rows_fn) {
  s1.assign(l.C, 0.0);
  s2.assign(l.C, 0.0);
  if (!l.channels_last) {
    std::vector<double> q1(l.N * l.C), q2(l.N * l.C);
    at::parallel_for(0, l.N * l.C, plane_grain(l.S), [&](int64_t p0, int64_t p1) {
      for (int64_t q = p0; q < p1; ++q) plane(q, &q1[q], &q2[q]);
    });
    for (int64_t q = 0; q < l.N * l.C; ++q) {
      s1[q % l.C] += q1[q];
      s2[q % l.C] += q2[q];
    }
  } else {
    const int64_t rows = l.N * l.S, chunks = num_row_chunks(rows, l.C);
    const int64_t per = (rows + chunks - 1) / chunks;
    std::vector<double> q1(chunks * l.C, 0.0), q2(chunks * l.C, 0.0);
    at::parallel_for(0, chunks, 1, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t r0 = k * per, r1 = std::min(rows, r0 + per);
        if (r0 < r1) rows_fn(r0, r1, &q1[k * l.C], &q2[k * l.C]);
      }
    });
    for (int64_t q = 0; q < chunks * l.C; ++q) {
      s1[q % l.C] += q1[q];
      s2[q % l.C] += q2[q];
    }
  }
}

// An elementwise pass: `plane(q)` does plane q (NCHW), `rows(r0, r1)` rows [r0, r1) (channels_last).
template <typename PlaneFn, typename RowsFn>
void elementwise(const Layout& l, const PlaneFn& plane, const RowsFn& rows_fn) {
  if (!l.channels_last) {
    at::parallel_for(0, l.N * l.C, plane_grain(l.S), [&](int64_t p0, int64_t p1) {
      for (int64_t q = p0; q < p1; ++q) plane(q);
    });
  } else {
    at::parallel_for(0, l.N * l.S, row_grain(l.C), rows_fn);
  }
}

// ---- the ops ---------------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor> bn_stats(const at::Tensor& x) {
  const Layout l = check_x("inception_fast::bn_stats", x);
  const int64_t count = l.N * l.S;
  auto sopts = x.options().dtype(acc_dtype(x.scalar_type()));
  at::Tensor mean = at::empty({l.C}, sopts), var = at::empty({l.C}, sopts);
  if (count == 0) {
    mean.fill_(std::numeric_limits<double>::quiet_NaN());
    var.fill_(std::numeric_limits<double>::quiet_NaN());
    return {mean, var};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_stats", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    std::vector<A> K(l.C);  // the first value of each channel
    for (int64_t c = 0; c < l.C; ++c) K[c] = to_acc(xp[l.channels_last ? c : c * l.S]);
    std::vector<double> sum, sumsq;
    reduce_two(
        l, sum, sumsq,
        [&](int64_t q, double* s1, double* s2) { plane_shifted_sums(xp + q * l.S, l.S, K[q % l.C], s1, s2); },
        [&](int64_t r0, int64_t r1, double* s1, double* s2) {
          std::vector<A> t1(l.C), t2(l.C);
          rows_shifted_sums(xp + r0 * l.C, r1 - r0, l.C, K.data(), s1, s2, t1.data(), t2.data());
        });
    A* mp = mean.data_ptr<A>();
    A* vp = var.data_ptr<A>();
    for (int64_t c = 0; c < l.C; ++c) {
      const double md = sum[c] / count;  // mean of x - K
      mp[c] = static_cast<A>(K[c] + md);
      const double v = sumsq[c] / count - md * md;
      vp[c] = static_cast<A>(v > 0 ? v : (v == v ? 0.0 : v));  // clamp rounding below 0, keep NaN
    }
  });
  return {mean, var};
}

at::Tensor bn_relu_apply(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                         const c10::optional<at::Tensor>& bias, const at::Tensor& mean, const at::Tensor& invstd,
                         bool /*training: only the autograd formula depends on it*/) {
  const Layout l = check_bn_inputs("inception_fast::bn_relu_apply", x, weight, bias, mean, invstd);
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_relu_apply", [&] {
    using A = acc_t<scalar_t>;
    const ChannelParams<A> p = channel_params<A>(l.C, weight, bias, mean, invstd);
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    elementwise(
        l,
        [&](int64_t q) {
          const int64_t c = q % l.C;
          plane_apply(xp + q * l.S, yp + q * l.S, l.S, p.m[c], p.a[c], p.b[c]);
        },
        [&](int64_t r0, int64_t r1) {
          rows_apply(xp + r0 * l.C, yp + r0 * l.C, r1 - r0, l.C, p.m.data(), p.a.data(), p.b.data());
        });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> bn_relu_backward_reduce(const at::Tensor& grad_out, const at::Tensor& x,
                                                           const c10::optional<at::Tensor>& weight,
                                                           const c10::optional<at::Tensor>& bias,
                                                           const at::Tensor& mean, const at::Tensor& invstd) {
  const char* op = "inception_fast::bn_relu_backward_reduce";
  const Layout l = check_bn_inputs(op, x, weight, bias, mean, invstd);
  check_same(grad_out, x, op, "grad_out");
  auto sopts = x.options().dtype(acc_dtype(x.scalar_type()));
  at::Tensor sum_dz = at::zeros({l.C}, sopts), sum_dz_xmu = at::zeros({l.C}, sopts);
  if (x.numel() == 0) return {sum_dz, sum_dz_xmu};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_relu_backward_reduce", [&] {
    using A = acc_t<scalar_t>;
    const ChannelParams<A> p = channel_params<A>(l.C, weight, bias, mean, invstd);
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = grad_out.data_ptr<scalar_t>();
    std::vector<double> s1, s2;
    reduce_two(
        l, s1, s2,
        [&](int64_t q, double* d1, double* d2) {
          const int64_t c = q % l.C;
          plane_backward_sums(gp + q * l.S, xp + q * l.S, l.S, p.m[c], p.a[c], p.b[c], d1, d2);
        },
        [&](int64_t r0, int64_t r1, double* d1, double* d2) {
          std::vector<A> t1(l.C), t2(l.C);
          rows_backward_sums(gp + r0 * l.C, xp + r0 * l.C, r1 - r0, l.C, p.m.data(), p.a.data(), p.b.data(), d1,
                             d2, t1.data(), t2.data());
        });
    A* o1 = sum_dz.data_ptr<A>();
    A* o2 = sum_dz_xmu.data_ptr<A>();
    for (int64_t c = 0; c < l.C; ++c) {
      o1[c] = static_cast<A>(s1[c]);
      o2[c] = static_cast<A>(s2[c]);
    }
  });
  return {sum_dz, sum_dz_xmu};
}

at::Tensor bn_relu_backward_elemt(const at::Tensor& grad_out, const at::Tensor& x,
                                  const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                                  const at::Tensor& mean, const at::Tensor& invstd,
                                  const c10::optional<at::Tensor>& sum_dz,
                                  const c10::optional<at::Tensor>& sum_dz_xmu, int64_t count) {
  const char* op = "inception_fast::bn_relu_backward_elemt";
  const Layout l = check_bn_inputs(op, x, weight, bias, mean, invstd);
  check_same(grad_out, x, op, "grad_out");
  TORCH_CHECK(sum_dz.has_value() == sum_dz_xmu.has_value(), op,
              ": sum_dz and sum_dz_xmu must be given together (training) or both be None (eval)");
  check_channel_vec(sum_dz, x, l.C, op, "sum_dz");
  check_channel_vec(sum_dz_xmu, x, l.C, op, "sum_dz_xmu");
  const bool training = sum_dz.has_value();
  TORCH_CHECK(!training || count > 0, op, ": count must be positive in training, got ", count);
  at::Tensor dx = at::empty_like(x);
  if (x.numel() == 0) return dx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_relu_backward_elemt", [&] {
    using A = acc_t<scalar_t>;
    const ChannelParams<A> p = channel_params<A>(l.C, weight, bias, mean, invstd);
    std::vector<A> k(l.C, A(0)), d(l.C, A(0));
    if (training) {
      const A* ip = invstd.data_ptr<A>();
      const A* s1 = sum_dz->data_ptr<A>();
      const A* s2 = sum_dz_xmu->data_ptr<A>();
      for (int64_t c = 0; c < l.C; ++c) {
        k[c] = static_cast<A>(-(double)p.a[c] * ip[c] * ip[c] * s2[c] / count);
        d[c] = static_cast<A>(-(double)p.a[c] * s1[c] / count);
      }
    }
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = grad_out.data_ptr<scalar_t>();
    scalar_t* dp = dx.data_ptr<scalar_t>();
    elementwise(
        l,
        [&](int64_t q) {
          const int64_t c = q % l.C;
          plane_backward_elemt(gp + q * l.S, xp + q * l.S, dp + q * l.S, l.S, p.m[c], p.a[c], p.b[c], k[c], d[c]);
        },
        [&](int64_t r0, int64_t r1) {
          rows_backward_elemt(gp + r0 * l.C, xp + r0 * l.C, dp + r0 * l.C, r1 - r0, l.C, p.m.data(), p.a.data(),
                              p.b.data(), k.data(), d.data());
        });
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(inception_fast, CPU, m) {
  m.impl("bn_stats", &bn_stats);
  m.impl("bn_relu_apply", &bn_relu_apply);
  m.impl("bn_relu_backward_reduce", &bn_relu_backward_reduce);
  m.impl("bn_relu_backward_elemt", &bn_relu_backward_elemt);
}

}  // namespace cpu
}  // namespace inception_fast
