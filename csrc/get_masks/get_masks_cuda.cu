// get_masks on the GPU, as four kernels; seed ranking, size filtering and renumbering are torch ops in
// percs/_flows_cuda.py. Every step is integer arithmetic or round_coordinate, so the result equals the CPU's.
#include "common/cuda_common.cuh"
#include "cuda_ops.h"
#include "get_masks/get_masks.h"

namespace percs::cuda {
namespace {

__device__ __forceinline__ int64_t clamp_index(int64_t v, int64_t n) { return v < 0 ? 0 : (v >= n ? n - 1 : v); }

__global__ void histogram_kernel(const float* __restrict__ endpoints, int64_t n_points, int64_t H, int64_t W,
                                 int64_t* end_index, int32_t* hist) {
  for (int64_t k = first_item(); k < n_points; k += item_stride()) {
    // follow_flows keeps end points inside the image; the clamp only guards memory against a bad caller.
    const int64_t y = clamp_index(round_coordinate(endpoints[2 * k]), H);
    const int64_t x = clamp_index(round_coordinate(endpoints[2 * k + 1]), W);
    end_index[k] = y * W + x;
    atomicAdd(hist + y * W + x, 1);
  }
}

__global__ void seed_flags_kernel(const int32_t* __restrict__ hist, int64_t H, int64_t W, int32_t seed_min_count,
                                  uint8_t* flags) {
  for (int64_t p = first_item(); p < H * W; p += item_stride())
    flags[p] = is_seed(hist, H, W, p / W, p % W, seed_min_count) ? 1 : 0;
}

// One thread per seed. The CPU paints seeds in rank order, so a pixel ends with the largest rank + 1 among the
// regions covering it: atomicMax gives that in any order.
__global__ void paint_seeds_kernel(const int32_t* __restrict__ hist, int64_t H, int64_t W,
                                   const int64_t* __restrict__ seeds, int64_t n_seeds, int32_t grow_min_count,
                                   int32_t* painted) {
  for (int64_t k = first_item(); k < n_seeds; k += item_stride()) {
    const int64_t y = seeds[k] / W, x = seeds[k] % W;
    uint8_t region[GROW_WINDOW * GROW_WINDOW];
    grow_seed(hist, H, W, y, x, grow_min_count, region);
    for (int i = 0; i < GROW_WINDOW; ++i) {
      for (int j = 0; j < GROW_WINDOW; ++j) {
        // grow_seed never sets a window pixel outside the image.
        if (region[i * GROW_WINDOW + j])
          atomicMax(painted + (y + i - GROW_RADIUS) * W + (x + j - GROW_RADIUS), int32_t(k + 1));
      }
    }
  }
}

// pixel_index holds distinct pixels (flows_to_masks' start pixels), so each label has one writer.
__global__ void assign_labels_kernel(const int64_t* __restrict__ pixel_index, const int64_t* __restrict__ end_index,
                                     int64_t n_points, const int32_t* __restrict__ painted, int32_t* labels) {
  for (int64_t k = first_item(); k < n_points; k += item_stride()) labels[pixel_index[k]] = painted[end_index[k]];
}

}  // namespace

void histogram_endpoints(const float* endpoints, int64_t n_points, int64_t H, int64_t W, int64_t* end_index,
                         int32_t* hist, void* stream) {
  require_non_negative(n_points, "n_points");
  if (n_points == 0) return;
  if (H <= 0 || W <= 0) throw std::invalid_argument("endpoints: the image is empty but there are end points");
  histogram_kernel<<<item_blocks(n_points), THREADS, 0, as_stream(stream)>>>(endpoints, n_points, H, W, end_index,
                                                                              hist);
  check_launch("histogram_endpoints");
}

void seed_flags(const int32_t* hist, int64_t H, int64_t W, int32_t seed_min_count, uint8_t* flags, void* stream) {
  require_non_negative(H, "H");
  require_non_negative(W, "W");
  if (H * W == 0) return;
  seed_flags_kernel<<<item_blocks(H * W), THREADS, 0, as_stream(stream)>>>(hist, H, W, seed_min_count, flags);
  check_launch("seed_flags");
}

void paint_seeds(const int32_t* hist, int64_t H, int64_t W, const int64_t* seeds, int64_t n_seeds,
                 int32_t grow_min_count, int32_t* painted, void* stream) {
  require_non_negative(n_seeds, "n_seeds");
  if (n_seeds == 0) return;
  if (H <= 0 || W <= 0) throw std::invalid_argument("seeds: the image is empty but there are seeds");
  paint_seeds_kernel<<<item_blocks(n_seeds), THREADS, 0, as_stream(stream)>>>(hist, H, W, seeds, n_seeds,
                                                                                grow_min_count, painted);
  check_launch("paint_seeds");
}

void assign_labels(const int64_t* pixel_index, const int64_t* end_index, int64_t n_points, const int32_t* painted,
                   int32_t* labels, void* stream) {
  require_non_negative(n_points, "n_points");
  if (n_points == 0) return;
  assign_labels_kernel<<<item_blocks(n_points), THREADS, 0, as_stream(stream)>>>(pixel_index, end_index, n_points,
                                                                                  painted, labels);
  check_launch("assign_labels");
}

}  // namespace percs::cuda
