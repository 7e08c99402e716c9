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

constexpr int64_t kFlush = 64;     // values per vector lane summed in float32 before moving to double
constexpr int64_t kRowFlush = 64;  // channels_last rows summed in float32 before moving to double

// ---- statistics --------------------------------------------------------------------------
// Sums of d = x - K and d^2, K a value of the same channel: shifting by a sample keeps the
// one-pass variance E[d^2] - E[d]^2 free of cancellation when |mean| >> std. Partial sums stay
// short in float32 (kFlush values per lane), the rest is accumulated in double.
// NCHW: the planes n = 0..nplanes-1 of one channel (plane_stride apart, S values each), summed
// into vector accumulators that are only reduced to double every kFlush values, so a small plane
// (8x8) costs its loads, not a horizontal reduction.
template <typename T, typename A = acc_t<T>>
IF_CPU_CLONES void planes_shifted_sums(const T* __restrict__ x, int64_t nplanes, int64_t plane_stride, int64_t S,
                                       A K, double* out_sum, double* out_sumsq) {
  using V = vec_t<A>;
  constexpr int L = vec_lanes<A>;
  double s = 0, ss = 0;
  V vs = {}, vss = {};
  A ts = 0, tss = 0;
  int64_t pending = 0;
  for (int64_t n = 0; n < nplanes; ++n) {
    const T* __restrict__ p = x + n * plane_stride;
    int64_t i = 0;
    for (; i + L <= S; i += L) {
      const V d = load_vec(p + i) - K;
      vs += d;
      vss += d * d;
    }
    for (; i < S; ++i) {
      const A d = to_acc(p[i]) - K;
      ts += d;
      tss += d * d;
    }
    pending += S;
    if (pending >= kFlush * L || n + 1 == nplanes) {
      s += hsum<A>(vs) + ts;
      ss += hsum<A>(vss) + tss;
      vs = V{}, vss = V{};
      ts = tss = 0;
      pending = 0;
    }
  }
  *out_sum = s;
  *out_sumsq = ss;
}

// channels_last: rows of C channels; per-channel float sums ps/pss over kRowFlush rows at a time.
template <typename T, typename A = acc_t<T>>
IF_CPU_CLONES void rows_shifted_sums(const T* __restrict__ x, int64_t rows, int64_t C,
                                     const A* __restrict__ K, double* __restrict__ sum,
                                     double* __restrict__ sumsq, A* __restrict__ ps,
                                     A* __restrict__ pss) {
  using V = vec_t<A>;
  constexpr int L = vec_lanes<A>;
  const int64_t Cv = C - C % L;
  for (int64_t r0 = 0; r0 < rows; r0 += kRowFlush) {
    const int64_t r1 = std::min(rows, r0 + kRowFlush);
    for (int64_t c = 0; c < C; ++c) ps[c] = pss[c] = A(0);
    for (int64_t r = r0; r < r1; ++r) {
      const T* __restrict__ row = x + r * C;
      int64_t c = 0;
      for (; c < Cv; c += L) {
        const V d = load_vec(row + c) - load_acc(K + c);
        store_acc(ps + c, load_acc(ps + c) + d);
        store_acc(pss + c, load_acc(pss + c) + d * d);
      }
      for (; c < C; ++c) {
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
                              const A* __restrict__ m, const A* __restrict__ a, const A* __restrict__ b) {
  constexpr int L = vec_lanes<A>;
  const int64_t Cv = C - C % L;
  for (int64_t r = 0; r < rows; ++r) {
    const T* __restrict__ xr = x + r * C;
    T* __restrict__ yr = y + r * C;
    int64_t c = 0;
    for (; c < Cv; c += L)
      store_vec(yr + c, relu_vec<A>((load_vec(xr + c) - load_acc(m + c)) * load_acc(a + c) + load_acc(b + c)));
    for (; c < C; ++c) yr[c] = from_acc<T>(relu(preact(to_acc(xr[c]), m[c], a[c], b[c])));
  }
}

// ---- backward --------------------------------------------------------------------------------
template <typename T, typename A = acc_t<T>>
IF_CPU_CLONES void planes_backward_sums(const T* __restrict__ g, const T* __restrict__ x, int64_t nplanes,
                                        int64_t plane_stride, int64_t S, A m, A a, A b, double* out_dz,
                                        double* out_dz_xmu) {
  using V = vec_t<A>;
  constexpr int L = vec_lanes<A>;
  double s1 = 0, s2 = 0;
  V v1 = {}, v2 = {};
  A t1 = 0, t2 = 0;
  int64_t pending = 0;
  for (int64_t n = 0; n < nplanes; ++n) {
    const T* __restrict__ xp = x + n * plane_stride;
    const T* __restrict__ gp = g + n * plane_stride;
    int64_t i = 0;
    for (; i + L <= S; i += L) {
      const V xm = load_vec(xp + i) - m;
      const V dz = (xm * a + b > A(0)) ? load_vec(gp + i) : V{};
      v1 += dz;
      v2 += dz * xm;
    }
    for (; i < S; ++i) {
      const A xv = to_acc(xp[i]), gv = to_acc(gp[i]);
      const A dz = preact(xv, m, a, b) > A(0) ? gv : A(0);
      t1 += dz;
      t2 += dz * (xv - m);
    }
    pending += S;
    if (pending >= kFlush * L || n + 1 == nplanes) {
      s1 += hsum<A>(v1) + t1;
      s2 += hsum<A>(v2) + t2;
      v1 = V{}, v2 = V{};
      t1 = t2 = 0;
      pending = 0;
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
  using V = vec_t<A>;
  constexpr int L = vec_lanes<A>;
  const int64_t Cv = C - C % L;
  for (int64_t r0 = 0; r0 < rows; r0 += kRowFlush) {
    const int64_t r1 = std::min(rows, r0 + kRowFlush);
    for (int64_t c = 0; c < C; ++c) p1[c] = p2[c] = A(0);
    for (int64_t r = r0; r < r1; ++r) {
      const T* __restrict__ xr = x + r * C;
      const T* __restrict__ gr = g + r * C;
      int64_t c = 0;
      for (; c < Cv; c += L) {
        const V xm = load_vec(xr + c) - load_acc(m + c);
        const V dz = (xm * load_acc(a + c) + load_acc(b + c) > A(0)) ? load_vec(gr + c) : V{};
        store_acc(p1 + c, load_acc(p1 + c) + dz);
        store_acc(p2 + c, load_acc(p2 + c) + dz * xm);
      }
      for (; c < C; ++c) {
        const A xv = to_acc(xr[c]), gv = to_acc(gr[c]);
        const A dz = preact(xv, m[c], a[c], b[c]) > A(0) ? gv : A(0);
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
    const A xv = to_acc(x[i]), gv = to_acc(g[i]);
    const A dz = preact(xv, m, a, b) > A(0) ? gv : A(0);
    dx[i] = from_acc<T>(a * dz + k * (xv - m) + d);
  }
}

template <typename T, typename A = acc_t<T>>
IF_CPU_CLONES void rows_backward_elemt(const T* __restrict__ g, const T* __restrict__ x, T* __restrict__ dx,
                                       int64_t rows, int64_t C, const A* __restrict__ m,
                                       const A* __restrict__ a, const A* __restrict__ b,
                                       const A* __restrict__ k, const A* __restrict__ d) {
  using V = vec_t<A>;
  constexpr int L = vec_lanes<A>;
  const int64_t Cv = C - C % L;
  for (int64_t r = 0; r < rows; ++r) {
    const T* __restrict__ xr = x + r * C;
    const T* __restrict__ gr = g + r * C;
    T* __restrict__ dr = dx + r * C;
    int64_t c = 0;
    for (; c < Cv; c += L) {
      const V xm = load_vec(xr + c) - load_acc(m + c);
      const V av = load_acc(a + c);
      const V dz = (xm * av + load_acc(b + c) > A(0)) ? load_vec(gr + c) : V{};
      store_vec(dr + c, av * dz + load_acc(k + c) * xm + load_acc(d + c));
    }
    for (; c < C; ++c) {
      const A xv = to_acc(xr[c]), gv = to_acc(gr[c]);
      const A dz = preact(xv, m[c], a[c], b[c]) > A(0) ? gv : A(0);
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

// Per-channel sums of a reduction that yields two values, accumulated in double. NCHW: tasks are
// (channel, range of n), `planes(c, n0, n1, &s1, &s2)` reduces planes n0..n1-1 of channel c;
// channels_last: row chunks, `rows(r0, r1, s1, s2)` adds rows [r0, r1) into the [C] arrays s1, s2.
template <typename PlanesFn, typename RowsFn>
void reduce_two(const Layout& l, std::vector<double>& s1, std::vector<double>& s2, const PlanesFn& planes,
                const RowsFn& rows_fn) {
  s1.assign(l.C, 0.0);
  s2.assign(l.C, 0.0);
  if (!l.channels_last) {
    // Split the batch only as far as needed to give every thread a few tasks.
    const int64_t want = 4 * static_cast<int64_t>(at::get_num_threads());
    const int64_t nsplit = std::min<int64_t>(l.N, std::max<int64_t>(1, (want + l.C - 1) / l.C));
    const int64_t per = (l.N + nsplit - 1) / nsplit;
    const int64_t tasks = l.C * nsplit;
    std::vector<double> q1(tasks, 0.0), q2(tasks, 0.0);
    at::parallel_for(0, tasks, std::max<int64_t>(1, kGrainElems / std::max<int64_t>(per * l.S, 1)),
                     [&](int64_t t0, int64_t t1) {
                       for (int64_t t = t0; t < t1; ++t) {
                         const int64_t c = t % l.C, n0 = (t / l.C) * per, n1 = std::min(l.N, n0 + per);
                         if (n0 < n1) planes(c, n0, n1, &q1[t], &q2[t]);
                       }
                     });
    for (int64_t t = 0; t < tasks; ++t) {
      s1[t % l.C] += q1[t];
      s2[t % l.C] += q2[t];
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
        [&](int64_t c, int64_t n0, int64_t n1, double* s1, double* s2) {
          planes_shifted_sums(xp + (n0 * l.C + c) * l.S, n1 - n0, l.C * l.S, l.S, K[c], s1, s2);
        },
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

// bn_stats, then the per-channel arithmetic of a training step in one loop over the channels instead of
// five ATen calls (add, rsqrt, mul, two lerps: ~25 us of dispatch per layer on the small maps of an
// Inception block, against ~1 us of arithmetic). The same formulas as ATen's: invstd = 1 / sqrt(var +
// eps), running += momentum * (batch - running) as lerp_ computes it for momentum < 0.5.
std::tuple<at::Tensor, at::Tensor> bn_stats_train(const at::Tensor& x, const c10::optional<at::Tensor>& running_mean,
                                                  const c10::optional<at::Tensor>& running_var, double momentum,
                                                  double eps) {
  TORCH_CHECK(running_mean.has_value() == running_var.has_value(),
              "inception_fast::bn_stats_train: running_mean and running_var must both be given or both be None");
  auto [mean, var] = bn_stats(x);
  const int64_t C = mean.size(0);
  const int64_t count = C == 0 ? 0 : x.numel() / C;
  if (running_mean.has_value()) {
    for (const at::Tensor* r : {&*running_mean, &*running_var}) {
      TORCH_CHECK(r->dim() == 1 && r->size(0) == C && r->device() == x.device() && r->is_floating_point(),
                  "inception_fast::bn_stats_train: running statistics must be floating-point [", C,
                  "] tensors on x's device, got ", r->sizes(), " ", r->scalar_type(), " on ", r->device());
    }
  }
  at::Tensor invstd = at::empty_like(mean);
  AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "bn_stats_train", [&] {
    const scalar_t* mp = mean.const_data_ptr<scalar_t>();
    const scalar_t* vp = var.const_data_ptr<scalar_t>();
    scalar_t* ip = invstd.data_ptr<scalar_t>();
    for (int64_t c = 0; c < C; ++c) ip[c] = scalar_t(1) / std::sqrt(vp[c] + static_cast<scalar_t>(eps));
    if (!running_mean.has_value()) return;
    const bool plain = running_mean->scalar_type() == mean.scalar_type() &&
                       running_var->scalar_type() == mean.scalar_type() && running_mean->is_contiguous() &&
                       running_var->is_contiguous() && momentum < 0.5;
    const scalar_t unbias = count > 1 ? static_cast<scalar_t>(static_cast<double>(count) / (count - 1)) : scalar_t(1);
    if (!plain) {  // other dtypes or strides: ATen's ops
      at::NoGradGuard no_grad;
      running_mean->lerp_(mean.to(running_mean->scalar_type()), momentum);
      running_var->lerp_(var.mul(unbias).to(running_var->scalar_type()), momentum);
      return;
    }
    scalar_t* rm = running_mean->data_ptr<scalar_t>();
    scalar_t* rv = running_var->data_ptr<scalar_t>();
    const scalar_t m = static_cast<scalar_t>(momentum);
    for (int64_t c = 0; c < C; ++c) {
      rm[c] = rm[c] + m * (mp[c] - rm[c]);
      rv[c] = rv[c] + m * (vp[c] * unbias - rv[c]);
    }
  });
  return {mean, invstd};
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
        [&](int64_t c, int64_t n0, int64_t n1, double* d1, double* d2) {
          const int64_t off = (n0 * l.C + c) * l.S;
          planes_backward_sums(gp + off, xp + off, n1 - n0, l.C * l.S, l.S, p.m[c], p.a[c], p.b[c], d1, d2);
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
  m.impl("bn_stats_train", &bn_stats_train);
  m.impl("bn_relu_apply", &bn_relu_apply);
  m.impl("bn_relu_backward_reduce", &bn_relu_backward_reduce);
  m.impl("bn_relu_backward_elemt", &bn_relu_backward_elemt);
}

}  // namespace cpu
}  // namespace inception_fast
