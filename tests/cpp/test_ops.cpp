// Calls the ops of libinception_fast through the dispatcher, as any C++ program using the library
// would, and compares them with ATen's eager compositions. Exit status 0 = all checks passed.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <cstdio>
#include <string>
#include <tuple>

namespace {

int failures = 0;

void check(bool ok, const char* what) {
  std::printf("%s: %s\n", ok ? "ok  " : "FAIL", what);
  if (!ok) ++failures;
}

double rel_err(const at::Tensor& a, const at::Tensor& ref) {
  auto a64 = a.to(at::kDouble), r64 = ref.to(at::kDouble);
  return ((a64 - r64).norm() / r64.norm()).item<double>();
}

template <typename Fn>
auto op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

}  // namespace

int main() {
  torch::manual_seed(0);
  for (auto mf : {at::MemoryFormat::Contiguous, at::MemoryFormat::ChannelsLast}) {
    const bool cl = mf == at::MemoryFormat::ChannelsLast;
    auto x = (torch::randn({4, 13, 7, 9}) * 2 + 0.5).contiguous(mf);
    auto r = torch::randn({4, 13, 7, 9}).contiguous(mf);

    auto residual = op<at::Tensor(const at::Tensor&, const at::Tensor&, double, bool)>(
        "inception_fast::scaled_residual_add");
    auto y = residual.call(x, r, 0.17, true);
    check(rel_err(y, at::relu(x + 0.17 * r)) < 1e-6, cl ? "scaled_residual_add (channels_last)" : "scaled_residual_add");
    check(y.is_contiguous(mf), "scaled_residual_add keeps the memory format");

    auto stats = op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&)>("inception_fast::bn_stats");
    auto [mean, var] = stats.call(x);
    check(rel_err(mean, x.mean({0, 2, 3})) < 1e-6, "bn_stats mean");
    check(rel_err(var, x.var({0, 2, 3}, /*unbiased=*/false)) < 1e-6, "bn_stats var");

    auto apply = op<at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                               const at::Tensor&, const at::Tensor&, bool)>("inception_fast::bn_relu_apply");
    auto w = torch::rand({13}) + 0.5, b = torch::randn({13});
    auto invstd = torch::rsqrt(var + 1e-3);
    auto out = apply.call(x, w, b, mean, invstd, true);
    auto ref = at::relu(at::batch_norm(x, w, b, {}, {}, /*training=*/true, 0.1, 1e-3, /*cudnn_enabled=*/false));
    check(rel_err(out, ref) < 1e-5, cl ? "bn_relu_apply (channels_last)" : "bn_relu_apply");
  }
  // Bad input gives an exception that names the problem, not a crash.
  bool threw = false;
  try {
    op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&)>("inception_fast::bn_stats").call(torch::randn({3, 4}));
  } catch (const c10::Error& e) {
    threw = std::string(e.what()).find("4-D") != std::string::npos;
  }
  check(threw, "bn_stats rejects a 2-D input with a clear message");
  // Every schema is declared here, by csrc/ops.cpp, also those whose kernel is another module's
  // (onednn_conv's: the Python module inception_fast._onednn, which this library does not build).
  for (const char* name : {"inception_fast::onednn_conv", "inception_fast::onednn_conv_pack",
                           "inception_fast::_branch_conv_emulated", "inception_fast::winograd_weight1d"}) {
    const std::string what = std::string(name) + " declared";
    check(c10::Dispatcher::singleton().findSchema({name, ""}).has_value(), what.c_str());
  }
  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? 0 : 1;
}
