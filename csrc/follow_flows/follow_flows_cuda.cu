// follow_flows on the GPU: one thread per point, the CPU's advance_path (cycle skipping included), so end
// points are bit-identical to the CPU's.
#include "common/cuda_common.cuh"
#include "cuda_ops.h"
#include "follow_flows/follow_flows.h"

namespace percs::cuda {
namespace {

__global__ void follow_flows_kernel(const float* __restrict__ yx_flows, int64_t H, int64_t W, float* points,
                                    int64_t n_points, int32_t niter) {
  for (int64_t k = first_item(); k < n_points; k += item_stride()) {
    EulerPath path = start_path(points[2 * k], points[2 * k + 1]);
    while (advance_path(yx_flows, H, W, niter, path)) {
    }
    points[2 * k] = path.y;
    points[2 * k + 1] = path.x;
  }
}

}  // namespace

void follow_flows(const float* yx_flows, int64_t H, int64_t W, float* points, int64_t n_points, int32_t niter,
                  void* stream) {
  require_non_negative(n_points, "n_points");
  require_non_negative(niter, "niter");
  if (n_points == 0) return;
  if (H <= 0 || W <= 0) throw std::invalid_argument("flows is empty but points is not");
  follow_flows_kernel<<<item_blocks(n_points), THREADS, 0, as_stream(stream)>>>(yx_flows, H, W, points, n_points,
                                                                                 niter);
  check_launch("follow_flows");
}

}  // namespace percs::cuda
