// flow_error on the GPU: one thread block per mask, the masks_to_flows diffusion, then a block reduction whose
// order depends only on THREADS, so the result is the same from run to run.
#include "cuda_ops.h"
#include "flow_error/flow_error.h"
#include "masks_to_flows/diffuse_cell_cuda.cuh"

namespace percs::cuda {
namespace {

// Tree sum of one value per thread; returns the total in thread 0. blockDim.x must be THREADS.
__device__ void block_sum(double* shared_sum, int32_t* shared_count, double sum, int32_t count) {
  shared_sum[threadIdx.x] = sum;
  shared_count[threadIdx.x] = count;
  __syncthreads();
  for (int half = THREADS / 2; half > 0; half /= 2) {
    if (int(threadIdx.x) < half) {
      shared_sum[threadIdx.x] += shared_sum[threadIdx.x + half];
      shared_count[threadIdx.x] += shared_count[threadIdx.x + half];
    }
    __syncthreads();
  }
}

__global__ void __launch_bounds__(THREADS)
    flow_error_kernel(const int32_t* __restrict__ labels, const float* __restrict__ unit_flows, int64_t H, int64_t W,
                      const CellBox* __restrict__ cells, const int64_t* __restrict__ offsets, double* scratch,
                      double* errors) {
  __shared__ double shared_sum[THREADS];
  __shared__ int32_t shared_count[THREADS];
  const CellBox c = cells[blockIdx.x];
  double* a = scratch + offsets[blockIdx.x];
  const double* L = diffuse_cell(labels, W, c, a, a + padded_box_size(c));
  const int64_t plane = H * W;
  const int64_t stride = c.w + 2;
  const int32_t n_interior = c.h * c.w;
  double sum = 0.0;
  int32_t area = 0;  // < padded_box_size(c) < 2^31
  for (int32_t k = threadIdx.x; k < n_interior; k += blockDim.x) {
    int32_t by, bx;
    interior_pixel(c, k, &by, &bx);
    const int64_t p = image_pixel(c, W, by, bx);
    if (labels[p] != c.label) continue;
    double dy, dx;
    unit_gradient(L, stride, by * stride + bx, &dy, &dx);
    sum += squared_flow_difference(dy, dx, unit_flows[p], unit_flows[plane + p]);
    area += 1;
  }
  block_sum(shared_sum, shared_count, sum, area);
  // Labels are unique among the cells, so each entry has one writer. area >= 1: the centre is in the cell.
  if (threadIdx.x == 0) errors[c.label - 1] = shared_sum[0] / double(shared_count[0]);
}

}  // namespace

void flow_error(const int32_t* labels, const float* unit_flows, int64_t H, int64_t W, DeviceCells cells,
                double* scratch, double* errors, void* stream) {
  require_non_negative(H, "H");
  require_non_negative(W, "W");
  require_non_negative(cells.n, "n_cells");
  if (cells.n == 0) return;
  flow_error_kernel<<<cell_blocks(cells.n), THREADS, 0, as_stream(stream)>>>(
      labels, unit_flows, H, W, reinterpret_cast<const CellBox*>(cells.boxes), cells.scratch_offsets, scratch,
      errors);
  check_launch("flow_error");
}

}  // namespace percs::cuda
