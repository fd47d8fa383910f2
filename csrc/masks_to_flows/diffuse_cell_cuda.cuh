// One cell's heat diffusion on the GPU, shared by masks_to_flows_cuda.cu and flow_error_cuda.cu.
// Same arithmetic as cpu::diffuse_cell, bit for bit: the same neighbourhood_mean (fixed summation order, then
// * 1/9), the same "+ 1 at the centre" after every iteration but the last, and no contraction into FMA
// (the module is built with --fmad=false). Only log1p comes from another maths library (CUDA's, not glibc's):
// both are within an ulp of exact, so L may differ in its last bit, which float32 flows absorb in practice.
#pragma once
#include "common/cuda_common.cuh"
#include "masks_to_flows/masks_to_flows.h"

namespace percs::cuda {

// Diffuses cell c with all threads of the block (every thread must call it). a and b are the cell's two
// padded-box buffers, all zeros on entry; labels is the cell's image (row width W). Returns the buffer that
// holds log1p(T) on the whole padded box; the other buffer is then free. Ends with a block barrier.
__device__ inline double* diffuse_cell(const int32_t* __restrict__ labels, int64_t W, const CellBox& c, double* a,
                                       double* b) {
  const int64_t stride = c.w + 2;
  const int32_t n_interior = c.h * c.w;
  const int64_t centre = int64_t(c.cy - c.y0 + 1) * stride + (c.cx - c.x0 + 1);
  if (threadIdx.x == 0) a[centre] = 1.0;
  __syncthreads();
  double* T = a;
  double* next = b;
  const int32_t n_iter = diffusion_iterations(c);
  for (int32_t it = 0; it < n_iter; ++it) {
    const bool add_source = it + 1 < n_iter;
    for (int32_t k = threadIdx.x; k < n_interior; k += blockDim.x) {
      int32_t by, bx;
      interior_pixel(c, k, &by, &bx);
      const int64_t i = by * stride + bx;
      const bool inside = labels[image_pixel(c, W, by, bx)] == c.label;
      const double mean = inside ? neighbourhood_mean(T, stride, i) : 0.0;
      // The CPU stores the mean and then adds 1 at the centre: two roundings, reproduced here by the only
      // thread that touches next[centre], so no other thread can observe the intermediate value.
      next[i] = (add_source && i == centre) ? mean + 1.0 : mean;
    }
    // All of next is written before anyone reads it as T, and all of T is read before it is overwritten as
    // next in the following iteration. The padding ring of both buffers is never written and stays 0.
    __syncthreads();
    double* swap = T;
    T = next;
    next = swap;
  }
  const int64_t size = padded_box_size(c);
  for (int64_t i = threadIdx.x; i < size; i += blockDim.x) T[i] = log1p(T[i]);
  __syncthreads();
  return T;
}

}  // namespace percs::cuda
