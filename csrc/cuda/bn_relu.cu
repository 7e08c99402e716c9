// CUDA kernels of the fused BatchNorm + ReLU ops (schemas and conventions in csrc/ops.cpp):
// bn_stats, bn_relu_apply, bn_relu_backward_reduce, bn_relu_backward_elemt; and bn_stats_train,
// bn_stats followed by the running statistics' update in ATen ops.
//
// Layouts. x is (N, C, H, W), contiguous in NCHW or in channels_last, read in place:
//  * NCHW: the elementwise kernels walk the tensor as one flat array of 16-byte vectors and
//    track the channel of each element incrementally (a vector may straddle two planes when
//    H*W is not a multiple of its width, e.g. 35x35 or 17x17). The reductions give each block
//    one channel and a share of its N planes; a plane is covered by the aligned vectors that
//    overlap it, and the lanes that belong to a neighbouring plane are masked out, so every
//    load stays 16 bytes wide whatever H*W is.
//  * channels_last: a [rows = N*H*W, columns = C] matrix. A thread owns one vector of VEC
//    adjacent channels and walks down the rows, so its per-channel parameters and partial
//    statistics stay in registers.
// 16-byte vectors are used when every tensor's data pointer is 16-byte aligned (and, in
// channels_last, C is a multiple of the vector width); otherwise the same kernels run with one
// element per access.
//
// Numerics. All arithmetic is float32. The statistics are merged with Chan's formula (counts,
// means and sums of squared deviations, never raw sums of squares), so an offset such as
// randn*3+50 costs no precision. Reductions write one partial per (block, channel) and a second
// small kernel combines them in float64, in a fixed order: results are deterministic.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "common.cuh"

namespace inception_fast {
namespace cuda {
namespace {

// NCHW reductions: one block per (channel, split), each thread with kReduceUnroll vectors in
// flight per step.
constexpr int kReduceThreads = 256;
constexpr int kReduceUnroll = 4;
// Channels_last reductions: large blocks, so that each per-block partial folds many rows.
constexpr int kClReduceThreads = 512;
// Three rows in flight per thread: with four, the bf16 variant spills under the 64-register
// cap that lets two 512-thread blocks share an SM.
constexpr int kClStatsUnroll = 3;
// The backward reduction keeps twice the per-channel state (parameters and two sums) in
// registers; two rows in flight per thread keep it clear of spilling.
constexpr int kClBackwardUnroll = 2;
// Elementwise kernels (grid-stride, one full wave of resident blocks).
constexpr int kElemThreads = 256;
constexpr int kElemUnroll = 2;
// The combine kernels: one thread per channel.
constexpr int kCombineThreads = 256;

// ---------------------------------------------------------------------------------------------
// The pre-activation.
// ---------------------------------------------------------------------------------------------

struct BnParams {
  const float* weight;  // nullptr: 1
  const float* bias;    // nullptr: 0
  const float* mean;
  const float* invstd;
};

struct BnChannel {
  float mean, invstd, weight, bias;
};

__device__ __forceinline__ BnChannel load_bn_channel(const BnParams& p, int c) {
  BnChannel ch;
  ch.mean = __ldg(p.mean + c);
  ch.invstd = __ldg(p.invstd + c);
  ch.weight = p.weight != nullptr ? __ldg(p.weight + c) : 1.f;
  ch.bias = p.bias != nullptr ? __ldg(p.bias + c) : 0.f;
  return ch;
}

// The single definition of z = (x - mean) * invstd * weight + bias, used by the forward and
// by both backward kernels, so that the backward's ReLU mask is the forward's bit for bit.
// The _rn intrinsics pin each rounding (nvcc may not contract them differently per kernel).
// The order of operations is that of _preact in the Triton kernels
// (inception_fast/triton/bn_relu.py), which use an explicit fma too when both weight and bias
// are given. An absent weight or bias enters as 1 or 0, which changes no value.
__device__ __forceinline__ float bn_preact(const BnChannel& ch, float x) {
  return __fmaf_rn(__fmul_rn(__fsub_rn(x, ch.mean), ch.invstd), ch.weight, ch.bias);
}

// ---------------------------------------------------------------------------------------------
// Elementwise ops: y = f(channel parameters, x, grad_out).
// ---------------------------------------------------------------------------------------------

struct ApplyOp {
  using Channel = BnChannel;
  static constexpr bool kReadsGrad = false;
  BnParams params;

  __device__ __forceinline__ Channel channel(int c) const {
    return load_bn_channel(params, c);
  }
  __device__ __forceinline__ float operator()(const Channel& ch, float x, float /*g*/) const {
    return relu_keep_nan(bn_preact(ch, x));
  }
};

struct GradChannel {
  BnChannel bn;
  float scale;    // weight * invstd
  float mean_dz;  // sum_dz / count
  float coef;     // invstd^2 * sum_dz_xmu / count
};

// grad_x of the fused op. kTrain: mean/invstd are batch statistics, so the gradient also flows
// through them (the sums); otherwise they are constants (eval).
template <bool kTrain>
struct GradOp {
  using Channel = GradChannel;
  static constexpr bool kReadsGrad = true;
  BnParams params;
  const float* sum_dz;
  const float* sum_dz_xmu;
  float inv_count;  // 1 / count

  __device__ __forceinline__ Channel channel(int c) const {
    Channel ch;
    ch.bn = load_bn_channel(params, c);
    ch.scale = ch.bn.weight * ch.bn.invstd;
    if (kTrain) {
      ch.mean_dz = __ldg(sum_dz + c) * inv_count;
      ch.coef = ch.bn.invstd * ch.bn.invstd * (__ldg(sum_dz_xmu + c) * inv_count);
    } else {
      ch.mean_dz = 0.f;
      ch.coef = 0.f;
    }
    return ch;
  }
  __device__ __forceinline__ float operator()(const Channel& ch, float x, float g) const {
    // A select, not grad * mask: a masked-out gradient is 0 even where grad_out is inf/NaN,
    // as in torch's threshold_backward.
    const float dz = bn_preact(ch.bn, x) > 0.f ? g : 0.f;
    if (kTrain) {
      return ch.scale * (dz - ch.mean_dz - (x - ch.bn.mean) * ch.coef);
    }
    return dz * ch.scale;
  }
};

// ---------------------------------------------------------------------------------------------
// Elementwise kernels.
// ---------------------------------------------------------------------------------------------

// Where an NCHW element sits: its offset within its (n, c) plane and its channel.
struct PlanePos {
  int hw;
  int c;
};

// Moves a position forward by a fixed number of elements, given as (step / HW) % C whole
// planes (step_c) and step % HW elements (step_hw): the grid-stride loop then needs no 64-bit
// division.
__device__ __forceinline__ PlanePos advance(PlanePos p, int step_hw, int step_c, int hw_size,
                                            int channels) {
  p.hw += step_hw;
  int carry = 0;
  if (p.hw >= hw_size) {
    p.hw -= hw_size;
    carry = 1;
  }
  p.c += step_c + carry;  // < 2 * channels
  if (p.c >= channels) {
    p.c -= channels;
  }
  return p;
}

// One NCHW vector starting at position `pos`. When H*W is not a multiple of VEC it may cross
// into the next plane (channel); the launcher guarantees H*W >= VEC, so it crosses at most
// once: its first `left` elements belong to channel pos.c, the others to the next channel.
template <typename T, int VEC, typename Op>
__device__ __forceinline__ void apply_plane_vector(const Op& op, PlanePos pos, int hw_size,
                                                   int channels, const Pack<T, VEC>& xs,
                                                   const Pack<T, VEC>& gs, float (&out)[VEC]) {
  const typename Op::Channel ch = op.channel(pos.c);
  const int left = hw_size - pos.hw;
  if (left >= VEC) {
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const float g = Op::kReadsGrad ? static_cast<float>(gs.v[e]) : 0.f;
      out[e] = op(ch, static_cast<float>(xs.v[e]), g);
    }
  } else {
    const typename Op::Channel next = op.channel(pos.c + 1 == channels ? 0 : pos.c + 1);
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const float g = Op::kReadsGrad ? static_cast<float>(gs.v[e]) : 0.f;
      // Both results, then a select: choosing between the two parameter structs instead would
      // put them in local memory.
      const float a = op(ch, static_cast<float>(xs.v[e]), g);
      const float b = op(next, static_cast<float>(xs.v[e]), g);
      out[e] = e < left ? a : b;
    }
  }
}

template <typename T, int VEC, typename Op>
__global__ void __launch_bounds__(kElemThreads)
    bn_elementwise_nchw_kernel(const T* __restrict__ x, const T* __restrict__ g,
                               T* __restrict__ y, int64_t numel, int channels, int hw_size,
                               int step_hw, int step_c, Op op) {
  const int64_t nvec = numel / VEC;
  const int64_t nthreads = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  PlanePos pos;
  {
    const int64_t e = tid * VEC;
    const int64_t plane = e / hw_size;
    pos.hw = static_cast<int>(e - plane * hw_size);
    pos.c = static_cast<int>(plane % channels);
  }
  for (int64_t v0 = tid; v0 < nvec; v0 += kElemUnroll * nthreads) {
    Pack<T, VEC> xs[kElemUnroll];
    Pack<T, VEC> gs[kElemUnroll];
    PlanePos ps[kElemUnroll];
#pragma unroll
    for (int u = 0; u < kElemUnroll; ++u) {
      const int64_t v = v0 + u * nthreads;
      ps[u] = pos;
      pos = advance(pos, step_hw, step_c, hw_size, channels);
      if (v < nvec) {
        xs[u] = load_pack<T, VEC>(x + v * VEC);
        if constexpr (Op::kReadsGrad) {
          gs[u] = load_pack<T, VEC>(g + v * VEC);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kElemUnroll; ++u) {
      const int64_t v = v0 + u * nthreads;
      if (v < nvec) {
        float out[VEC];
        apply_plane_vector<T, VEC>(op, ps[u], hw_size, channels, xs[u], gs[u], out);
        store_floats<T, VEC>(y + v * VEC, out);
      }
    }
  }
  // The numel % VEC elements after the last whole vector.
  const int64_t tail = numel - nvec * VEC;
  if (tid < tail) {
    const int64_t e = nvec * VEC + tid;
    const int c = static_cast<int>((e / hw_size) % channels);
    float gv = 0.f;
    if constexpr (Op::kReadsGrad) {
      gv = static_cast<float>(g[e]);
    }
    y[e] = static_cast<T>(op(op.channel(c), static_cast<float>(x[e]), gv));
  }
}

// Channels_last: thread (tx, ty) of block (bx, by) owns vector column blockIdx.y * bx + tx
// (channels [col * VEC, col * VEC + VEC)) and rows blockIdx.x * by + ty + k * gridDim.x * by.
template <typename T, int VEC, typename Op>
__global__ void __launch_bounds__(kElemThreads)
    bn_elementwise_cl_kernel(const T* __restrict__ x, const T* __restrict__ g,
                             T* __restrict__ y, int64_t rows, int channels, int vector_columns,
                             Op op) {
  const int col = blockIdx.y * blockDim.x + threadIdx.x;
  if (col >= vector_columns) {
    return;
  }
  typename Op::Channel ch[VEC];
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    ch[e] = op.channel(col * VEC + e);
  }
  const int64_t row_step = static_cast<int64_t>(gridDim.x) * blockDim.y;
  const int64_t col_offset = static_cast<int64_t>(col) * VEC;
  for (int64_t r0 = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; r0 < rows;
       r0 += kElemUnroll * row_step) {
    Pack<T, VEC> xs[kElemUnroll];
    Pack<T, VEC> gs[kElemUnroll];
#pragma unroll
    for (int u = 0; u < kElemUnroll; ++u) {
      const int64_t r = r0 + u * row_step;
      if (r < rows) {
        xs[u] = load_pack<T, VEC>(x + r * channels + col_offset);
        if constexpr (Op::kReadsGrad) {
          gs[u] = load_pack<T, VEC>(g + r * channels + col_offset);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kElemUnroll; ++u) {
      const int64_t r = r0 + u * row_step;
      if (r < rows) {
        float out[VEC];
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          const float gv = Op::kReadsGrad ? static_cast<float>(gs[u].v[e]) : 0.f;
          out[e] = op(ch[e], static_cast<float>(xs[u].v[e]), gv);
        }
        store_floats<T, VEC>(y + r * channels + col_offset, out);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Reduction helpers.
// ---------------------------------------------------------------------------------------------

// Chan's combination of (count, mean, M2) with another such triple. An empty side (count 0,
// mean 0, M2 0) leaves the other unchanged. The weight needs no IEEE division (2 ulp are far
// below the tolerance, and the fast form has no slow-path call to constrain registers).
__device__ __forceinline__ void welford_merge(float& n, float& mean, float& m2, float nb,
                                              float mean_b, float m2_b) {
  const float total = n + nb;
  const float wb = total > 0.f ? __fdividef(nb, total) : 0.f;
  const float delta = mean_b - mean;
  mean = fmaf(delta, wb, mean);
  m2 = m2 + m2_b + delta * delta * n * wb;
  n = total;
}

// Adds lanes [lo, hi) of a vector (all from one channel): their exact two-pass statistics,
// then one merge, so the division is paid once per vector rather than per element.
template <typename T, int VEC>
__device__ __forceinline__ void welford_add_vector(float& n, float& mean, float& m2,
                                                   const Pack<T, VEC>& pack, int lo, int hi) {
  float v[VEC];
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    v[e] = static_cast<float>(pack.v[e]);
  }
  float sum = 0.f;
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    if (e >= lo && e < hi) {
      sum += v[e];
    }
  }
  const float m = static_cast<float>(hi - lo);
  // A whole vector divides by a power of two: exact.
  const float vmean = hi - lo == VEC ? sum * (1.f / VEC) : __fdividef(sum, m);
  float vm2 = 0.f;
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    if (e >= lo && e < hi) {
      const float d = v[e] - vmean;
      vm2 = fmaf(d, d, vm2);
    }
  }
  welford_merge(n, mean, m2, m, vmean, vm2);
}

__device__ __forceinline__ void warp_welford(float& n, float& mean, float& m2) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float nb = __shfl_xor_sync(0xffffffffu, n, offset);
    const float mean_b = __shfl_xor_sync(0xffffffffu, mean, offset);
    const float m2_b = __shfl_xor_sync(0xffffffffu, m2, offset);
    welford_merge(n, mean, m2, nb, mean_b, m2_b);
  }
}

// Block-wide Welford for a 1-D block whose size is a multiple of 32; the result is in thread 0.
__device__ __forceinline__ void block_welford(float& n, float& mean, float& m2) {
  __shared__ float s_n[32], s_mean[32], s_m2[32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  warp_welford(n, mean, m2);
  if (lane == 0) {
    s_n[warp] = n;
    s_mean[warp] = mean;
    s_m2[warp] = m2;
  }
  __syncthreads();
  if (warp == 0) {
    const bool have = lane < static_cast<int>(blockDim.x >> 5);
    n = have ? s_n[lane] : 0.f;
    mean = have ? s_mean[lane] : 0.f;
    m2 = have ? s_m2[lane] : 0.f;
    warp_welford(n, mean, m2);
  }
}

// Block-wide sum of two values (1-D block, size a multiple of 32); the result is in thread 0.
__device__ __forceinline__ void block_sum2(float& a, float& b) {
  __shared__ float s_a[32], s_b[32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    a += __shfl_xor_sync(0xffffffffu, a, offset);
    b += __shfl_xor_sync(0xffffffffu, b, offset);
  }
  if (lane == 0) {
    s_a[warp] = a;
    s_b[warp] = b;
  }
  __syncthreads();
  if (warp == 0) {
    const bool have = lane < static_cast<int>(blockDim.x >> 5);
    a = have ? s_a[lane] : 0.f;
    b = have ? s_b[lane] : 0.f;
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      a += __shfl_xor_sync(0xffffffffu, a, offset);
      b += __shfl_xor_sync(0xffffffffu, b, offset);
    }
  }
}

// One aligned vector of an NCHW channel. The N planes of channel c are covered by `vps`
// aligned vectors each (work item w is vector w % vps of plane w / vps); lanes [lo, hi) belong
// to the plane, the others to its neighbours and are masked out (hi <= lo: nothing).
struct PlaneVector {
  int64_t first;  // element index of lane 0
  int lo, hi;
};

template <int VEC>
__device__ __forceinline__ PlaneVector plane_vector(int w, int c, int channels, int hw_size,
                                                    int vps) {
  const int n = w / vps;
  const int j = w - n * vps;
  const int64_t begin = (static_cast<int64_t>(n) * channels + c) * hw_size;
  PlaneVector pv;
  pv.first = (begin / VEC + j) * VEC;
  const int64_t lo = begin - pv.first;             // < VEC
  const int64_t hi = begin + hw_size - pv.first;  // may be <= 0 past the plane's end
  pv.lo = lo > 0 ? static_cast<int>(lo) : 0;
  pv.hi = hi < VEC ? static_cast<int>(hi) : VEC;
  return pv;
}

// The whole vector is read when it lies inside the tensor (its other lanes are x's own
// memory, masked later); only a vector running past the tensor's end is read lane by lane.
template <typename T, int VEC>
__device__ __forceinline__ Pack<T, VEC> load_plane_vector(const T* __restrict__ p,
                                                          const PlaneVector& pv, int64_t numel) {
  if (pv.first + VEC <= numel) {
    return load_pack<T, VEC>(p + pv.first);
  }
  Pack<T, VEC> out;
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    out.v[e] = e >= pv.lo && e < pv.hi ? p[pv.first + e] : static_cast<T>(0.f);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// bn_stats kernels.
// ---------------------------------------------------------------------------------------------

// Block (c, s): work items [s * chunk, (s + 1) * chunk) of channel c -> partial (count, mean,
// M2) at [s, c].
template <typename T, int VEC>
__global__ void __launch_bounds__(kReduceThreads)
    bn_stats_nchw_kernel(const T* __restrict__ x, int64_t numel, int channels, int hw_size,
                         int vps, int work, int chunk, float* __restrict__ part_mean,
                         float* __restrict__ part_m2, float* __restrict__ part_count) {
  const int c = blockIdx.x;
  const int begin = blockIdx.y * chunk;
  const int end = min(work, begin + chunk);
  float n = 0.f, mean = 0.f, m2 = 0.f;
  for (int w0 = begin + static_cast<int>(threadIdx.x); w0 < end;
       w0 += kReduceThreads * kReduceUnroll) {
    PlaneVector pv[kReduceUnroll];
    Pack<T, VEC> xs[kReduceUnroll];
#pragma unroll
    for (int u = 0; u < kReduceUnroll; ++u) {
      const int w = w0 + u * kReduceThreads;
      pv[u].lo = 0;
      pv[u].hi = 0;
      if (w < end) {
        pv[u] = plane_vector<VEC>(w, c, channels, hw_size, vps);
        if (pv[u].hi > pv[u].lo) {
          xs[u] = load_plane_vector<T, VEC>(x, pv[u], numel);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kReduceUnroll; ++u) {
      if (pv[u].hi > pv[u].lo) {
        welford_add_vector<T, VEC>(n, mean, m2, xs[u], pv[u].lo, pv[u].hi);
      }
    }
  }
  block_welford(n, mean, m2);
  if (threadIdx.x == 0) {
    const int64_t out = static_cast<int64_t>(blockIdx.y) * channels + c;
    part_mean[out] = mean;
    part_m2[out] = m2;
    part_count[out] = n;
  }
}

// Block (p, cb): rows of step p (see bn_elementwise_cl_kernel) of the channels of column block
// cb -> partial (mean, M2) at [p, channel]; the count, the same for all channels, at [p].
template <typename T, int VEC>
__global__ void __launch_bounds__(kClReduceThreads, 2)
    bn_stats_cl_kernel(const T* __restrict__ x, int64_t rows, int channels, int vector_columns,
                       float* __restrict__ part_mean, float* __restrict__ part_m2,
                       float* __restrict__ part_count) {
  __shared__ float s_mean[kClReduceThreads * VEC];
  __shared__ float s_m2[kClReduceThreads * VEC];
  __shared__ float s_n[kClReduceThreads];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int bx = blockDim.x, by = blockDim.y;
  const int col = blockIdx.y * bx + tx;
  const bool active = col < vector_columns;
  const int64_t row_step = static_cast<int64_t>(gridDim.x) * by;
  const int64_t col_offset = static_cast<int64_t>(col) * VEC;

  // Every row brings one sample per channel: plain Welford, with the division (shared by the
  // VEC channels) once per row.
  float n = 0.f;
  float mean[VEC], m2[VEC];
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    mean[e] = 0.f;
    m2[e] = 0.f;
  }
  for (int64_t r0 = static_cast<int64_t>(blockIdx.x) * by + ty; r0 < rows;
       r0 += kClStatsUnroll * row_step) {
    Pack<T, VEC> xs[kClStatsUnroll];
    bool ok[kClStatsUnroll];
#pragma unroll
    for (int u = 0; u < kClStatsUnroll; ++u) {
      const int64_t r = r0 + u * row_step;
      ok[u] = active && r < rows;
      if (ok[u]) {
        xs[u] = load_pack<T, VEC>(x + r * channels + col_offset);
      }
    }
#pragma unroll
    for (int u = 0; u < kClStatsUnroll; ++u) {
      if (ok[u]) {
        n += 1.f;
        const float inv_n = __fdividef(1.f, n);
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          const float xv = static_cast<float>(xs[u].v[e]);
          const float d = xv - mean[e];
          mean[e] = fmaf(d, inv_n, mean[e]);
          m2[e] = fmaf(d, xv - mean[e], m2[e]);
        }
      }
    }
  }

  // Fold the block's rows: item i of the block's bx * VEC channels is merged over its by
  // threads by one thread (consecutive items in consecutive banks).
  const int width = bx * VEC;
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    s_mean[ty * width + tx * VEC + e] = mean[e];
    s_m2[ty * width + tx * VEC + e] = m2[e];
  }
  if (tx == 0) {
    s_n[ty] = n;  // column 0 of a column block always exists, so this thread is active
  }
  __syncthreads();
  const int c0 = blockIdx.y * width;
  for (int i = ty * bx + tx; i < width; i += bx * by) {
    if (c0 + i < channels) {
      float tn = 0.f, tmean = 0.f, tm2 = 0.f;
      for (int k = 0; k < by; ++k) {
        welford_merge(tn, tmean, tm2, s_n[k], s_mean[k * width + i], s_m2[k * width + i]);
      }
      const int64_t out = static_cast<int64_t>(blockIdx.x) * channels + c0 + i;
      part_mean[out] = tmean;
      part_m2[out] = tm2;
    }
  }
  if (blockIdx.y == 0 && tx == 0 && ty == 0) {
    float total = 0.f;
    for (int k = 0; k < by; ++k) {
      total += s_n[k];
    }
    part_count[blockIdx.x] = total;
  }
}

// Thread c: Chan's combination of channel c's partials, in float64 and in partial order.
// The count of partial p is part_count[p * count_stride_part + c * count_stride_channel].
__global__ void __launch_bounds__(kCombineThreads)
    bn_stats_combine_kernel(const float* __restrict__ part_mean, const float* __restrict__ part_m2,
                            const float* __restrict__ part_count, int parts, int channels,
                            int count_stride_part, int count_stride_channel,
                            float* __restrict__ mean_out, float* __restrict__ var_out) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= channels) {
    return;
  }
  double n = 0.0, mean = 0.0, m2 = 0.0;
  for (int p = 0; p < parts; ++p) {
    const double nb =
        part_count[static_cast<int64_t>(p) * count_stride_part +
                   static_cast<int64_t>(c) * count_stride_channel];
    if (nb == 0.0) {
      continue;
    }
    const int64_t idx = static_cast<int64_t>(p) * channels + c;
    const double total = n + nb;
    const double delta = static_cast<double>(part_mean[idx]) - mean;
    mean += delta * (nb / total);
    m2 += static_cast<double>(part_m2[idx]) + delta * delta * (n * nb / total);
    n = total;
  }
  const float nan = __int_as_float(0x7fc00000);
  mean_out[c] = n > 0.0 ? static_cast<float>(mean) : nan;
  var_out[c] = n > 0.0 ? static_cast<float>(m2 / n) : nan;
}

// ---------------------------------------------------------------------------------------------
// bn_relu_backward_reduce kernels.
// ---------------------------------------------------------------------------------------------

// Block (c, s): as bn_stats_nchw_kernel, partial sum(dz) and sum(dz * (x - mean)) at [s, c].
template <typename T, int VEC>
__global__ void __launch_bounds__(kReduceThreads)
    bn_backward_reduce_nchw_kernel(const T* __restrict__ g, const T* __restrict__ x,
                                   BnParams params, int64_t numel, int channels, int hw_size,
                                   int vps, int work, int chunk, float* __restrict__ part_dz,
                                   float* __restrict__ part_dz_xmu) {
  const int c = blockIdx.x;
  const BnChannel ch = load_bn_channel(params, c);
  const int begin = blockIdx.y * chunk;
  const int end = min(work, begin + chunk);
  float sum_dz = 0.f, sum_dz_xmu = 0.f;
  for (int w0 = begin + static_cast<int>(threadIdx.x); w0 < end;
       w0 += kReduceThreads * kReduceUnroll) {
    PlaneVector pv[kReduceUnroll];
    Pack<T, VEC> xs[kReduceUnroll];
    Pack<T, VEC> gs[kReduceUnroll];
#pragma unroll
    for (int u = 0; u < kReduceUnroll; ++u) {
      const int w = w0 + u * kReduceThreads;
      pv[u].lo = 0;
      pv[u].hi = 0;
      if (w < end) {
        pv[u] = plane_vector<VEC>(w, c, channels, hw_size, vps);
        if (pv[u].hi > pv[u].lo) {
          xs[u] = load_plane_vector<T, VEC>(x, pv[u], numel);
          gs[u] = load_plane_vector<T, VEC>(g, pv[u], numel);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kReduceUnroll; ++u) {
      // Per-vector sums first: shorter running sums, less rounding.
      float a = 0.f, b = 0.f;
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        if (e >= pv[u].lo && e < pv[u].hi) {
          const float xv = static_cast<float>(xs[u].v[e]);
          const float dz = bn_preact(ch, xv) > 0.f ? static_cast<float>(gs[u].v[e]) : 0.f;
          a += dz;
          b = fmaf(dz, xv - ch.mean, b);
        }
      }
      sum_dz += a;
      sum_dz_xmu += b;
    }
  }
  block_sum2(sum_dz, sum_dz_xmu);
  if (threadIdx.x == 0) {
    const int64_t out = static_cast<int64_t>(blockIdx.y) * channels + c;
    part_dz[out] = sum_dz;
    part_dz_xmu[out] = sum_dz_xmu;
  }
}

// Block (p, cb): as bn_stats_cl_kernel, partial sums at [p, channel].
template <typename T, int VEC>
__global__ void __launch_bounds__(kClReduceThreads)
    bn_backward_reduce_cl_kernel(const T* __restrict__ g, const T* __restrict__ x,
                                 BnParams params, int64_t rows, int channels,
                                 int vector_columns, float* __restrict__ part_dz,
                                 float* __restrict__ part_dz_xmu) {
  __shared__ float s_a[kClReduceThreads * VEC];
  __shared__ float s_b[kClReduceThreads * VEC];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int bx = blockDim.x, by = blockDim.y;
  const int col = blockIdx.y * bx + tx;
  const bool active = col < vector_columns;
  const int64_t row_step = static_cast<int64_t>(gridDim.x) * by;
  const int64_t col_offset = static_cast<int64_t>(col) * VEC;

  BnChannel ch[VEC];
  float a[VEC], b[VEC];
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    ch[e] = active ? load_bn_channel(params, col * VEC + e) : BnChannel{0.f, 0.f, 0.f, 0.f};
    a[e] = 0.f;
    b[e] = 0.f;
  }
  for (int64_t r0 = static_cast<int64_t>(blockIdx.x) * by + ty; r0 < rows;
       r0 += kClBackwardUnroll * row_step) {
    Pack<T, VEC> xs[kClBackwardUnroll];
    Pack<T, VEC> gs[kClBackwardUnroll];
    bool ok[kClBackwardUnroll];
#pragma unroll
    for (int u = 0; u < kClBackwardUnroll; ++u) {
      const int64_t r = r0 + u * row_step;
      ok[u] = active && r < rows;
      if (ok[u]) {
        xs[u] = load_pack<T, VEC>(x + r * channels + col_offset);
        gs[u] = load_pack<T, VEC>(g + r * channels + col_offset);
      }
    }
#pragma unroll
    for (int u = 0; u < kClBackwardUnroll; ++u) {
      if (ok[u]) {
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          const float xv = static_cast<float>(xs[u].v[e]);
          const float dz = bn_preact(ch[e], xv) > 0.f ? static_cast<float>(gs[u].v[e]) : 0.f;
          a[e] += dz;
          b[e] = fmaf(dz, xv - ch[e].mean, b[e]);
        }
      }
    }
  }

  const int width = bx * VEC;
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    s_a[ty * width + tx * VEC + e] = a[e];
    s_b[ty * width + tx * VEC + e] = b[e];
  }
  __syncthreads();
  const int c0 = blockIdx.y * width;
  for (int i = ty * bx + tx; i < width; i += bx * by) {
    if (c0 + i < channels) {
      float ta = 0.f, tb = 0.f;
      for (int k = 0; k < by; ++k) {
        ta += s_a[k * width + i];
        tb += s_b[k * width + i];
      }
      const int64_t out = static_cast<int64_t>(blockIdx.x) * channels + c0 + i;
      part_dz[out] = ta;
      part_dz_xmu[out] = tb;
    }
  }
}

// Thread c: the sums of channel c's partials, in float64 and in partial order.
__global__ void __launch_bounds__(kCombineThreads)
    sum_partials_kernel(const float* __restrict__ part_a, const float* __restrict__ part_b,
                        int parts, int channels, float* __restrict__ a_out,
                        float* __restrict__ b_out) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= channels) {
    return;
  }
  double a = 0.0, b = 0.0;
  for (int p = 0; p < parts; ++p) {
    const int64_t idx = static_cast<int64_t>(p) * channels + c;
    a += part_a[idx];
    b += part_b[idx];
  }
  a_out[c] = static_cast<float>(a);
  b_out[c] = static_cast<float>(b);
}

// ---------------------------------------------------------------------------------------------
// Launch sizing.
// ---------------------------------------------------------------------------------------------

struct NchwSplit {
  int vps;     // vectors covering one plane
  int work;    // vectors covering one channel: N * vps
  int chunk;   // work items per block
  int splits;  // blocks per channel (gridDim.y)
};

// Fixed cost of a reduction block (its epilogue and scheduling), in vectors of work.
constexpr int64_t kBlockOverheadVectors = kReduceThreads;

// How many blocks share each channel. All blocks get the same work, so a launch takes about
// (waves of resident blocks) x (work per block + fixed cost): splits minimizes that. Filling
// the GPU only approximately would be costly: 1.1 waves of equal blocks take as long as two.
inline NchwSplit nchw_split(int64_t n, int64_t channels, int64_t hw_size, int vec,
                            int blocks_per_sm_) {
  NchwSplit s;
  // The aligned vectors overlapping a plane of hw_size elements that starts anywhere; exactly
  // hw_size / vec when planes start on vector boundaries (the data pointer is aligned).
  s.vps = static_cast<int>(hw_size % vec == 0 ? hw_size / vec
                                              : std::min<int64_t>((hw_size + 2 * vec - 2) / vec,
                                                                  hw_size));
  s.work = static_cast<int>(n * s.vps);
  const int64_t resident = static_cast<int64_t>(sm_count()) * blocks_per_sm_;
  // At least one vector per thread, and no more than about eight waves.
  const int64_t max_splits = std::max<int64_t>(
      1, std::min({int64_t{65535}, ceil_div(s.work, kReduceThreads),
                   ceil_div(8 * resident, channels)}));
  int64_t best = 1;
  int64_t best_cost = std::numeric_limits<int64_t>::max();
  for (int64_t splits = 1; splits <= max_splits; ++splits) {
    const int64_t waves = ceil_div(channels * splits, resident);
    const int64_t cost = waves * (ceil_div(s.work, splits) + kBlockOverheadVectors);
    if (cost < best_cost) {
      best = splits;
      best_cost = cost;
    }
  }
  s.chunk = static_cast<int>(ceil_div(s.work, best));
  s.splits = static_cast<int>(ceil_div(s.work, s.chunk));
  return s;
}

// Row blocks of a channels_last launch. The blocks stride over the rows, so one wave of
// resident blocks (rounded down: a few blocks over would make a second, nearly empty wave) is
// the whole launch; fewer when there are not `unroll` rows per thread to go round.
inline int cl_row_blocks(int64_t rows, const ClTiling& t, int unroll, int blocks_per_sm_) {
  const int64_t resident = static_cast<int64_t>(sm_count()) * blocks_per_sm_;
  const int64_t want = resident / t.gy;
  const int64_t most = ceil_div(rows, static_cast<int64_t>(t.by) * unroll);
  return static_cast<int>(std::max<int64_t>(1, std::min(want, most)));
}

// 16-byte vectors need every tensor's data aligned to 16 bytes and, in channels_last, C a
// multiple of the vector width (each row starts on a vector boundary). The NCHW elementwise
// kernel also needs H*W >= VEC (a vector then spans at most two planes); smaller planes take
// the one-element path, which costs little as they are rare.
template <int VEC>
bool can_vectorize(Layout layout, const at::Tensor& x, bool elementwise,
                   std::initializer_list<const at::Tensor*> ts) {
  if (layout == Layout::kChannelsLast && x.size(1) % VEC != 0) {
    return false;
  }
  if (layout == Layout::kNCHW && elementwise && x.size(2) * x.size(3) < VEC) {
    return false;
  }
  for (const at::Tensor* t : ts) {
    if (!is_vector_aligned(*t)) {
      return false;
    }
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Launchers.
// ---------------------------------------------------------------------------------------------

template <typename T, int VEC>
void launch_bn_stats(const at::Tensor& x, Layout layout, at::Tensor& mean, at::Tensor& var) {
  const int64_t n = x.size(0), channels = x.size(1), hw = x.size(2) * x.size(3);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const T* xp = x.const_data_ptr<T>();
  const auto fopts = x.options().dtype(at::kFloat);
  at::Tensor ws;
  int parts = 0, count_stride_part = 0, count_stride_channel = 0;
  if (layout == Layout::kNCHW) {
    const auto kernel = bn_stats_nchw_kernel<T, VEC>;
    const NchwSplit s = nchw_split(n, channels, hw, VEC, blocks_per_sm(kernel, kReduceThreads));
    parts = s.splits;
    ws = at::empty({3, parts, channels}, fopts);
    float* wsp = ws.mutable_data_ptr<float>();
    const int64_t plane = parts * channels;
    kernel<<<dim3(static_cast<unsigned>(channels), parts), kReduceThreads, 0, stream>>>(
        xp, x.numel(), static_cast<int>(channels), static_cast<int>(hw), s.vps, s.work, s.chunk,
        wsp, wsp + plane, wsp + 2 * plane);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    count_stride_part = static_cast<int>(channels);
    count_stride_channel = 1;
  } else {
    const auto kernel = bn_stats_cl_kernel<T, VEC>;
    const ClTiling t = cl_tiling(channels / VEC, kClReduceThreads, "bn_stats");
    parts = cl_row_blocks(n * hw, t, kClStatsUnroll, blocks_per_sm(kernel, t.bx * t.by));
    const int64_t plane = parts * channels;
    ws = at::empty({2 * plane + parts}, fopts);
    float* wsp = ws.mutable_data_ptr<float>();
    kernel<<<dim3(parts, t.gy), dim3(t.bx, t.by), 0, stream>>>(
        xp, n * hw, static_cast<int>(channels), static_cast<int>(channels / VEC), wsp,
        wsp + plane, wsp + 2 * plane);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    count_stride_part = 1;
    count_stride_channel = 0;
  }
  const float* wsp = ws.const_data_ptr<float>();
  const int64_t plane = static_cast<int64_t>(parts) * channels;
  bn_stats_combine_kernel<<<static_cast<unsigned>(ceil_div(channels, kCombineThreads)),
                            kCombineThreads, 0, stream>>>(
      wsp, wsp + plane, wsp + 2 * plane, parts, static_cast<int>(channels), count_stride_part,
      count_stride_channel, mean.mutable_data_ptr<float>(), var.mutable_data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int VEC>
void launch_bn_backward_reduce(const at::Tensor& grad_out, const at::Tensor& x,
                               const BnParams& params, Layout layout, at::Tensor& sum_dz,
                               at::Tensor& sum_dz_xmu) {
  const int64_t n = x.size(0), channels = x.size(1), hw = x.size(2) * x.size(3);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const T* gp = grad_out.const_data_ptr<T>();
  const T* xp = x.const_data_ptr<T>();
  const auto fopts = x.options().dtype(at::kFloat);
  at::Tensor ws;
  int parts = 0;
  if (layout == Layout::kNCHW) {
    const auto kernel = bn_backward_reduce_nchw_kernel<T, VEC>;
    const NchwSplit s = nchw_split(n, channels, hw, VEC, blocks_per_sm(kernel, kReduceThreads));
    parts = s.splits;
    ws = at::empty({2, parts, channels}, fopts);
    float* wsp = ws.mutable_data_ptr<float>();
    kernel<<<dim3(static_cast<unsigned>(channels), parts), kReduceThreads, 0, stream>>>(
        gp, xp, params, x.numel(), static_cast<int>(channels), static_cast<int>(hw), s.vps,
        s.work, s.chunk, wsp, wsp + static_cast<int64_t>(parts) * channels);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    const auto kernel = bn_backward_reduce_cl_kernel<T, VEC>;
    const ClTiling t = cl_tiling(channels / VEC, kClReduceThreads, "bn_relu_backward_reduce");
    parts = cl_row_blocks(n * hw, t, kClBackwardUnroll, blocks_per_sm(kernel, t.bx * t.by));
    ws = at::empty({2, parts, channels}, fopts);
    float* wsp = ws.mutable_data_ptr<float>();
    kernel<<<dim3(parts, t.gy), dim3(t.bx, t.by), 0, stream>>>(
        gp, xp, params, n * hw, static_cast<int>(channels), static_cast<int>(channels / VEC),
        wsp, wsp + static_cast<int64_t>(parts) * channels);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const float* wsp = ws.const_data_ptr<float>();
  sum_partials_kernel<<<static_cast<unsigned>(ceil_div(channels, kCombineThreads)),
                        kCombineThreads, 0, stream>>>(
      wsp, wsp + static_cast<int64_t>(parts) * channels, parts, static_cast<int>(channels),
      sum_dz.mutable_data_ptr<float>(), sum_dz_xmu.mutable_data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// y = op(x[, grad_out]) elementwise; g is nullptr when the op reads no gradient.
template <typename T, int VEC, typename Op>
void launch_bn_elementwise(const at::Tensor& x, const T* g, at::Tensor& y, Layout layout,
                           const Op& op, const char* op_name) {
  const int64_t n = x.size(0), channels = x.size(1), hw = x.size(2) * x.size(3);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const T* xp = x.const_data_ptr<T>();
  T* yp = y.mutable_data_ptr<T>();
  if (layout == Layout::kNCHW) {
    const auto kernel = bn_elementwise_nchw_kernel<T, VEC, Op>;
    const int64_t nvec = x.numel() / VEC;
    const int64_t wave = static_cast<int64_t>(sm_count()) * blocks_per_sm(kernel, kElemThreads);
    const int64_t blocks =
        std::max<int64_t>(1, std::min(wave, ceil_div(nvec, kElemThreads * kElemUnroll)));
    const int64_t step = blocks * kElemThreads * VEC;  // elements per grid-stride step
    kernel<<<static_cast<unsigned>(blocks), kElemThreads, 0, stream>>>(
        xp, g, yp, x.numel(), static_cast<int>(channels), static_cast<int>(hw),
        static_cast<int>(step % hw), static_cast<int>((step / hw) % channels), op);
  } else {
    const auto kernel = bn_elementwise_cl_kernel<T, VEC, Op>;
    const ClTiling t = cl_tiling(channels / VEC, kElemThreads, op_name);
    const int blocks =
        cl_row_blocks(n * hw, t, kElemUnroll, blocks_per_sm(kernel, t.bx * t.by));
    kernel<<<dim3(blocks, t.gy), dim3(t.bx, t.by), 0, stream>>>(
        xp, g, yp, n * hw, static_cast<int>(channels), static_cast<int>(channels / VEC), op);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---------------------------------------------------------------------------------------------
// The ops.
// ---------------------------------------------------------------------------------------------

// Checks shared by the ops that take the BatchNorm parameters; returns them as kernel pointers.
BnParams check_bn_params(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                         const std::optional<at::Tensor>& bias, const at::Tensor& mean,
                         const at::Tensor& invstd, const char* op) {
  const int64_t channels = x.size(1);
  check_channel_vector(mean, x, channels, op, "mean");
  check_channel_vector(invstd, x, channels, op, "invstd");
  BnParams p;
  p.weight = optional_channel_ptr(weight, x, channels, op, "weight");
  p.bias = optional_channel_ptr(bias, x, channels, op, "bias");
  p.mean = mean.const_data_ptr<float>();
  p.invstd = invstd.const_data_ptr<float>();
  return p;
}

std::tuple<at::Tensor, at::Tensor> bn_stats_cuda(const at::Tensor& x) {
  constexpr const char* kOp = "bn_stats";
  check_activation(x, kOp, "x");
  const Layout layout = pick_layout(kOp, x, {});
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t channels = x.size(1);
  const auto fopts = x.options().dtype(at::kFloat);
  at::Tensor mean = at::empty({channels}, fopts);
  at::Tensor var = at::empty({channels}, fopts);
  if (channels == 0) {
    return std::make_tuple(mean, var);
  }
  if (x.numel() == 0) {
    // No samples: undefined statistics, as torch.var_mean gives them.
    mean.fill_(std::numeric_limits<float>::quiet_NaN());
    var.fill_(std::numeric_limits<float>::quiet_NaN());
    return std::make_tuple(mean, var);
  }
  check_index_ranges(x, kOp);
  INCEPTION_FAST_DISPATCH(x.scalar_type(), "bn_stats_cuda", [&] {
    constexpr int kVec = kVectorBytes / static_cast<int>(sizeof(scalar_t));
    if (can_vectorize<kVec>(layout, x, false, {&x})) {
      launch_bn_stats<scalar_t, kVec>(x, layout, mean, var);
    } else {
      launch_bn_stats<scalar_t, 1>(x, layout, mean, var);
    }
  });
  return std::make_tuple(mean, var);
}

at::Tensor bn_relu_apply_cuda(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                              const std::optional<at::Tensor>& bias, const at::Tensor& mean,
                              const at::Tensor& invstd, bool /*training*/) {
  constexpr const char* kOp = "bn_relu_apply";
  check_activation(x, kOp, "x");
  const BnParams params = check_bn_params(x, weight, bias, mean, invstd, kOp);
  const Layout layout = pick_layout(kOp, x, {});
  const c10::cuda::CUDAGuard device_guard(x.device());
  at::Tensor y = at::empty_like(x);  // keeps x's strides, hence its layout
  if (x.numel() == 0) {
    return y;
  }
  check_index_ranges(x, kOp);
  INCEPTION_FAST_DISPATCH(x.scalar_type(), "bn_relu_apply_cuda", [&] {
    constexpr int kVec = kVectorBytes / static_cast<int>(sizeof(scalar_t));
    const ApplyOp op{params};
    if (can_vectorize<kVec>(layout, x, true, {&x, &y})) {
      launch_bn_elementwise<scalar_t, kVec>(x, nullptr, y, layout, op, kOp);
    } else {
      launch_bn_elementwise<scalar_t, 1>(x, nullptr, y, layout, op, kOp);
    }
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> bn_relu_backward_reduce_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& mean, const at::Tensor& invstd) {
  constexpr const char* kOp = "bn_relu_backward_reduce";
  check_activation(x, kOp, "x");
  check_activation(grad_out, kOp, "grad_out");
  check_like(grad_out, x, kOp, "grad_out", "x");
  const BnParams params = check_bn_params(x, weight, bias, mean, invstd, kOp);
  const Layout layout = pick_layout(kOp, x, {{&grad_out, "grad_out"}});
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t channels = x.size(1);
  const auto fopts = x.options().dtype(at::kFloat);
  if (x.numel() == 0) {
    return std::make_tuple(at::zeros({channels}, fopts), at::zeros({channels}, fopts));
  }
  check_index_ranges(x, kOp);
  at::Tensor sum_dz = at::empty({channels}, fopts);
  at::Tensor sum_dz_xmu = at::empty({channels}, fopts);
  INCEPTION_FAST_DISPATCH(x.scalar_type(), "bn_relu_backward_reduce_cuda", [&] {
    constexpr int kVec = kVectorBytes / static_cast<int>(sizeof(scalar_t));
    if (can_vectorize<kVec>(layout, x, false, {&x, &grad_out})) {
      launch_bn_backward_reduce<scalar_t, kVec>(grad_out, x, params, layout, sum_dz, sum_dz_xmu);
    } else {
      launch_bn_backward_reduce<scalar_t, 1>(grad_out, x, params, layout, sum_dz, sum_dz_xmu);
    }
  });
  return std::make_tuple(sum_dz, sum_dz_xmu);
}

at::Tensor bn_relu_backward_elemt_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                       const std::optional<at::Tensor>& weight,
                                       const std::optional<at::Tensor>& bias,
                                       const at::Tensor& mean, const at::Tensor& invstd,
                                       const std::optional<at::Tensor>& sum_dz,
                                       const std::optional<at::Tensor>& sum_dz_xmu,
                                       int64_t count) {
  constexpr const char* kOp = "bn_relu_backward_elemt";
  check_activation(x, kOp, "x");
  check_activation(grad_out, kOp, "grad_out");
  check_like(grad_out, x, kOp, "grad_out", "x");
  const BnParams params = check_bn_params(x, weight, bias, mean, invstd, kOp);
  const int64_t channels = x.size(1);
  const float* sum_dz_p = optional_channel_ptr(sum_dz, x, channels, kOp, "sum_dz");
  const float* sum_dz_xmu_p = optional_channel_ptr(sum_dz_xmu, x, channels, kOp, "sum_dz_xmu");
  const bool train = sum_dz_p != nullptr;
  TORCH_CHECK(train == (sum_dz_xmu_p != nullptr), kOp,
              ": sum_dz and sum_dz_xmu must be given together or both be None");
  TORCH_CHECK(!train || count > 0, kOp,
              ": count must be positive when the sums are given, got ", count);
  const Layout layout = pick_layout(kOp, x, {{&grad_out, "grad_out"}});
  const c10::cuda::CUDAGuard device_guard(x.device());
  at::Tensor grad_x = at::empty_like(x);
  if (x.numel() == 0) {
    return grad_x;
  }
  check_index_ranges(x, kOp);
  INCEPTION_FAST_DISPATCH(x.scalar_type(), "bn_relu_backward_elemt_cuda", [&] {
    constexpr int kVec = kVectorBytes / static_cast<int>(sizeof(scalar_t));
    const scalar_t* gp = grad_out.const_data_ptr<scalar_t>();
    const bool vec = can_vectorize<kVec>(layout, x, true, {&x, &grad_out, &grad_x});
    if (train) {
      const GradOp<true> op{params, sum_dz_p, sum_dz_xmu_p,
                            static_cast<float>(1.0 / static_cast<double>(count))};
      if (vec) {
        launch_bn_elementwise<scalar_t, kVec>(x, gp, grad_x, layout, op, kOp);
      } else {
        launch_bn_elementwise<scalar_t, 1>(x, gp, grad_x, layout, op, kOp);
      }
    } else {
      const GradOp<false> op{params, nullptr, nullptr, 1.f};
      if (vec) {
        launch_bn_elementwise<scalar_t, kVec>(x, gp, grad_x, layout, op, kOp);
      } else {
        launch_bn_elementwise<scalar_t, 1>(x, gp, grad_x, layout, op, kOp);
      }
    }
  });
  return grad_x;
}

// bn_stats_train in ATen ops around bn_stats (the CPU has a kernel of its own, csrc/cpu/bn_relu.cpp).
std::tuple<at::Tensor, at::Tensor> bn_stats_train_cuda(const at::Tensor& x,
                                                       const std::optional<at::Tensor>& running_mean,
                                                       const std::optional<at::Tensor>& running_var,
                                                       double momentum, double eps) {
  static auto stats = c10::Dispatcher::singleton()
                          .findSchemaOrThrow("inception_fast::bn_stats", "")
                          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&)>();
  TORCH_CHECK(running_mean.has_value() == running_var.has_value(),
              "bn_stats_train: running_mean and running_var must both be given or both be None");
  auto [mean, var] = stats.call(x);
  at::Tensor invstd = var.add(eps).rsqrt_();
  if (running_mean.has_value()) {
    at::NoGradGuard no_grad;
    const double count = static_cast<double>(x.numel() / x.size(1));
    const at::Tensor unbiased = count > 1 ? var.mul(count / (count - 1)) : var;
    running_mean->lerp_(mean.to(running_mean->scalar_type()), momentum);
    running_var->lerp_(unbiased.to(running_var->scalar_type()), momentum);
  }
  return {mean, invstd};
}

}  // namespace
}  // namespace cuda
}  // namespace inception_fast

TORCH_LIBRARY_IMPL(inception_fast, CUDA, m) {
  m.impl("bn_stats", TORCH_FN(inception_fast::cuda::bn_stats_cuda));
  m.impl("bn_relu_apply", TORCH_FN(inception_fast::cuda::bn_relu_apply_cuda));
  m.impl("bn_relu_backward_reduce",
         TORCH_FN(inception_fast::cuda::bn_relu_backward_reduce_cuda));
  m.impl("bn_relu_backward_elemt", TORCH_FN(inception_fast::cuda::bn_relu_backward_elemt_cuda));
  m.impl("bn_stats_train", TORCH_FN(inception_fast::cuda::bn_stats_train_cuda));
}
