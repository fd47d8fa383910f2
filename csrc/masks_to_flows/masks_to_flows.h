// masks_to_flows: label image -> unit flow field by heat diffusion from each cell's centre (Cellpose).
//
// Contract (both backends):
//   labels : (B, H, W) int32, 0 = background, labels 1..N_b in each image (gaps allowed, max label <= H * W)
//   flows  : (B, 2, H, W) float32 out, (dy, dx) unit vectors inside cells, 0 on background and where the
//            gradient vanishes (one-pixel cells)
// Centre of a cell: the cell pixel nearest (Euclidean) to the median y and median x of its pixels, the first
// such pixel in raster order on ties (as Cellpose). Diffusion: each cell alone inside its bounding box padded
// by one pixel, T = 0 outside the cell; 2 * (h + w) Jacobi iterations of "add 1 at the centre, then replace
// every cell pixel by the mean of its 3x3 neighbourhood"; then flows = normalised central differences of
// log1p(T). Temperatures are float64 (far from the centre of a long cell they fall below 1e-30).
#pragma once
#include <cmath>

#include "common/common.h"

namespace percs {

PERCS_HD int32_t diffusion_iterations(const CellBox& c) { return 2 * (c.h + c.w); }

constexpr double NINTH = 1.0 / 9.0;

// Sum of the 3x3 neighbourhood of box index i, in mirror-symmetric pairs: centre + ((up + down) + (left +
// right)) + ((up-left + down-right) + (up-right + down-left)). Mirroring the box about either axis or its
// diagonal only swaps the operands of a pair or the two pairs, so a mirror-symmetric cell gets exactly
// mirror-symmetric temperatures and its centre gradient is exactly 0 whatever log1p rounds to. The NumPy
// reference uses the same order, so all implementations agree to the bit.
PERCS_HD double neighbourhood_sum(const double* T, int64_t stride, int64_t i) {
  const double cross = (T[i - stride] + T[i + stride]) + (T[i - 1] + T[i + 1]);
  const double diagonals =
      (T[i - stride - 1] + T[i + stride + 1]) + (T[i - stride + 1] + T[i + stride - 1]);
  return T[i] + cross + diagonals;
}

// Mean of the 3x3 neighbourhood, as sum * (1/9) (a multiply, not a division: it vectorises; every
// implementation uses this exact form).
PERCS_HD double neighbourhood_mean(const double* T, int64_t stride, int64_t i) {
  return neighbourhood_sum(T, stride, i) * NINTH;
}

// Unit gradient of L = log1p(T) at box index i by central differences; (0, 0) where it vanishes.
PERCS_HD void unit_gradient(const double* L, int64_t stride, int64_t i, double* dy, double* dx) {
  const double gy = L[i + stride] - L[i - stride];
  const double gx = L[i + 1] - L[i - 1];
  const double norm = sqrt(gy * gy + gx * gx);
  if (norm > 0.0) {
    *dy = gy / norm;
    *dx = gx / norm;
  } else {
    *dy = 0.0;
    *dx = 0.0;
  }
}

}  // namespace percs
