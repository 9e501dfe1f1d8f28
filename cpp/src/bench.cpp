#include "carseg/bench.h"

#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <vector>

#include "carseg/error.h"

namespace carseg {

LatencyStats time_forward(const Predictor& predictor, int batch, int height, int width, int iters,
                          int warmup, bool cuda_graphs) {
  if (batch < 1 || height < 1 || width < 1 || iters < 1 || warmup < 0) {
    throw OptionError("bench", "expected batch, height, width and iters >= 1 and warmup >= 0");
  }
  torch::Tensor x;
  {
    c10::InferenceMode guard;
    x = torch::randn({batch, 3, height, width}, torch::TensorOptions().device(predictor.device()));
  }
  for (int i = 0; i < warmup; ++i) (void)predictor.forward(x, cuda_graphs);
  std::vector<double> ms;
  ms.reserve(static_cast<std::size_t>(iters));
  for (int i = 0; i < iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    (void)predictor.forward(x, cuda_graphs);  // synchronizes its stream on CUDA
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  auto pct = [&](double q) {  // nearest rank
    const auto k = static_cast<std::size_t>(std::ceil(q * static_cast<double>(ms.size())));
    return ms[std::min(ms.size() - 1, k == 0 ? 0 : k - 1)];
  };
  LatencyStats s;
  s.p50 = pct(0.50);
  s.p90 = pct(0.90);
  s.p99 = pct(0.99);
  for (const double v : ms) s.mean += v;
  s.mean /= static_cast<double>(ms.size());
  s.iters = iters;
  s.images_per_second = batch * 1000.0 / s.mean;
  return s;
}

}  // namespace carseg
