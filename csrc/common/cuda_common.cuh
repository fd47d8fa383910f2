// Helpers shared by the CUDA kernels and their launchers.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/common.h"

namespace percs::cuda {

// Threads per block everywhere; a power of two (the block reductions rely on it).
constexpr int THREADS = 256;
// Grid cap for the one-thread-per-item kernels, which loop over the rest (grid-stride).
constexpr int64_t MAX_BLOCKS = 65535;

inline cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

inline unsigned int item_blocks(int64_t n) {
  const int64_t blocks = (n + THREADS - 1) / THREADS;
  return unsigned(blocks < MAX_BLOCKS ? blocks : MAX_BLOCKS);
}

// One block per cell: n_cells < 2^31 always (cells have int32 labels), within gridDim.x's limit.
inline unsigned int cell_blocks(int64_t n_cells) { return unsigned(n_cells); }

// Throws when the kernel just launched on this thread could not start (bad configuration, no device, ...).
inline void check_launch(const char* kernel) {
  const cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess)
    throw std::runtime_error(std::string("percs CUDA kernel ") + kernel + " failed to launch: " +
                             cudaGetErrorString(error));
}

inline void require_non_negative(int64_t value, const char* name) {
  if (value < 0) throw std::invalid_argument(std::string(name) + " must be >= 0, got " + std::to_string(value));
}

__device__ __forceinline__ int64_t first_item() { return int64_t(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t item_stride() { return int64_t(gridDim.x) * blockDim.x; }

// Box coordinates (by, bx) of the k-th interior pixel of a padded box, k in [0, h * w) in raster order.
// 32-bit division: the caller guarantees padded_box_size(c) < 2^31.
__device__ __forceinline__ void interior_pixel(const CellBox& c, int32_t k, int32_t* by, int32_t* bx) {
  const uint32_t row = uint32_t(k) / uint32_t(c.w);
  *by = int32_t(row) + 1;
  *bx = k - int32_t(row) * c.w + 1;
}

// Flat image index of box pixel (by, bx) (interior pixels only).
__device__ __forceinline__ int64_t image_pixel(const CellBox& c, int64_t W, int32_t by, int32_t bx) {
  return int64_t(c.y0 + by - 1) * W + (c.x0 + bx - 1);
}

}  // namespace percs::cuda
