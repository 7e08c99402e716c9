// What winograd_conv3x3 (winograd_conv3x3.cpp) and winograd_conv1d (winograd_conv1d.cpp) share: the bias check, the
// map with no input channels, and the driver that runs a layer's tiles through the input transform,
// the A GEMMs ([tiles x C] x [C x K], one per transformed element) and the output transform.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "cpu/common.h"

namespace inception_fast {
namespace cpu {
namespace winograd {

// A chunk's transformed input and products (A x chunk x (C + K) floats) stay within this: on a large map
// or batch the whole of them would spill to DRAM (23 MB for a 71x71 map of 80 -> 192 channels).
constexpr int64_t kChunkBytes = 6 << 20;
// Tiles a thread needs for the per-thread blocks (see run).
constexpr int64_t kBlockTiles = 16;

// `lanes` floats (at most a vector's) from p into a vector, the lanes after them zero.
IF_INLINE vec_t<float> load_lanes(const float* p, int64_t lanes) {
  if (lanes == vec_lanes<float>) return load_vec(p);
  vec_t<float> v{};
  for (int64_t l = 0; l < lanes; ++l) v[l] = p[l];
  return v;
}

// The first `lanes` floats of v to p.
IF_INLINE void store_lanes(float* p, vec_t<float> v, int64_t lanes) {
  if (lanes == vec_lanes<float>) {
    store_vec(p, v);
  } else {
    for (int64_t l = 0; l < lanes; ++l) p[l] = v[l];
  }
}

inline bool check_bias(const char* op, const c10::optional<at::Tensor>& bias, int64_t k) {
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    TORCH_CHECK(bias->device().is_cpu() && bias->scalar_type() == at::kFloat && bias->dim() == 1 &&
                    bias->size(0) == k,
                op, ": bias must be a float32 CPU vector of ", k, " values");
  }
  return has_bias;
}

// y = act(bias) everywhere: the convolution of a map with no input channels.
inline at::Tensor bias_only(at::Tensor& y, const c10::optional<at::Tensor>& bias, bool has_bias, bool relu) {
  y.zero_();
  if (has_bias) y.add_(bias->view({1, y.size(1), 1, 1}));
  return relu ? y.relu_() : y;
}

// Runs `tiles` tiles of a layer, A transformed elements each, C input and K output channels, u (A, C, K):
//   in(v, first, count, t0, t1)  writes V[e][t - first][c] for the tiles t in [first + t0, first + t1)
//                                of the run first .. first + count (V[e] is count x C);
//   out(m, first, count, t0, t1) reads M[e][t - first][k] for those tiles and writes their outputs.
// Tiles go in chunks of equal size within kChunkBytes (a short last chunk of small GEMMs is slow), in
// this thread's scratch.
//
// Where every thread gets kBlockTiles tiles or more, each thread transforms its own block of a chunk's
// tiles, runs their GEMMs (single-threaded, nested in the parallel region) and transforms their products
// back: the data stays with the core that wrote it. Split the other way (the transforms divided by
// tiles, the batched GEMM by MKL's own split), each chunk's transformed input and products move between
// the cores twice, which made the ops up to ~2x slower, depending on where the scratch lay
// (benchmarks/results/cpu_limits_epyc-zen4_2core.txt). Layers of fewer than kBlockTiles tiles a thread
// (8x8 maps of one image) keep the split.
template <class In, class Out>
void run(int64_t tiles, int64_t a, int64_t c, int64_t k, const at::Tensor& u, const at::TensorOptions& opts,
         const In& in, const Out& out) {
  const int64_t per_tile = a * (c + k) * static_cast<int64_t>(sizeof(float));
  const int64_t chunks = std::max<int64_t>(1, (tiles * per_tile + kChunkBytes - 1) / kChunkBytes);
  const int64_t chunk = std::min<int64_t>(tiles, std::max<int64_t>(16, (tiles + chunks - 1) / chunks));
  float* scratch = thread_scratch(a * chunk * (c + k));
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  if (threads > 1 && tiles >= kBlockTiles * threads) {
    for (int64_t c0 = 0; c0 < tiles; c0 += chunk) {
      const int64_t n = std::min(chunk, tiles - c0);
      const int64_t blocks = std::min<int64_t>(threads, std::max<int64_t>(1, n / 16));
      const int64_t bs = (n + blocks - 1) / blocks;
      at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t first = c0 + b * bs, cnt = std::min(bs, n - b * bs);
          if (cnt <= 0) continue;
          float* pv = scratch + a * b * bs * (c + k);
          float* pm = pv + a * cnt * c;
          in(pv, first, cnt, int64_t{0}, cnt);
          at::Tensor mc = at::from_blob(pm, {a, cnt, k}, opts);
          at::bmm_out(mc, at::from_blob(pv, {a, cnt, c}, opts), u);
          out(static_cast<const float*>(pm), first, cnt, int64_t{0}, cnt);
        }
      });
    }
    return;
  }
  // a task is a few tiles: ~16 KiB of the transformed input (output) each
  const int64_t grain_in = std::max<int64_t>(1, 1024 / std::max<int64_t>(1, c));
  const int64_t grain_out = std::max<int64_t>(1, 1024 / std::max<int64_t>(1, k));
  for (int64_t c0 = 0; c0 < tiles; c0 += chunk) {
    const int64_t n = std::min(chunk, tiles - c0);
    float* pv = scratch;
    float* pm = scratch + a * n * c;
    at::parallel_for(0, n, grain_in, [&](int64_t t0, int64_t t1) { in(pv, c0, n, t0, t1); });
    at::Tensor mc = at::from_blob(pm, {a, n, k}, opts);
    at::bmm_out(mc, at::from_blob(pv, {a, n, c}, opts), u);  // (A, n, K): A GEMMs
    at::parallel_for(0, n, grain_out, [&](int64_t t0, int64_t t1) { out(static_cast<const float*>(pm), c0, n, t0, t1); });
  }
}

}  // namespace winograd
}  // namespace cpu
}  // namespace inception_fast
