#pragma once

#include "carseg/predictor.h"

namespace carseg {

/// Latency of the model alone, in milliseconds, over timed calls of Predictor::forward.
struct LatencyStats {
  double p50 = 0, p90 = 0, p99 = 0, mean = 0;  // nearest-rank percentiles
  int iters = 0;
  double images_per_second = 0;  // batch / mean
};

/// Times `predictor.forward` on a random float [batch, 3, height, width] batch on the
/// predictor's device: `warmup` untimed calls, then `iters` timed ones, each complete
/// (synchronized) when it returns. `cuda_graphs` lets CUDA replay a captured graph.
[[nodiscard]] LatencyStats time_forward(const Predictor& predictor, int batch, int height,
                                        int width, int iters, int warmup, bool cuda_graphs);

}  // namespace carseg
