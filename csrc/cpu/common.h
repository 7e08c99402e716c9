// Helpers shared by the CPU kernels: dtype conversion written so that GCC/Clang vectorize it,
// run-time ISA selection, input checks.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

// The kernels are plain loops that the compiler vectorizes. Each hot loop is compiled three
// times (AVX-512, AVX2+FMA, baseline x86-64) and the loader picks the best the CPU supports
// (an ifunc), so one binary runs on any x86-64 machine and uses AVX-512 where it exists,
// without compiling whole translation units with -mavx512f (whose inline functions could
// leak into code that runs on older CPUs).
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__) && !defined(__CUDACC__)
#define IF_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define IF_CPU_CLONES
#endif
#define IF_INLINE inline __attribute__((always_inline))

namespace inception_fast {
namespace cpu {

// Arithmetic type of each storage type: float for float32/float16/bfloat16, double for float64
// (float64 exists for gradcheck and reference-grade checks; per-channel vectors then are float64).
template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};
template <typename T>
using acc_t = typename Acc<T>::type;

// storage type <-> arithmetic type. bfloat16 and float16 are converted with bit operations (or
// the F16C instructions through _Float16) so the loops around them stay vectorizable.
IF_INLINE float to_acc(float v) { return v; }
IF_INLINE double to_acc(double v) { return v; }
IF_INLINE float to_acc(c10::BFloat16 v) {
  uint32_t u = static_cast<uint32_t>(v.x) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
IF_INLINE float to_acc(c10::Half v) {
#if defined(__FLT16_MAX__)
  _Float16 h;
  std::memcpy(&h, &v.x, sizeof(h));
  return static_cast<float>(h);
#else
  return static_cast<float>(v);
#endif
}

template <typename T>
IF_INLINE T from_acc(acc_t<T> f);
template <>
IF_INLINE float from_acc<float>(float f) {
  return f;
}
template <>
IF_INLINE double from_acc<double>(double f) {
  return f;
}
template <>
IF_INLINE c10::BFloat16 from_acc<c10::BFloat16>(float f) {
  // Round to nearest even, as c10::BFloat16 does; NaN stays a (quiet) NaN.
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  c10::BFloat16 r;
  r.x = static_cast<uint16_t>(f != f ? 0x7FC0u : rounded);
  return r;
}
template <>
IF_INLINE c10::Half from_acc<c10::Half>(float f) {
#if defined(__FLT16_MAX__)
  _Float16 h = static_cast<_Float16>(f);
  c10::Half r;
  std::memcpy(&r.x, &h, sizeof(h));
  return r;
#else
  return c10::Half(f);
#endif
}

// One 64-byte vector of the arithmetic type (16 floats or 8 doubles), through GCC/Clang vector
// extensions: each target clone compiles it to one AVX-512 register, two AVX2 ones, or four SSE
// ones, which is a pattern the compiler never fails to vectorize (reductions over a lane array
// sometimes came out as shuffles and scalar adds).
template <typename A>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(64)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(64)));
};
template <typename A>
using vec_t = typename VecOf<A>::type;
template <typename A>
constexpr int vec_lanes = 64 / sizeof(A);

IF_INLINE vec_t<float> load_vec(const float* p) {
  vec_t<float> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
IF_INLINE vec_t<double> load_vec(const double* p) {
  vec_t<double> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
IF_INLINE vec_t<float> load_vec(const c10::BFloat16* p) {
  typedef uint16_t u16x16 __attribute__((vector_size(32)));
  typedef uint32_t u32x16 __attribute__((vector_size(64)));
  u16x16 raw;
  std::memcpy(&raw, p, sizeof(raw));
  u32x16 wide = __builtin_convertvector(raw, u32x16) << 16;
  vec_t<float> v;
  std::memcpy(&v, &wide, sizeof(v));
  return v;
}
IF_INLINE vec_t<float> load_vec(const c10::Half* p) {
#if defined(__FLT16_MAX__)
  typedef _Float16 h16 __attribute__((vector_size(32)));
  h16 raw;
  std::memcpy(&raw, p, sizeof(raw));
  return __builtin_convertvector(raw, vec_t<float>);
#else
  vec_t<float> v;
  for (int l = 0; l < 16; ++l) v[l] = static_cast<float>(p[l]);
  return v;
#endif
}

IF_INLINE void store_vec(float* p, vec_t<float> v) { std::memcpy(p, &v, sizeof(v)); }
IF_INLINE void store_vec(double* p, vec_t<double> v) { std::memcpy(p, &v, sizeof(v)); }
IF_INLINE void store_vec(c10::BFloat16* p, vec_t<float> v) {
  // Round to nearest even as from_acc does; NaN becomes the quiet NaN 0x7FC0.
  typedef uint16_t u16x16 __attribute__((vector_size(32)));
  typedef uint32_t u32x16 __attribute__((vector_size(64)));
  u32x16 u;
  std::memcpy(&u, &v, sizeof(u));
  u32x16 rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  rounded = (v != v) ? u32x16{} + 0x7FC0u : rounded;
  u16x16 out = __builtin_convertvector(rounded, u16x16);
  std::memcpy(p, &out, sizeof(out));
}
IF_INLINE void store_vec(c10::Half* p, vec_t<float> v) {
#if defined(__FLT16_MAX__)
  typedef _Float16 h16 __attribute__((vector_size(32)));
  h16 out = __builtin_convertvector(v, h16);
  std::memcpy(p, &out, sizeof(out));
#else
  for (int l = 0; l < 16; ++l) p[l] = c10::Half(v[l]);
#endif
}

// Load / store `vec_lanes` per-channel values of the arithmetic type.
template <typename A>
IF_INLINE vec_t<A> load_acc(const A* p) {
  vec_t<A> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename A>
IF_INLINE void store_acc(A* p, vec_t<A> v) {
  std::memcpy(p, &v, sizeof(v));
}

template <typename A>
IF_INLINE vec_t<A> relu_vec(vec_t<A> z) {
  return z < A(0) ? vec_t<A>{} : z;  // NaN < 0 is false: NaN stays
}

template <typename A>
IF_INLINE double hsum(vec_t<A> v) {
  A s = 0;
  for (int l = 0; l < vec_lanes<A>; ++l) s += v[l];
  return static_cast<double>(s);
}

// ReLU that keeps NaN (std::max(z, 0) would turn NaN into 0).
template <typename A>
IF_INLINE A relu(A z) {
  return z < A(0) ? A(0) : z;
}

// Layout of a 4-D activation as the kernels see it: NCHW is N planes of C x S (S = H*W,
// contiguous); channels_last is N*S rows of C contiguous channels.
struct Layout {
  int64_t N, C, S;
  bool channels_last;
};

inline Layout layout_of(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.dim() == 4, op, ": expected a 4-D (N, C, H, W) input, got ", x.dim(), "-D of shape ",
              x.sizes());
  Layout l{x.size(0), x.size(1), x.size(2) * x.size(3), false};
  if (x.is_contiguous()) {
    l.channels_last = false;
  } else if (x.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    l.channels_last = true;
  } else {
    TORCH_CHECK(false, op, ": expected x contiguous in NCHW or channels_last, got strides ", x.strides());
  }
  return l;
}

inline void check_float_dtype(const at::Tensor& t, const char* op, const char* name) {
  auto dt = t.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble, op, ": ", name,
              " must be float32, float16, bfloat16 or float64, got ", dt);
}

// dtype of per-channel vectors and statistics for an input of dtype dt.
inline at::ScalarType acc_dtype(at::ScalarType dt) { return dt == at::kDouble ? at::kDouble : at::kFloat; }

// Per-channel vectors: contiguous [C] on x's device, float32 (float64 when x is float64).
inline void check_channel_vec(const c10::optional<at::Tensor>& t, const at::Tensor& x, int64_t C,
                              const char* op, const char* name) {
  if (!t.has_value()) return;
  const at::Tensor& v = *t;
  TORCH_CHECK(v.device() == x.device(), op, ": ", name, " is on ", v.device(), " but x is on ", x.device());
  TORCH_CHECK(v.scalar_type() == acc_dtype(x.scalar_type()), op, ": ", name, " must be ",
              acc_dtype(x.scalar_type()), " for x of dtype ", x.scalar_type(), ", got ", v.scalar_type());
  TORCH_CHECK(v.dim() == 1 && v.size(0) == C, op, ": ", name, " must have shape [", C,
              "] (one value per channel of x), got ", v.sizes());
  TORCH_CHECK(v.is_contiguous(), op, ": ", name, " must be contiguous");
}

inline void check_same(const at::Tensor& a, const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(a.device() == x.device(), op, ": ", name, " is on ", a.device(), " but x is on ", x.device());
  TORCH_CHECK(a.scalar_type() == x.scalar_type(), op, ": ", name, " has dtype ", a.scalar_type(),
              " but x has ", x.scalar_type());
  TORCH_CHECK(a.sizes() == x.sizes(), op, ": ", name, " has shape ", a.sizes(), " but x has ", x.sizes());
  TORCH_CHECK(a.strides() == x.strides(), op, ": ", name, " has strides ", a.strides(),
              " but x has ", x.strides(), " (same memory format expected)");
}

// A scratch buffer of at least `floats` floats, 64-byte aligned, kept by the calling thread between
// calls (grown when too small, freed at thread exit) and never shared with another thread. For the
// Winograd ops' transformed tiles (up to ~6 MiB): a fresh buffer a call was page-faulted in anew in
// some processes (glibc handed the freed block back to the kernel), doubling the op's time (3.3 vs
// 6-7 ms, the same op in different processes). Plain aligned memory, not the current CPU allocator's:
// a memory pool installed at the first call must not own a buffer that outlives it.
inline float* thread_scratch(int64_t floats) {
  struct Buffer {
    float* p = nullptr;
    int64_t n = 0;
    ~Buffer() { std::free(p); }
  };
  thread_local Buffer buf;
  if (buf.n < floats) {
    std::free(buf.p);
    buf.p = nullptr;
    buf.n = 0;
    const size_t bytes = (static_cast<size_t>(floats) * sizeof(float) + 63) / 64 * 64;
    buf.p = static_cast<float*>(std::aligned_alloc(64, bytes));
    TORCH_CHECK(buf.p != nullptr, "out of memory: a scratch buffer of ", bytes, " bytes");
    buf.n = floats;
  }
  return buf.p;
}

}  // namespace cpu
}  // namespace inception_fast
