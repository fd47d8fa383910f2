// masks_to_flows on the GPU: one thread block per cell, each cell diffused alone in its padded box in global
// scratch (cells are independent and boxes vary in size, so blocks need no coordination).
#include "cuda_ops.h"
#include "masks_to_flows/diffuse_cell_cuda.cuh"

namespace percs::cuda {
namespace {

__global__ void masks_to_flows_kernel(const int32_t* __restrict__ labels, int64_t H, int64_t W,
                                      const CellBox* __restrict__ cells, const int64_t* __restrict__ offsets,
                                      double* scratch, float* flows) {
  const CellBox c = cells[blockIdx.x];
  const int64_t plane = H * W;
  const int32_t* image = labels + int64_t(c.image) * plane;
  double* a = scratch + offsets[blockIdx.x];
  const double* L = diffuse_cell(image, W, c, a, a + padded_box_size(c));
  float* fy = flows + int64_t(c.image) * 2 * plane;
  float* fx = fy + plane;
  const int64_t stride = c.w + 2;
  const int32_t n_interior = c.h * c.w;
  // Every image pixel belongs to at most one cell, so blocks never write the same flow pixel.
  for (int32_t k = threadIdx.x; k < n_interior; k += blockDim.x) {
    int32_t by, bx;
    interior_pixel(c, k, &by, &bx);
    const int64_t p = image_pixel(c, W, by, bx);
    if (image[p] != c.label) continue;
    double dy, dx;
    unit_gradient(L, stride, by * stride + bx, &dy, &dx);
    fy[p] = float(dy);
    fx[p] = float(dx);
  }
}

}  // namespace

void masks_to_flows(const int32_t* labels, int64_t H, int64_t W, DeviceCells cells, double* scratch, float* flows,
                    void* stream) {
  require_non_negative(H, "H");
  require_non_negative(W, "W");
  require_non_negative(cells.n, "n_cells");
  if (cells.n == 0) return;
  masks_to_flows_kernel<<<cell_blocks(cells.n), THREADS, 0, as_stream(stream)>>>(
      labels, H, W, reinterpret_cast<const CellBox*>(cells.boxes), cells.scratch_offsets, scratch, flows);
  check_launch("masks_to_flows");
}

}  // namespace percs::cuda
