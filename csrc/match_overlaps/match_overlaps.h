// match_overlaps: for every image and IoU threshold, the matching of true and predicted instances that
// maximises the number of pairs above the threshold and, among those, the total IoU of the matched pairs.
//
// Contract (CPU), on the label_overlaps outputs of B images and T thresholds:
//   true_areas (NT,), true_offsets (B + 1,), pred_areas (NP,), pred_offsets (B + 1,): int64;
//   pair_true, pair_pred, pair_intersection (P,), pair_offsets (B + 1,): int64, each pair inside its image;
//   thresholds (T,) float64; strict: IoU > t when true, IoU >= t when false;
//   matched (P, T) uint8 out: 1 where the pair is matched at threshold t;
//   tp (B, T) int64 out: matched pairs per image; matched_iou (B, T) float64 out: their summed IoU.
//
// Exactness. A pair is an edge at threshold t when pair_iou passes iou_passes. TP is the size of a maximum
// matching of that bipartite graph, which is exactly the TP of scipy.optimize.linear_sum_assignment on the
// StarDist/Cellpose cost -[IoU >= t] - IoU / (2 min(N_true, N_pred)) (with '>=' there): the IoU term of a full
// assignment sums to at most 1/2, so the optimum first maximises the number of pairs above t. Hence FP and FN
// are identical too. The matched pairs themselves need not be: that cost breaks ties by the IoU of all assigned
// pairs, those below t included. Here ties are broken by the IoU of the matched pairs only, so matched_iou is
// the maximum total IoU over all maximum-cardinality matchings (exact up to floating-point rounding of sums
// that differ by less than ~1e-12); the pairs achieving it may not be unique.
//
// Method, per connected component of the graph: an edge whose true and pred instance have no other edge is
// matched directly (for t >= 0.5, '>', or t > 0.5, '>=', every component is such an edge: an instance can
// exceed IoU 1/2 with at most one disjoint partner). Larger components (t < 0.5, or IoU exactly 0.5 where a
// cell is split in two halves) are solved by successive shortest augmenting paths with edge weight
// 1 + IoU / (2 M), M = min(#true, #pred) of the component, a lexicographic weight: a matching of k + 1 edges
// always outweighs one of k. Cost per component of n instances and e edges: O(M e log n).
#pragma once
#include <cstdint>

#include "common/common.h"

namespace percs {

// IoU of a pair from its intersection and the two areas, as float64 (correctly rounded, like NumPy's).
PERCS_HD double pair_iou(int64_t intersection, int64_t true_area, int64_t pred_area) {
  return double(intersection) / double(true_area + pred_area - intersection);
}

PERCS_HD bool iou_passes(double iou, double threshold, bool strict) {
  return strict ? iou > threshold : iou >= threshold;
}

// Non-owning views of the label_overlaps arrays (areas and labels are not needed).
struct MatchOverlapsInput {
  int64_t n_images, n_true, n_pred, n_pairs;
  const int64_t *true_areas, *true_offsets, *pred_areas, *pred_offsets;
  const int64_t *pair_true, *pair_pred, *pair_intersection, *pair_offsets;
};

}  // namespace percs
