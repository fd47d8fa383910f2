// flow_error: how far predicted flows are from the flows of the masks built from them (Cellpose's flow check).
//
// Contract (both backends):
//   labels : (H, W) int32, masks 1..n_labels (gaps allowed)
//   flows  : (2, H, W) float32, predicted unit flows (the caller divides by FLOW_SCALE)
//   errors : (n_labels,) float64 out; errors[l - 1] = mean over the pixels of mask l of
//            (dy_mask - dy)^2 + (dx_mask - dx)^2, where (dy_mask, dx_mask) are masks_to_flows of labels;
//            0 for labels that have no pixel.
// The mask flows are recomputed cell by cell with the masks_to_flows arithmetic and never stored whole.
#pragma once
#include "common/common.h"

namespace percs {

PERCS_HD double squared_flow_difference(double dy_mask, double dx_mask, float dy, float dx) {
  const double ey = dy_mask - double(dy), ex = dx_mask - double(dx);
  return ey * ey + ex * ex;
}

}  // namespace percs
