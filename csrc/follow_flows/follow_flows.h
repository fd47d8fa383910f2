// follow_flows: Euler integration of points along a unit flow field.
//
// Contract (both backends):
//   flows  : (H, W, 2) float32, interleaved (dy, dx) unit flows (the caller divides the network's output by
//            FLOW_SCALE and interleaves the (2, H, W) planes)
//   points : (N, 2) float32 in/out, (y, x) positions in pixel units
// Coordinates: pixel (i, j) has its centre at (y, x) = (i, j); positions live in [0, H - 1] x [0, W - 1].
// Each of niter steps samples the flow bilinearly at the current position (the value at a pixel centre is that
// pixel's flow) and moves by it, then clamps the position to the image. No other convention is used anywhere.
#pragma once
#include "common/common.h"

namespace percs {

// Bilinear sample of both flow components at (y, x), with 0 <= y <= H - 1 and 0 <= x <= W - 1.
// yx_flows is interleaved (H, W, 2): one cache line serves dy and dx.
PERCS_HD void bilinear2(const float* yx_flows, int64_t H, int64_t W, float y, float x, float* dy, float* dx) {
  const int64_t y0 = int64_t(y), x0 = int64_t(x);
  const int64_t y1 = y0 + 1 < H ? y0 + 1 : H - 1;
  const int64_t x1 = x0 + 1 < W ? x0 + 1 : W - 1;
  const float fy = y - float(y0), fx = x - float(x0);
  const float* v00 = yx_flows + 2 * (y0 * W + x0);
  const float* v01 = yx_flows + 2 * (y0 * W + x1);
  const float* v10 = yx_flows + 2 * (y1 * W + x0);
  const float* v11 = yx_flows + 2 * (y1 * W + x1);
  for (int c = 0; c < 2; ++c) {
    const float top = (1.0f - fx) * v00[c] + fx * v01[c];
    const float bottom = (1.0f - fx) * v10[c] + fx * v11[c];
    (c == 0 ? *dy : *dx) = (1.0f - fy) * top + fy * bottom;
  }
}

PERCS_HD float clamp_to(float v, float hi) { return v < 0.0f ? 0.0f : (v > hi ? hi : v); }

// The state of one point's Euler integration.
struct EulerPath {
  float y, x;              // current position
  float saved_y, saved_x;  // position at step saved_at, for cycle detection
  int32_t t, saved_at, power;
};

PERCS_HD EulerPath start_path(float y, float x) { return EulerPath{y, x, y, x, 0, 0, 1}; }

// One Euler step; returns whether steps remain. A step depends only on the position, so once a position
// repeats exactly the path is periodic and whole periods can be skipped (Brent's cycle detection). Most points
// settle into such a cycle near their cell's centre; the end point is bit-identical to taking every step.
PERCS_HD bool advance_path(const float* yx_flows, int64_t H, int64_t W, int32_t niter, EulerPath& p) {
  if (p.t >= niter) return false;
  float dy, dx;
  bilinear2(yx_flows, H, W, p.y, p.x, &dy, &dx);
  p.y = clamp_to(p.y + dy, float(H - 1));
  p.x = clamp_to(p.x + dx, float(W - 1));
  p.t += 1;
  if (p.y == p.saved_y && p.x == p.saved_x) {
    const int32_t period = p.t - p.saved_at;
    p.t += (niter - p.t) / period * period;
    p.saved_at = p.t;
  } else if (p.t - p.saved_at == p.power) {
    p.saved_y = p.y;
    p.saved_x = p.x;
    p.saved_at = p.t;
    p.power *= 2;
  }
  return p.t < niter;
}

}  // namespace percs
