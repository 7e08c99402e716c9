// max_pool and max_pool_backward on the CPU: 2-D max pooling (no dilation) without the index
// tensor, in channels_last or NCHW.
//
// Why: ATen's CPU max_pool2d always computes the argmax indices (int64, twice the bytes of a float
// output) and scans the window a channel at a time; on the maps of GoogLeNet (each Inception
// block's 3x3/1 pool branch, the stem's 3x3/2 pools) it ran at 1/10 to 1/20 of the memory
// bandwidth and took 13% of optimize(googlenet)'s time (2-core Zen 4, batch 8). Here the taps
// are vectors of 16 or 32 channels (channels_last; pooled separably, rows then columns, below) or
// runs of output columns (NCHW), and the backward recomputes the argmax from x instead of keeping
// indices.
//
// Semantics are ATen's: the output size (ceil_mode: the last window must start inside the input or
// its left padding), padding never wins (it is skipped, not -inf), NaN propagates, the values are
// ATen's (only the sign of a zero maximum held as both -0 and +0 can differ, see below), and the
// gradient goes to the position ATen's index would name: scanning the window row by row, an
// element replaces the running maximum when it is greater or NaN (so the first of tied maxima).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <limits>
#include <vector>

#include "cpu/common.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__CUDACC__)
#include <immintrin.h>
#endif

namespace inception_fast {
namespace cpu {
namespace {

struct Pool {
  int64_t n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow;
};

int64_t pooled_size(int64_t in, int64_t k, int64_t s, int64_t p, bool ceil_mode) {
  const int64_t span = in + 2 * p - k + (ceil_mode ? s - 1 : 0);
  int64_t out = (span >= 0 ? span / s : -((-span + s - 1) / s)) + 1;  // floor division, as ATen's
  if (ceil_mode && (out - 1) * s >= in + p) --out;  // the last window starts in the right padding
  return out;
}

Pool geometry(const char* op, const at::Tensor& x, at::IntArrayRef kernel, at::IntArrayRef stride,
              at::IntArrayRef padding, bool ceil_mode) {
  TORCH_CHECK(x.device().is_cpu(), op, ": x must be a CPU tensor for this kernel, got ", x.device());
  check_float_dtype(x, op, "x");
  layout_of(x, op);
  TORCH_CHECK(kernel.size() == 2 && stride.size() == 2 && padding.size() == 2, op,
              ": kernel_size, stride and padding must have two values each");
  TORCH_CHECK(kernel[0] > 0 && kernel[1] > 0, op, ": kernel_size must be positive, got ", kernel);
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0, op, ": stride must be positive, got ", stride);
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0 && padding[0] <= kernel[0] / 2 && padding[1] <= kernel[1] / 2, op,
              ": padding must be between 0 and half the kernel size, got padding ", padding, " for kernel ", kernel);
  Pool g{x.size(0), x.size(1), x.size(2), x.size(3), kernel[0], kernel[1], stride[0], stride[1], padding[0],
         padding[1], 0, 0};
  g.oh = pooled_size(g.h, g.kh, g.sh, g.ph, ceil_mode);
  g.ow = pooled_size(g.w, g.kw, g.sw, g.pw, ceil_mode);
  TORCH_CHECK(g.oh >= 1 && g.ow >= 1, op, ": a ", kernel, " window with padding ", padding,
              " does not fit an input of size ", g.h, "x", g.w);
  return g;
}

// The window of output index o: input [lo, hi), clipped to the map (padding is skipped).
IF_INLINE void window(int64_t o, int64_t s, int64_t p, int64_t k, int64_t size, int64_t& lo, int64_t& hi) {
  const int64_t start = o * s - p;
  lo = std::max<int64_t>(start, 0);
  hi = std::min<int64_t>(start + k, size);
}

template <typename A>
IF_INLINE A neg_inf() {
  return -std::numeric_limits<A>::infinity();
}

typedef int32_t mask_t __attribute__((vector_size(64)));  // a vec_t<float> comparison

// The running-maximum rule of ATen's kernels: v replaces m when v > m or v is NaN.
template <typename A>
IF_INLINE bool takes(A v, A m) {
  return v > m || v != v;
}

// ---- channels_last: rows of C channels; a window's taps are whole rows of vectors of channels ----
//
// Separable (16-bit types, and float32 at horizontal stride 1): for an output row, first the maximum
// over the window's rows for every input column the row's windows read (the column maxima, kept
// per block of channels in a small buffer), then each output's maximum over its window's columns:
// kh + kw - 2 comparisons an output instead of kh * kw - 1 (a 3x3/1 pool: 4 instead of 8). NaN is
// tracked beside the maximum and gives the quiet NaN. Ties keep the first value met, so where a
// window's maximum is a zero held with both signs (-0 and +0), the sign can differ from ATen's
// row-by-row scan; the value never does.

// The input columns [lo, hi) that some window of the row reads.
IF_INLINE void row_columns(const Pool& g, int64_t& lo, int64_t& hi) {
  int64_t unused;
  window(0, g.sw, g.pw, g.kw, g.w, lo, unused);
  window(g.ow - 1, g.sw, g.pw, g.kw, g.w, unused, hi);
}

// Scalar channels (the tail after the vectors, and float64): the window scanned row by row.
template <typename T>
IF_INLINE void forward_cl_scalar(const T* __restrict__ x, T* __restrict__ y, const Pool& g, int64_t ih0, int64_t ih1,
                                 int64_t c0) {
  using A = acc_t<T>;
  for (int64_t o = 0; o < g.ow; ++o) {
    int64_t iw0, iw1;
    window(o, g.sw, g.pw, g.kw, g.w, iw0, iw1);
    for (int64_t c = c0; c < g.c; ++c) {
      A m = neg_inf<A>();
      for (int64_t ih = ih0; ih < ih1; ++ih)
        for (int64_t iw = iw0; iw < iw1; ++iw) {
          const A v = to_acc(x[(ih * g.w + iw) * g.c + c]);
          if (takes(v, m)) m = v;
        }
      y[o * g.c + c] = from_acc<T>(m);
    }
  }
}

// The element kinds of the vector paths: a vector V of L channels and its NaN mask M; take() folds
// one tap into a running maximum (ties keep the first value), store() writes the result.
struct F32Taps {  // float32, 16 channels a vector
  using T = float;
  using V = vec_t<float>;
  using M = mask_t;
  static constexpr int64_t L = 16;
  static IF_INLINE V lowest() { return V{} + neg_inf<float>(); }
  static IF_INLINE void fold(V v, M v_nan, V& m, M& nan) {
    m = v > m ? v : m;
    nan |= v_nan;
  }
  static IF_INLINE void take(const float* p, V& m, M& nan) {
    const V v = load_vec(p);
    fold(v, v != v, m, nan);
  }
  static IF_INLINE void store(float* p, V m, M nan) {
    store_vec(p, nan ? V{} + std::numeric_limits<float>::quiet_NaN() : m);
  }
};

// float16 / bfloat16: the maximum taken on the bits, 32 channels a vector (16 in the half-width
// form, for a block of 16 channels after the whole vectors), with no conversion to float. Both are
// sign-magnitude, so key = bits ^ (sign ? 0xFFFF : 0x8000) orders them as unsigned integers in the
// order of their values (-0 below +0); NaN (exponent all ones, mantissa not 0) is tracked apart and
// gives the quiet NaN.
typedef uint16_t u16v __attribute__((vector_size(64)));
typedef int16_t i16v __attribute__((vector_size(64)));
typedef uint16_t u16h __attribute__((vector_size(32), may_alias));  // the half-width form
typedef int16_t i16h __attribute__((vector_size(32)));

template <typename T16, typename U = u16v, typename I = i16v>
struct Bits16Taps {
  static constexpr bool bf16 = std::is_same_v<T16, c10::BFloat16>;
  static constexpr uint16_t inf_bits = bf16 ? 0x7F80 : 0x7C00;  // |bits| above this is a NaN
  static constexpr uint16_t qnan_bits = bf16 ? 0x7FC0 : 0x7E00;
  using T = T16;
  using V = U;  // keys
  using M = U;
  static constexpr int64_t L = sizeof(U) / sizeof(uint16_t);
  static IF_INLINE V lowest() { return V{}; }  // 0: below every key
  static IF_INLINE void fold(V v, M v_nan, V& m, M& nan) {
    m = v > m ? v : m;
    nan |= v_nan;
  }
  static IF_INLINE void take(const T16* p, V& m, M& nan) {
    U b;
    std::memcpy(&b, p, sizeof(b));
    fold(b ^ ((U)((I)b >> 15) | 0x8000), (U)((b & 0x7FFF) > inf_bits), m, nan);
  }
  static IF_INLINE void store(T16* p, V m, M nan) {
    const U bits = m ^ (~(U)((I)m >> 15) | 0x8000);
    const U out = (bits & ~nan) | (nan & qnan_bits);
    std::memcpy(p, &out, sizeof(out));
  }
};

// Separable, U vectors a block of channels (U independent max chains); cm / cn: the block's column
// maxima and NaN masks, U a column.
template <typename Tr, int U>
IF_INLINE int64_t forward_cl_separable(const typename Tr::T* __restrict__ x, typename Tr::T* __restrict__ y,
                                       const Pool& g, int64_t ih0, int64_t ih1, int64_t c,
                                       typename Tr::V* __restrict__ cm, typename Tr::M* __restrict__ cn) {
  using V = typename Tr::V;
  using M = typename Tr::M;
  constexpr int64_t L = Tr::L;
  int64_t lo, hi;
  row_columns(g, lo, hi);
  for (; c + U * L <= g.c; c += U * L) {
    for (int64_t iw = lo; iw < hi; ++iw) {
      V m[U];
      M nan[U];
      for (int u = 0; u < U; ++u) m[u] = Tr::lowest(), nan[u] = M{};
      for (int64_t ih = ih0; ih < ih1; ++ih)
        for (int u = 0; u < U; ++u) Tr::take(x + (ih * g.w + iw) * g.c + c + u * L, m[u], nan[u]);
      for (int u = 0; u < U; ++u) cm[(iw - lo) * U + u] = m[u], cn[(iw - lo) * U + u] = nan[u];
    }
    for (int64_t o = 0; o < g.ow; ++o) {
      int64_t iw0, iw1;
      window(o, g.sw, g.pw, g.kw, g.w, iw0, iw1);
      V m[U];
      M nan[U];
      for (int u = 0; u < U; ++u) m[u] = cm[(iw0 - lo) * U + u], nan[u] = cn[(iw0 - lo) * U + u];
      for (int64_t iw = iw0 + 1; iw < iw1; ++iw)
        for (int u = 0; u < U; ++u) Tr::fold(cm[(iw - lo) * U + u], cn[(iw - lo) * U + u], m[u], nan[u]);
      for (int u = 0; u < U; ++u) Tr::store(y + o * g.c + c + u * L, m[u], nan[u]);
    }
  }
  return c;
}

// Each window's taps directly: float32 with a horizontal stride (a 3x3/2 pool reads about as many
// taps an output either way, and the column buffer's traffic made the separable form 10-25% slower).
template <typename Tr, int U>
IF_INLINE int64_t forward_cl_direct(const typename Tr::T* __restrict__ x, typename Tr::T* __restrict__ y,
                                    const Pool& g, int64_t ih0, int64_t ih1, int64_t c0) {
  using V = typename Tr::V;
  using M = typename Tr::M;
  constexpr int64_t L = Tr::L;
  int64_t end = c0;
  for (int64_t o = 0; o < g.ow; ++o) {
    int64_t iw0, iw1;
    window(o, g.sw, g.pw, g.kw, g.w, iw0, iw1);
    int64_t c = c0;
    for (; c + U * L <= g.c; c += U * L) {
      V m[U];
      M nan[U];
      for (int u = 0; u < U; ++u) m[u] = Tr::lowest(), nan[u] = M{};
      for (int64_t ih = ih0; ih < ih1; ++ih)
        for (int64_t iw = iw0; iw < iw1; ++iw)
          for (int u = 0; u < U; ++u) Tr::take(x + (ih * g.w + iw) * g.c + c + u * L, m[u], nan[u]);
      for (int u = 0; u < U; ++u) Tr::store(y + o * g.c + c + u * L, m[u], nan[u]);
    }
    end = c;
  }
  return end;
}

IF_CPU_CLONES void forward_cl_row(const float* __restrict__ x, float* __restrict__ y, const Pool& g, int64_t ih0,
                                  int64_t ih1, vec_t<float>* __restrict__ cm, mask_t* __restrict__ cn) {
  int64_t c = 0;
  if (g.sw == 1) {
    c = forward_cl_separable<F32Taps, 4>(x, y, g, ih0, ih1, c, cm, cn);
    c = forward_cl_separable<F32Taps, 1>(x, y, g, ih0, ih1, c, cm, cn);
  } else {
    c = forward_cl_direct<F32Taps, 4>(x, y, g, ih0, ih1, c);
    c = forward_cl_direct<F32Taps, 1>(x, y, g, ih0, ih1, c);
  }
  forward_cl_scalar(x, y, g, ih0, ih1, c);
}

template <typename T>
IF_CPU_CLONES void forward_cl_row_16bit(const T* __restrict__ x, T* __restrict__ y, const Pool& g, int64_t ih0,
                                        int64_t ih1, u16v* __restrict__ cm, u16v* __restrict__ cn) {
  static_assert(sizeof(T) == 2, "16-bit types only");
  int64_t c = forward_cl_separable<Bits16Taps<T>, 2>(x, y, g, ih0, ih1, 0, cm, cn);
  c = forward_cl_separable<Bits16Taps<T>, 1>(x, y, g, ih0, ih1, c, cm, cn);
  // a block of 16 channels left (GoogLeNet's 528): half-width vectors, not the scalar loop (2x faster)
  c = forward_cl_separable<Bits16Taps<T, u16h, i16h>, 1>(x, y, g, ih0, ih1, c, reinterpret_cast<u16h*>(cm),
                                                          reinterpret_cast<u16h*>(cn));
  forward_cl_scalar(x, y, g, ih0, ih1, c);
}

template <typename T>
void forward_cl_rows(const T* xp, T* yp, const Pool& g, int64_t r0, int64_t r1, vec_t<float>* cm, mask_t* cn) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / g.oh, oh = r % g.oh;
    int64_t ih0, ih1;
    window(oh, g.sh, g.ph, g.kh, g.h, ih0, ih1);
    const T* xb = xp + b * g.h * g.w * g.c;
    T* yr = yp + (b * g.oh + oh) * g.ow * g.c;
    if constexpr (sizeof(T) == 2) {
      forward_cl_row_16bit(xb, yr, g, ih0, ih1, reinterpret_cast<u16v*>(cm), reinterpret_cast<u16v*>(cn));
    } else if constexpr (std::is_same_v<T, float>) {
      forward_cl_row(xb, yr, g, ih0, ih1, cm, cn);
    } else {
      forward_cl_scalar(xb, yr, g, ih0, ih1, 0);
    }
  }
}

// The backward's argmax needs per-lane selects on a combined condition (greater, or NaN), which
// GCC lowers lane by lane in target_clones functions (only the plain max select stays a vector
// instruction there); so the AVX-512 version is written with intrinsics and chosen at run time,
// and the portable one is scalar.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__CUDACC__)
#define IF_HAVE_AVX512_PATH 1
__attribute__((target("avx512f"))) IF_INLINE __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
__attribute__((target("avx512f"))) IF_INLINE __m512 load16(const c10::BFloat16* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}
__attribute__((target("avx512f"))) IF_INLINE __m512 load16(const c10::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

bool cpu_has_avx512f() {
  static const bool yes = __builtin_cpu_supports("avx512f");
  return yes;
}

template <typename T>
__attribute__((target("avx512f"))) void backward_cl_vectors(const T* __restrict__ x, const T* __restrict__ gy,
                                                            float* __restrict__ gx, const Pool& g, int64_t ih0,
                                                            int64_t ih1, int64_t iw0, int64_t iw1, int64_t o,
                                                            int64_t c0, int64_t c1) {
  for (int64_t c = c0; c < c1; c += 16) {
    // The window's argmax per lane, as a tap number (ATen's rule: greater, or NaN, replaces).
    __m512 m = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    __m512i arg = _mm512_setzero_si512();
    int32_t t = 0;
    for (int64_t ih = ih0; ih < ih1; ++ih)
      for (int64_t iw = iw0; iw < iw1; ++iw, ++t) {
        const __m512 v = load16(x + (ih * g.w + iw) * g.c + c);
        const __mmask16 take = _mm512_cmp_ps_mask(v, m, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        m = _mm512_mask_blend_ps(take, m, v);
        arg = _mm512_mask_blend_epi32(take, arg, _mm512_set1_epi32(t));
      }
    // Each tap adds the lanes whose argmax it is.
    const __m512 gv = load16(gy + o * g.c + c);
    t = 0;
    for (int64_t ih = ih0; ih < ih1; ++ih)
      for (int64_t iw = iw0; iw < iw1; ++iw, ++t) {
        float* dst = gx + (ih * g.w + iw) * g.c + c;
        const __mmask16 hit = _mm512_cmpeq_epi32_mask(arg, _mm512_set1_epi32(t));
        const __m512 d = _mm512_loadu_ps(dst);
        _mm512_storeu_ps(dst, _mm512_mask_add_ps(d, hit, d, gv));
      }
  }
}
#endif

template <typename T>
void backward_cl_row(const T* __restrict__ x, const T* __restrict__ gy, acc_t<T>* __restrict__ gx, const Pool& g,
                     int64_t ih0, int64_t ih1, int64_t c0, int64_t c1) {
  using A = acc_t<T>;
  for (int64_t o = 0; o < g.ow; ++o) {
    int64_t iw0, iw1;
    window(o, g.sw, g.pw, g.kw, g.w, iw0, iw1);
    int64_t c = c0;
#ifdef IF_HAVE_AVX512_PATH
    if constexpr (!std::is_same_v<T, double>) {
      if (cpu_has_avx512f()) {
        const int64_t cv = c0 + (c1 - c0) / 16 * 16;
        backward_cl_vectors(x, gy, gx, g, ih0, ih1, iw0, iw1, o, c0, cv);
        c = cv;
      }
    }
#endif
    for (; c < c1; ++c) {
      A m = neg_inf<A>();
      int64_t best = ih0 * g.w + iw0;
      for (int64_t ih = ih0; ih < ih1; ++ih)
        for (int64_t iw = iw0; iw < iw1; ++iw) {
          const A v = to_acc(x[(ih * g.w + iw) * g.c + c]);
          if (takes(v, m)) {
            m = v;
            best = ih * g.w + iw;
          }
        }
      gx[best * g.c + c] += to_acc(gy[o * g.c + c]);
    }
  }
}

// ---- NCHW: planes of H x W; for each tap, a run of output columns ----

template <typename T>
IF_CPU_CLONES void forward_plane(const T* __restrict__ x, T* __restrict__ y, const Pool& g, acc_t<T>* __restrict__ row) {
  using A = acc_t<T>;
  for (int64_t oh = 0; oh < g.oh; ++oh) {
    int64_t ih0, ih1;
    window(oh, g.sh, g.ph, g.kh, g.h, ih0, ih1);
    for (int64_t o = 0; o < g.ow; ++o) row[o] = neg_inf<A>();
    for (int64_t ih = ih0; ih < ih1; ++ih) {
      const T* in = x + ih * g.w;
      for (int64_t k = 0; k < g.kw; ++k) {
        // Outputs o whose tap k reads inside the row: 0 <= o*s - p + k < w.
        const int64_t lo = std::max<int64_t>(0, (g.pw - k + g.sw - 1) / g.sw);
        const int64_t hi = std::min<int64_t>(g.ow, (g.w + g.pw - k + g.sw - 1) / g.sw);
        for (int64_t o = lo; o < hi; ++o) {
          const A v = to_acc(in[o * g.sw - g.pw + k]);
          row[o] = (v > row[o] || v != v) ? v : row[o];
        }
      }
    }
    for (int64_t o = 0; o < g.ow; ++o) y[oh * g.ow + o] = from_acc<T>(row[o]);
  }
}

template <typename T>
IF_CPU_CLONES void backward_plane(const T* __restrict__ x, const T* __restrict__ gy, acc_t<T>* __restrict__ gx,
                                  const Pool& g) {
  using A = acc_t<T>;
  for (int64_t oh = 0; oh < g.oh; ++oh) {
    int64_t ih0, ih1;
    window(oh, g.sh, g.ph, g.kh, g.h, ih0, ih1);
    for (int64_t o = 0; o < g.ow; ++o) {
      int64_t iw0, iw1;
      window(o, g.sw, g.pw, g.kw, g.w, iw0, iw1);
      A m = neg_inf<A>();
      int64_t arg = ih0 * g.w + iw0;
      for (int64_t ih = ih0; ih < ih1; ++ih)
        for (int64_t iw = iw0; iw < iw1; ++iw) {
          const A v = to_acc(x[ih * g.w + iw]);
          if (takes(v, m)) {
            m = v;
            arg = ih * g.w + iw;
          }
        }
      gx[arg] += to_acc(gy[oh * g.ow + o]);
    }
  }
}

at::Tensor max_pool(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                    at::IntArrayRef padding, bool ceil_mode) {
  const char* op = "inception_fast::max_pool";
  const Pool g = geometry(op, x, kernel_size, stride, padding, ceil_mode);
  const bool cl = layout_of(x, op).channels_last;
  at::Tensor y = at::empty({g.n, g.c, g.oh, g.ow},
                           x.options().memory_format(cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    if (cl) {
      // One task per output row of an image: (kh rows of W x C) in, (OW x C) out; each task's
      // column maxima in a buffer of (W x 64 channels) it keeps for its rows.
      const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, g.ow * g.c));
      at::parallel_for(0, g.n * g.oh, grain, [&](int64_t r0, int64_t r1) {
        // (64-byte entries, 16 floats or 32 16-bit keys, 4 a column; a thread's buffer only grows.
        // Raw floats aligned by hand: a std::vector of a vector type loses the type's alignment.)
        static thread_local std::vector<float> buf;
        const size_t entries = static_cast<size_t>(g.w) * 4;
        if (buf.size() < entries * 32 + 16) buf.resize(entries * 32 + 16);
        const uintptr_t at = (reinterpret_cast<uintptr_t>(buf.data()) + 63) & ~uintptr_t{63};
        auto* cm = reinterpret_cast<vec_t<float>*>(at);
        auto* cn = reinterpret_cast<mask_t*>(at + entries * 64);
        forward_cl_rows(xp, yp, g, r0, r1, cm, cn);
      });
    } else {
      const int64_t grain = std::max<int64_t>(1, 16384 / (g.oh * g.ow));
      at::parallel_for(0, g.n * g.c, grain, [&](int64_t p0, int64_t p1) {
        std::vector<acc_t<scalar_t>> row(g.ow);
        for (int64_t p = p0; p < p1; ++p)
          forward_plane(xp + p * g.h * g.w, yp + p * g.oh * g.ow, g, row.data());
      });
    }
  });
  return y;
}

at::Tensor max_pool_backward(const at::Tensor& grad_out, const at::Tensor& x, at::IntArrayRef kernel_size,
                             at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode) {
  const char* op = "inception_fast::max_pool_backward";
  const Pool g = geometry(op, x, kernel_size, stride, padding, ceil_mode);
  const bool cl = layout_of(x, op).channels_last;
  TORCH_CHECK(grad_out.device() == x.device() && grad_out.scalar_type() == x.scalar_type(), op,
              ": grad_out must have x's device and dtype, got ", grad_out.device(), " ", grad_out.scalar_type());
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == g.n && grad_out.size(1) == g.c && grad_out.size(2) == g.oh &&
                  grad_out.size(3) == g.ow,
              op, ": grad_out must have shape [", g.n, ", ", g.c, ", ", g.oh, ", ", g.ow, "], got ", grad_out.sizes());
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor gy = grad_out.contiguous(fmt);
  // Overlapping windows add into the same input element: accumulate in float (float64 for float64),
  // round once at the end.
  const bool reduced = x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16;
  at::Tensor gx = at::empty(x.sizes(), x.options().dtype(acc_dtype(x.scalar_type())), fmt).zero_();
  if (gy.numel() != 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool_backward", [&] {
      using A = acc_t<scalar_t>;
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      const scalar_t* gyp = gy.const_data_ptr<scalar_t>();
      A* gxp = gx.mutable_data_ptr<A>();
      if (cl) {
        // Tasks own (image, 64-channel block) pairs: the windows of different output pixels overlap,
        // different channels never do.
        constexpr int64_t kBlock = 64;
        const int64_t blocks = (g.c + kBlock - 1) / kBlock;
        at::parallel_for(0, g.n * blocks, 1, [&](int64_t t0, int64_t t1) {
          for (int64_t t = t0; t < t1; ++t) {
            const int64_t b = t / blocks, c0 = (t % blocks) * kBlock, c1 = std::min<int64_t>(g.c, c0 + kBlock);
            for (int64_t oh = 0; oh < g.oh; ++oh) {
              int64_t ih0, ih1;
              window(oh, g.sh, g.ph, g.kh, g.h, ih0, ih1);
              backward_cl_row(xp + b * g.h * g.w * g.c, gyp + (b * g.oh + oh) * g.ow * g.c,
                              gxp + b * g.h * g.w * g.c, g, ih0, ih1, c0, c1);
            }
          }
        });
      } else {
        at::parallel_for(0, g.n * g.c, 1, [&](int64_t p0, int64_t p1) {
          for (int64_t p = p0; p < p1; ++p)
            backward_plane(xp + p * g.h * g.w, gyp + p * g.oh * g.ow, gxp + p * g.h * g.w, g);
        });
      }
    });
  }
  return reduced ? gx.to(x.scalar_type()) : gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(inception_fast, CPU, m) {
  m.impl("max_pool", &max_pool);
  m.impl("max_pool_backward", &max_pool_backward);
}

}  // namespace cpu
}  // namespace inception_fast
