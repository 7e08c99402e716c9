// Pieces shared by the CUDA kernels of inception_fast (csrc/cuda/*.cu): input checks, the
// choice of memory layout, 16-byte vector access and launch sizing. Helpers only: every kernel
// lives in the file of its op.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>

namespace inception_fast {
namespace cuda {

// One access moves 16 bytes: the widest global load/store a thread can issue.
constexpr int kVectorBytes = 16;

// The kernels compute in float32 from fp32/fp16/bf16 storage; float64 is left to the reference
// and CPU backends (the per-channel tensors are float32 by the ops' convention, so float64
// activations would be computed at float32 precision, silently).
#define INCEPTION_FAST_DISPATCH(TYPE, NAME, ...)                   \
  AT_DISPATCH_SWITCH(                                              \
      TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)        \
                      AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)     \
                          AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Loads N consecutive elements as one access; p must be aligned to sizeof(T) * N. Kernels keep
// the loaded packs (half the registers of floats for 16-bit types) until they use them.
template <typename T, int N>
__device__ __forceinline__ Pack<T, N> load_pack(const T* __restrict__ p) {
  return *reinterpret_cast<const Pack<T, N>*>(p);
}

template <typename T, int N>
__device__ __forceinline__ void store_floats(T* __restrict__ p, const float (&in)[N]) {
  Pack<T, N> pack;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    pack.v[i] = static_cast<T>(in[i]);
  }
  *reinterpret_cast<Pack<T, N>*>(p) = pack;
}

// ReLU that keeps NaN, as torch.relu does (fmaxf(NaN, 0) would give 0).
__device__ __forceinline__ float relu_keep_nan(float z) {
  return z < 0.f ? 0.f : z;
}

inline int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

inline bool is_vector_aligned(const at::Tensor& t) {
  return reinterpret_cast<std::uintptr_t>(t.const_data_ptr()) % kVectorBytes == 0;
}

inline int sm_count() {
  return at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
}

// Resident blocks per SM for `kernel` at `threads` per block: grid-stride kernels launch one
// full wave of these and no more, reductions size their splits from it.
template <typename Kernel>
int blocks_per_sm(Kernel kernel, int threads) {
  int blocks = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, 0));
  return std::max(blocks, 1);
}

// ---------------------------------------------------------------------------------------------
// Input checks. Each message names the op, the argument and what was expected.
// ---------------------------------------------------------------------------------------------

inline bool is_kernel_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

inline void check_cuda_floating(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.defined(), op, ": ", name, " must be a defined tensor");
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got one on ", t.device());
  TORCH_CHECK(is_kernel_dtype(t.scalar_type()), op, ": ", name,
              " must be float32, float16 or bfloat16, got ", t.scalar_type());
}

// An activation: 4-D (N, C, H, W) CUDA tensor of a kernel dtype.
inline void check_activation(const at::Tensor& t, const char* op, const char* name) {
  check_cuda_floating(t, op, name);
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must be 4-D (N, C, H, W), got ", t.dim(),
              "-D with sizes ", t.sizes());
}

// `t` must match `ref` (named ref_name) in device, dtype and sizes.
inline void check_like(const at::Tensor& t, const at::Tensor& ref, const char* op,
                       const char* name, const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on the device of ", ref_name,
              " (", ref.device(), "), got ", t.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have the dtype of ",
              ref_name, " (", ref.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == ref.sizes(), op, ": ", name, " must have the sizes of ", ref_name, " ",
              ref.sizes(), ", got ", t.sizes());
}

// A per-channel vector: float32, contiguous, shape [C], on x's device.
inline void check_channel_vector(const at::Tensor& t, const at::Tensor& x, int64_t channels,
                                 const char* op, const char* name) {
  TORCH_CHECK(t.defined(), op, ": ", name, " must be a defined tensor");
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on the device of x (",
              x.device(), "), got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ",
              t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == channels, op, ": ", name,
              " must have shape [C] = [", channels, "], got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

// An optional per-channel vector; nullptr stands for "absent" in the kernels.
inline const float* optional_channel_ptr(const std::optional<at::Tensor>& t, const at::Tensor& x,
                                         int64_t channels, const char* op, const char* name) {
  if (!t.has_value() || !t->defined()) {
    return nullptr;
  }
  check_channel_vector(*t, x, channels, op, name);
  return t->const_data_ptr<float>();
}

// ---------------------------------------------------------------------------------------------
// Memory layout of the 4-D activations.
// ---------------------------------------------------------------------------------------------

enum class Layout { kNCHW, kChannelsLast };

// The one layout in which every tensor of a call is contiguous. x decides; a tensor contiguous
// in both layouts (C == 1 or H * W == 1) is read as channels_last when H * W == 1 and C > 1, so
// that the unit-stride axis is the long one (the Triton kernels make the same choice). The
// others must then share it; if they do not, the other layout is tried before giving up.
inline Layout pick_layout(const char* op, const at::Tensor& x,
                          std::initializer_list<std::pair<const at::Tensor*, const char*>> others) {
  const bool x_nchw = x.is_contiguous();
  const bool x_cl = x.is_contiguous(at::MemoryFormat::ChannelsLast);
  TORCH_CHECK(x_nchw || x_cl, op, ": x must be contiguous in NCHW or in channels_last memory "
              "format, got strides ", x.strides());
  const bool prefer_cl = x_cl && (!x_nchw || (x.size(2) * x.size(3) == 1 && x.size(1) > 1));
  auto all_in = [&](Layout layout) {
    const auto format = layout == Layout::kNCHW ? at::MemoryFormat::Contiguous
                                                : at::MemoryFormat::ChannelsLast;
    if (!x.is_contiguous(format)) {
      return false;
    }
    for (const auto& other : others) {
      if (!other.first->is_contiguous(format)) {
        return false;
      }
    }
    return true;
  };
  const Layout first = prefer_cl ? Layout::kChannelsLast : Layout::kNCHW;
  const Layout second = prefer_cl ? Layout::kNCHW : Layout::kChannelsLast;
  if (all_in(first)) {
    return first;
  }
  if (all_in(second)) {
    return second;
  }
  const bool want_cl = first == Layout::kChannelsLast;
  for (const auto& other : others) {
    TORCH_CHECK(other.first->is_contiguous(want_cl ? at::MemoryFormat::ChannelsLast
                                                   : at::MemoryFormat::Contiguous),
                op, ": ", other.second, " must be contiguous in the memory format of x (",
                want_cl ? "channels_last" : "NCHW", "), got strides ", other.first->strides());
  }
  TORCH_CHECK(false, op, ": x and the other activations share no memory format");
  return first;  // not reached: TORCH_CHECK(false) throws
}

// The kernels index within a channel with 32-bit integers (whole tensors with 64-bit ones).
inline void check_index_ranges(const at::Tensor& x, const char* op) {
  constexpr int64_t kMax = int64_t{1} << 30;
  const int64_t per_channel = x.size(0) * x.size(2) * x.size(3);
  TORCH_CHECK(x.size(1) <= kMax, op, ": x has too many channels (C = ", x.size(1),
              ", at most 2^30)");
  TORCH_CHECK(per_channel <= kMax, op, ": x has too many elements per channel (N*H*W = ",
              per_channel, ", at most 2^30)");
}

// Channels_last kernels tile [rows = N*H*W, vector columns = C / VEC] with blocks of
// (bx columns, by rows). A block spans all the columns when there are at most 64 (1 KB of bf16
// per row), else an even share of at most 32 (512 contiguous bytes, whole cache lines): most
// of a block's threads then go down the rows, and a reduction folds many rows into each
// per-block partial.
struct ClTiling {
  int bx;  // vector columns per block (blockDim.x)
  int by;  // rows per block step (blockDim.y)
  int gy;  // column blocks (gridDim.y)
};

inline ClTiling cl_tiling(int64_t vector_columns, int threads, const char* op) {
  const int64_t bx = vector_columns <= 64
                         ? vector_columns
                         : ceil_div(vector_columns, ceil_div(vector_columns, 32));
  const int64_t gy = ceil_div(vector_columns, bx);
  TORCH_CHECK(gy <= 65535, op, ": too many channels for the channels_last kernels (C = ",
              vector_columns, " vectors)");
  ClTiling t;
  t.bx = static_cast<int>(bx);
  t.by = static_cast<int>(std::max<int64_t>(1, threads / bx));
  t.gy = static_cast<int>(gy);
  return t;
}

}  // namespace cuda
}  // namespace inception_fast
