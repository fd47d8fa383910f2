// label_overlaps: sparse intersection counts of (true, pred) label image pairs and the area of every instance.
//
// Contract (CPU), for a batch of B image pairs, pair b of n_b pixels (any image shape, raster order):
//   images[b]          : true and pred labels, same dtype (uint8, uint16, int32 or int64), 0 background, labels
//                        >= 0, any values (gaps, huge labels): nothing is renumbered.
//   true_labels (NT,)  : int64, the distinct non-zero true labels, image by image, ascending within an image;
//   true_areas (NT,)   : int64, their pixel counts; true_offsets (B + 1,): image b owns [true_offsets[b],
//                        true_offsets[b + 1]); pred_labels, pred_areas, pred_offsets likewise;
//   pair_true, pair_pred (P,) : int64 indices into the true / pred arrays of every (true, pred) pair sharing
//                        at least one pixel, sorted by (true label, pred label) within an image;
//   pair_intersection (P,)    : int64 shared pixel count; pair_offsets (B + 1,).
//
// Contract (CUDA), for a batch of B images of n pixels each, int32 labels on the device: counts every distinct
// (true label, pred label) value pair other than (0, 0) in a hash table per image (open addressing, linear
// probing, capacity a power of two above the pixel count); the compacted (image, true label, pred label, count)
// list goes to the host, which derives the arrays above (an area is the sum of its label's counts).
#pragma once
#include <cstdint>
#include <vector>

#include "common/common.h"

namespace percs {

constexpr uint64_t EMPTY_PAIR_KEY = ~uint64_t(0);  // no pair of labels < 2^31 packs to all ones

// Two labels (or dense indices) < 2^32 as one 64-bit key, first in the high word.
PERCS_HD uint64_t pack_pair(uint32_t first, uint32_t second) { return (uint64_t(first) << 32) | second; }

// splitmix64 finaliser: label values are often consecutive, so the bits must be mixed before masking.
PERCS_HD uint64_t mix_hash(uint64_t key) {
  key ^= key >> 30;
  key *= 0xbf58476d1ce4e5b9ull;
  key ^= key >> 27;
  key *= 0x94d049bb133111ebull;
  return key ^ (key >> 31);
}

enum class LabelType : int32_t { u8 = 0, u16 = 1, i32 = 2, i64 = 3 };

// One (true, pred) image pair: two C-contiguous buffers of n_pixels labels of the same type.
struct LabelPairView {
  const void* true_labels;
  const void* pred_labels;
  int64_t n_pixels;
  LabelType type;
};

// The outputs described above, concatenated image by image.
struct LabelOverlaps {
  std::vector<int64_t> true_labels, true_areas, true_offsets;
  std::vector<int64_t> pred_labels, pred_areas, pred_offsets;
  std::vector<int64_t> pair_true, pair_pred, pair_intersection, pair_offsets;
};

}  // namespace percs
