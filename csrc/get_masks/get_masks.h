// get_masks: clustering of Euler end points into instance masks (Cellpose's get_masks).
//
// Contract (both backends):
//   endpoints   : (N, 2) float32, (y, x) end points inside the image (follow_flows output)
//   pixel_index : (N,) int64, flat index y * W + x of the pixel each end point started from
//   labels      : (H, W) int32 out, canonical (0 background, 1..M in raster order of each mask's first pixel)
// Steps: each end point is rounded to the nearest pixel (round half up); h = histogram of rounded end points;
// seeds are pixels with h > seed_min_count that equal the maximum of h over their 5x5 neighbourhood; seeds are
// ranked by (count, flat index) ascending; each seed grows for GROW_STEPS 3x3 dilations inside the
// GROW_WINDOW x GROW_WINDOW window centred on it, restricted to h > grow_min_count; the grown regions are painted
// in rank order (a higher-ranked seed wins a pixel); each start pixel takes the label painted at its end point;
// masks with more than max_size_fraction * H * W pixels are removed; labels are renumbered canonically.
#pragma once
#include <math.h>

#include "common/common.h"

namespace percs {

constexpr int GROW_RADIUS = 5;
constexpr int GROW_WINDOW = 2 * GROW_RADIUS + 1;
constexpr int GROW_STEPS = 5;
constexpr int SEED_RADIUS = 2;

PERCS_HD int64_t round_coordinate(float v) { return int64_t(floorf(v + 0.5f)); }

PERCS_HD bool is_seed(const int32_t* hist, int64_t H, int64_t W, int64_t y, int64_t x, int32_t seed_min_count) {
  const int32_t count = hist[y * W + x];
  if (count <= seed_min_count) return false;
  for (int64_t yy = y - SEED_RADIUS; yy <= y + SEED_RADIUS; ++yy) {
    if (yy < 0 || yy >= H) continue;
    for (int64_t xx = x - SEED_RADIUS; xx <= x + SEED_RADIUS; ++xx) {
      if (xx >= 0 && xx < W && hist[yy * W + xx] > count) return false;
    }
  }
  return true;
}

// Grows the seed at (y, x) inside its window: region[dy * GROW_WINDOW + dx] is set for window pixel
// (y + dy - GROW_RADIUS, x + dx - GROW_RADIUS). Pixels outside the image never join.
PERCS_HD void grow_seed(const int32_t* hist, int64_t H, int64_t W, int64_t y, int64_t x, int32_t grow_min_count,
                        uint8_t* region) {
  uint8_t allowed[GROW_WINDOW * GROW_WINDOW];
  uint8_t next[GROW_WINDOW * GROW_WINDOW];
  for (int i = 0; i < GROW_WINDOW; ++i) {
    for (int j = 0; j < GROW_WINDOW; ++j) {
      const int64_t yy = y + i - GROW_RADIUS, xx = x + j - GROW_RADIUS;
      const bool in_image = yy >= 0 && yy < H && xx >= 0 && xx < W;
      allowed[i * GROW_WINDOW + j] = in_image && hist[yy * W + xx] > grow_min_count;
      region[i * GROW_WINDOW + j] = 0;
    }
  }
  region[GROW_RADIUS * GROW_WINDOW + GROW_RADIUS] = 1;
  for (int step = 0; step < GROW_STEPS; ++step) {
    for (int i = 0; i < GROW_WINDOW; ++i) {
      for (int j = 0; j < GROW_WINDOW; ++j) {
        uint8_t any = 0;
        for (int di = -1; di <= 1; ++di) {
          for (int dj = -1; dj <= 1; ++dj) {
            const int ii = i + di, jj = j + dj;
            if (ii >= 0 && ii < GROW_WINDOW && jj >= 0 && jj < GROW_WINDOW) any |= region[ii * GROW_WINDOW + jj];
          }
        }
        next[i * GROW_WINDOW + j] = any & allowed[i * GROW_WINDOW + j];
      }
    }
    for (int k = 0; k < GROW_WINDOW * GROW_WINDOW; ++k) region[k] = next[k];
  }
}

}  // namespace percs
