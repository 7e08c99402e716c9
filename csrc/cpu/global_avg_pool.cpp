// global_avg_pool on the CPU: y[n, c] = mean of x[n, c, :, :], the classifier's pooling.
//
// Why: an optimize()d model's head is the global average pool, then the classifier. ATen's mean
// over (H, W) of a channels_last bfloat16 map ran at 5 GB/s (19 us for GoogLeNet's 7x7x1024 map in
// a loop, 73 us in the model's forward, 2-core Zen 4), most of it outside the arithmetic: a
// reduction over the strided dimensions, and a float32 temporary for the 16-bit types. Here a
// channels_last map is read as rows of channels, a block of channels summed over the pixels in
// vector registers; an NCHW map plane by plane.
//
// Semantics: the sum in float32 (float64 for float64), divided by H * W, rounded once to x's dtype,
// as ATen's mean. The order of the additions differs from ATen's cascade (pixels in chunks of
// kChunk, each chunk's sum added to the total), so float32 results can differ in the last bits.
// NaN propagates; an empty map (H * W == 0) gives NaN (0 / 0), as ATen's mean.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "cpu/common.h"

namespace inception_fast {
namespace cpu {
namespace {

constexpr int64_t kChunk = 256;      // pixels summed before their sum joins the total (bounds the error)
constexpr int64_t kBlockVecs = 4;    // vectors of channels a channels_last task sums side by side
constexpr int64_t kGrainBytes = 1 << 15;  // input bytes a parallel task reads at least

// channels_last: channels [c0, c1) of image n, summed over its S pixels (rows of C channels), into
// sum[0, c1 - c0).
template <typename T>
IF_CPU_CLONES void sum_cl(const T* __restrict__ x, acc_t<T>* __restrict__ sum, int64_t S, int64_t C, int64_t c0,
                          int64_t c1) {
  using A = acc_t<T>;
  using V = vec_t<A>;
  constexpr int64_t L = vec_lanes<A>;
  int64_t c = c0;
  for (; c + L <= c1; c += L * kBlockVecs) {
    const int64_t u_end = std::min<int64_t>(kBlockVecs, (c1 - c) / L);  // whole vectors in this block
    V total[kBlockVecs] = {};
    for (int64_t p0 = 0; p0 < S; p0 += kChunk) {
      const int64_t p1 = std::min(S, p0 + kChunk);
      V part[kBlockVecs] = {};
      if (u_end == kBlockVecs) {
        for (int64_t p = p0; p < p1; ++p)
          for (int64_t u = 0; u < kBlockVecs; ++u) part[u] += load_vec(x + p * C + c + u * L);
      } else {
        for (int64_t p = p0; p < p1; ++p)
          for (int64_t u = 0; u < u_end; ++u) part[u] += load_vec(x + p * C + c + u * L);
      }
      for (int64_t u = 0; u < u_end; ++u) total[u] += part[u];
    }
    for (int64_t u = 0; u < u_end; ++u) store_acc(sum + (c - c0) + u * L, total[u]);
    if (u_end < kBlockVecs) {
      c += u_end * L;
      break;
    }
  }
  // The channels after the last whole vector (fewer than L), pixel by pixel along the rows.
  const int64_t rest = c1 - c;
  if (rest > 0) {
    A total[L] = {};
    for (int64_t p0 = 0; p0 < S; p0 += kChunk) {
      A part[L] = {};
      const int64_t p1 = std::min(S, p0 + kChunk);
      for (int64_t p = p0; p < p1; ++p)
        for (int64_t j = 0; j < rest; ++j) part[j] += to_acc(x[p * C + c + j]);
      for (int64_t j = 0; j < rest; ++j) total[j] += part[j];
    }
    for (int64_t j = 0; j < rest; ++j) sum[c - c0 + j] = total[j];
  }
}

// NCHW: one plane of S contiguous values.
template <typename T>
IF_CPU_CLONES acc_t<T> sum_plane(const T* __restrict__ x, int64_t S) {
  using A = acc_t<T>;
  using V = vec_t<A>;
  constexpr int64_t L = vec_lanes<A>;
  V total{};
  A tail = 0;
  int64_t p = 0;
  for (; p + L <= S;) {
    const int64_t p1 = std::min(S - (S - p) % L, p + kChunk);
    V part{};
    for (; p < p1; p += L) part += load_vec(x + p);
    total += part;
  }
  for (; p < S; ++p) tail += to_acc(x[p]);
  A s = 0;
  for (int64_t l = 0; l < L; ++l) s += total[l];
  return s + tail;
}

template <typename T>
void run(const at::Tensor& x, at::Tensor& y, bool channels_last) {
  using A = acc_t<T>;
  const int64_t N = x.size(0), C = x.size(1), S = x.size(2) * x.size(3);
  const T* px = x.const_data_ptr<T>();
  T* py = y.mutable_data_ptr<T>();
  const int64_t pixel_bytes = std::max<int64_t>(1, S * static_cast<int64_t>(sizeof(T)));
  if (channels_last) {
    // Tasks: (image, block of channels); a block is a few vectors wide, and the grain keeps each
    // task's share of the map at kGrainBytes or more.
    constexpr int64_t block = kBlockVecs * vec_lanes<A>;
    const int64_t blocks = (C + block - 1) / block;
    const int64_t grain = std::max<int64_t>(1, kGrainBytes / (block * pixel_bytes));
    at::parallel_for(0, N * blocks, grain, [&](int64_t begin, int64_t end) {
      A sum[block];
      for (int64_t t = begin; t < end; ++t) {
        const int64_t n = t / blocks, c0 = (t % blocks) * block, c1 = std::min(C, c0 + block);
        sum_cl(px + n * S * C, sum, S, C, c0, c1);
        for (int64_t c = c0; c < c1; ++c) py[n * C + c] = from_acc<T>(sum[c - c0] / static_cast<A>(S));
      }
    });
  } else {
    const int64_t grain = std::max<int64_t>(1, kGrainBytes / pixel_bytes);
    at::parallel_for(0, N * C, grain, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) py[t] = from_acc<T>(sum_plane(px + t * S, S) / static_cast<A>(S));
    });
  }
}

at::Tensor global_avg_pool_cpu(const at::Tensor& x_in) {
  constexpr const char* op = "global_avg_pool";
  TORCH_CHECK(x_in.device().is_cpu(), op, ": x must be a CPU tensor for this kernel, got ", x_in.device());
  TORCH_CHECK(x_in.dim() == 4, op, ": x must be a 4-D (N, C, H, W) map, got shape ", x_in.sizes());
  check_float_dtype(x_in, op, "x");
  // Read in place when NCHW- or channels_last-contiguous; any other strides are made channels_last.
  // A channels_last map of fewer channels than a vector holds goes to ATen's mean: its rows are too
  // short for the channel vectors (4x ATen's time on a 5-channel 300x300 map, 2x after a copy to NCHW).
  const bool cl_in = !x_in.is_contiguous() && x_in.is_contiguous(at::MemoryFormat::ChannelsLast);
  if (!x_in.is_contiguous() && x_in.size(1) < 16) return x_in.mean(at::IntArrayRef{2, 3});
  const at::Tensor x = x_in.is_contiguous() || cl_in ? x_in : x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const bool channels_last = !x.is_contiguous();
  at::Tensor y = at::empty({x.size(0), x.size(1)}, x.options());
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), op,
                                  [&] { run<scalar_t>(x, y, channels_last); });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(inception_fast, CPU, m) { m.impl("global_avg_pool", &global_avg_pool_cpu); }

}  // namespace cpu
}  // namespace inception_fast
