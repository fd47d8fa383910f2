// follow_flows: Euler integration of points along a unit flow field.
//
// Contract (both backends):
//   flows  : (2, H, W) float32, (dy, dx) unit flows (the caller divides the network's output by FLOW_SCALE)
//   points : (N, 2) float32 in/out, (y, x) positions in pixel units
// Coordinates: pixel (i, j) has its centre at (y, x) = (i, j); positions live in [0, H - 1] x [0, W - 1].
// Each of niter steps samples the flow bilinearly at the current position (the value at a pixel centre is that
// pixel's flow) and moves by it, then clamps the position to the image. No other convention is used anywhere.
#pragma once
#include "common/common.h"

namespace percs {

// Bilinear sample of image (H, W) at (y, x), with 0 <= y <= H - 1 and 0 <= x <= W - 1.
PERCS_HD float bilinear(const float* image, int64_t H, int64_t W, float y, float x) {
  const int64_t y0 = int64_t(y), x0 = int64_t(x);
  const int64_t y1 = y0 + 1 < H ? y0 + 1 : H - 1;
  const int64_t x1 = x0 + 1 < W ? x0 + 1 : W - 1;
  const float fy = y - float(y0), fx = x - float(x0);
  const float top = (1.0f - fx) * image[y0 * W + x0] + fx * image[y0 * W + x1];
  const float bottom = (1.0f - fx) * image[y1 * W + x0] + fx * image[y1 * W + x1];
  return (1.0f - fy) * top + fy * bottom;
}

PERCS_HD float clamp_to(float v, float hi) { return v < 0.0f ? 0.0f : (v > hi ? hi : v); }

// niter Euler steps of one point; flows holds the dy plane followed by the dx plane.
PERCS_HD void euler_steps(const float* flows, int64_t H, int64_t W, int32_t niter, float* y, float* x) {
  const float* fy = flows;
  const float* fx = flows + H * W;
  const float ymax = float(H - 1), xmax = float(W - 1);
  float py = *y, px = *x;
  for (int32_t t = 0; t < niter; ++t) {
    const float dy = bilinear(fy, H, W, py, px);
    const float dx = bilinear(fx, H, W, py, px);
    py = clamp_to(py + dy, ymax);
    px = clamp_to(px + dx, xmax);
  }
  *y = py;
  *x = px;
}

}  // namespace percs
