// CPU entry points. Arrays are C-contiguous, non-owning; shapes as documented in each op's header.
// Errors are std::invalid_argument naming the argument (pybind11 turns them into ValueError).
#pragma once
#include <cstdint>
#include <vector>

#include "common/common.h"

namespace percs::cpu {

// Cells of a batch of label images (B, H, W), in (image, label) order. Throws when a label is negative
// or exceeds H * W (the caller renumbers such images first).
std::vector<CellBox> collect_cells(const int32_t* labels, int64_t B, int64_t H, int64_t W);

// Per-thread buffers of one cell's padded box (row stride c.w + 2), reused from cell to cell.
struct CellScratch {
  std::vector<double> L;       // log1p of the temperature, once diffuse_cell returns
  std::vector<double> next;    // the other Jacobi buffer
  std::vector<double> weight;  // 1/9 inside the cell, 0 outside
  std::vector<uint8_t> inside; // 1 inside the cell
};

// Diffuses one cell inside its padded box (see masks_to_flows.h); labels is that cell's image (width W).
void diffuse_cell(const int32_t* labels, int64_t W, const CellBox& c, CellScratch& s);

void masks_to_flows(const int32_t* labels, int64_t B, int64_t H, int64_t W, float* flows);

void follow_flows(const float* flows, int64_t H, int64_t W, float* points, int64_t n_points, int32_t niter);

void get_masks(const float* endpoints, const int64_t* pixel_index, int64_t n_points, int64_t H, int64_t W,
               int32_t seed_min_count, int32_t grow_min_count, double max_size_fraction, int32_t* labels);

void flow_error(const int32_t* labels, const float* flows, int64_t H, int64_t W, double* errors, int64_t n_labels);

void fill_holes(int32_t* labels, int64_t H, int64_t W);

int max_threads();

}  // namespace percs::cpu

// ---- metrics: label_overlaps, match_overlaps (contracts in their headers) ----
#include "label_overlaps/label_overlaps.h"
#include "match_overlaps/match_overlaps.h"

namespace percs::cpu {

LabelOverlaps label_overlaps(const std::vector<LabelPairView>& images);

void match_overlaps(const MatchOverlapsInput& in, const double* thresholds, int64_t n_thresholds, bool strict,
                    uint8_t* matched, int64_t* tp, double* matched_iou);

}  // namespace percs::cpu
