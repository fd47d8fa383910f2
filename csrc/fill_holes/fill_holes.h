// fill_holes: fills the holes of every mask of a label image.
//
// Contract (both backends):
//   labels : (H, W) int32 in/out, masks 1..N (gaps allowed), 0 background
// A hole of mask l is a background pixel of l's bounding box that cannot reach the box's border through pixels
// not in l (4-connectivity, as scipy.ndimage.binary_fill_holes). Pixels of other masks are never overwritten.
// A background pixel in holes of several (nested) masks takes the innermost one: the mask with the smallest
// bounding-box area, then the smaller label.
#pragma once
#include "common/common.h"

namespace percs {

// Ordering key of a mask for shared hole pixels: smaller wins.
PERCS_HD uint64_t hole_owner_key(const CellBox& c) {
  return (uint64_t(uint32_t(c.h) * uint64_t(uint32_t(c.w))) << 32) | uint64_t(uint32_t(c.label));
}

}  // namespace percs
