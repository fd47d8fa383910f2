// follow_flows on the CPU. Each step of a point waits on the previous one (a chain of loads and float ops),
// so every thread advances LANES points in lock-step to overlap their latencies.
#include "cpu_ops.h"
#include "follow_flows/follow_flows.h"

namespace percs::cpu {

constexpr int64_t LANES = 8;

void follow_flows(const float* yx_flows, int64_t H, int64_t W, float* points, int64_t n_points, int32_t niter) {
  const int64_t n_groups = (n_points + LANES - 1) / LANES;
#pragma omp parallel for schedule(dynamic, 64)
  for (int64_t g = 0; g < n_groups; ++g) {
    const int64_t first = g * LANES;
    const int64_t lanes = n_points - first < LANES ? n_points - first : LANES;
    EulerPath paths[LANES];
    for (int64_t k = 0; k < lanes; ++k) paths[k] = start_path(points[2 * (first + k)], points[2 * (first + k) + 1]);
    bool active = true;
    while (active) {
      active = false;
      for (int64_t k = 0; k < lanes; ++k) active |= advance_path(yx_flows, H, W, niter, paths[k]);
    }
    for (int64_t k = 0; k < lanes; ++k) {
      points[2 * (first + k)] = paths[k].y;
      points[2 * (first + k) + 1] = paths[k].x;
    }
  }
}

}  // namespace percs::cpu
