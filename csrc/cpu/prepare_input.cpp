// prepare_input on the CPU: an optimize()d model's input conversion and NaN check in one pass.
//
// Why: optimize()'s forward took a float32 NCHW batch through x.to(bf16, channels_last) (ATen's
// strided copy, slow with 3 channels), then x.isnan().flatten(1).any(1) (two more passes and a bool
// temporary) to put NaN back in the rows whose input held one (oneDNN's ReLU post-op maps NaN to 0).
// On googlenet bf16 that was 1.55 ms of a 63 ms forward at batch 8, 0.3 ms of 11 ms at batch 1.
// Here each (image, row) is read once: converted, written in the target layout, and checked.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "cpu/common.h"

namespace inception_fast {
namespace cpu {
namespace {

// One input row (image n, row h) of every channel: converted to To, into a channels_last row
// (dst[w * C + c]) or C NCHW rows (dst[c * HW + w]); returns whether it held a NaN.
template <typename Ti, typename To>
IF_CPU_CLONES bool convert_row(const Ti* src, int64_t sc, int64_t sw, int64_t C, int64_t W, To* dst,
                               bool channels_last, int64_t hw) {
  using A = acc_t<Ti>;
  bool nan = false;
  int64_t w0 = 0;
  if constexpr (std::is_same_v<A, float> && !std::is_same_v<To, double>) {
    // 16 columns at a time: a vector per channel, converted, then interleaved (channels_last) or
    // stored as is (NCHW); the scalar loop below takes the tail.
    constexpr int64_t L = vec_lanes<float>;
    constexpr int64_t kMaxC = 8;
    if (sw == 1 && C <= kMaxC) {
      vec_t<float> nanv{};
      To tmp[kMaxC][L];
      for (; w0 + L <= W; w0 += L) {
        for (int64_t c = 0; c < C; ++c) {
          const vec_t<float> v = load_vec(src + c * sc + w0);
          nanv = (v != v) ? v : nanv;
          if (channels_last) {
            store_vec(tmp[c], v);
          } else {
            store_vec(dst + c * hw + w0, v);
          }
        }
        if (channels_last) {
          for (int64_t l = 0; l < L; ++l) {
            for (int64_t c = 0; c < C; ++c) dst[(w0 + l) * C + c] = tmp[c][l];
          }
        }
      }
      for (int l = 0; l < L; ++l) nan |= nanv[l] != nanv[l];
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    const Ti* s = src + c * sc;
    To* d = channels_last ? dst + c : dst + c * hw;
    const int64_t ds = channels_last ? C : 1;
    for (int64_t w = w0; w < W; ++w) {  // the vector path's tail, or all of a row it does not take
      const A v = to_acc(s[w * sw]);
      nan |= v != v;
      d[w * ds] = from_acc<To>(static_cast<acc_t<To>>(v));
    }
  }
  return nan;
}

template <typename Ti, typename To>
void run(const at::Tensor& x, at::Tensor& y, bool channels_last, std::vector<uint8_t>& row_nan) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t sn = x.stride(0), sc = x.stride(1), sh = x.stride(2), sw = x.stride(3);
  const Ti* px = x.const_data_ptr<Ti>();
  To* py = y.mutable_data_ptr<To>();
  at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / H, h = r % H;
      To* dst = channels_last ? py + (n * H + h) * W * C : py + n * C * H * W + h * W;
      row_nan[r] = convert_row(px + n * sn + h * sh, sc, sw, C, W, dst, channels_last, H * W);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> prepare_input_cpu(const at::Tensor& x, at::ScalarType dtype, bool channels_last) {
  constexpr const char* op = "prepare_input";
  TORCH_CHECK(x.device().is_cpu(), op, ": x must be a CPU tensor for this kernel, got ", x.device());
  TORCH_CHECK(x.dim() == 4, op, ": x must be a 4-D (N, C, H, W) batch, got shape ", x.sizes());
  check_float_dtype(x, op, "x");
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, op,
              ": dtype must be float32, bfloat16 or float16, got ", dtype);
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor y = at::empty(x.sizes(), x.options().dtype(dtype).memory_format(format));
  const int64_t N = x.size(0), H = x.size(2);
  std::vector<uint8_t> row_nan(static_cast<size_t>(N * H), 0);
  if (x.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "prepare_input", [&] {
      using Ti = scalar_t;
      switch (dtype) {
        case at::kFloat:
          run<Ti, float>(x, y, channels_last, row_nan);
          break;
        case at::kBFloat16:
          run<Ti, c10::BFloat16>(x, y, channels_last, row_nan);
          break;
        default:
          run<Ti, c10::Half>(x, y, channels_last, row_nan);
      }
    });
  }
  at::Tensor nan_rows = at::empty({N}, x.options().dtype(at::kBool));
  bool* pn = nan_rows.mutable_data_ptr<bool>();
  for (int64_t n = 0; n < N; ++n) {
    bool any = false;
    for (int64_t h = 0; h < H; ++h) any |= row_nan[n * H + h] != 0;
    pn[n] = any;
  }
  return {y, nan_rows};
}

}  // namespace

TORCH_LIBRARY_IMPL(inception_fast, CPU, m) { m.impl("prepare_input", &prepare_input_cpu); }

}  // namespace cpu
}  // namespace inception_fast
