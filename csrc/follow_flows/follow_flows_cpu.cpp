// follow_flows on the CPU: points are independent, split across threads in raster order (cache friendly).
#include "cpu_ops.h"
#include "follow_flows/follow_flows.h"

namespace percs::cpu {

void follow_flows(const float* flows, int64_t H, int64_t W, float* points, int64_t n_points, int32_t niter) {
#pragma omp parallel for schedule(static, 256)
  for (int64_t k = 0; k < n_points; ++k) euler_steps(flows, H, W, niter, points + 2 * k, points + 2 * k + 1);
}

}  // namespace percs::cpu
