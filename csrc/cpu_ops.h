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

// Diffuses one cell inside its padded box (see masks_to_flows.h). On return L holds log1p(T) on the padded
// box, row stride c.w + 2; scratch holds a second buffer of the same size. labels is that cell's image.
void diffuse_cell(const int32_t* labels, int64_t W, const CellBox& c, std::vector<double>& L,
                  std::vector<double>& scratch, std::vector<uint8_t>& inside);

void masks_to_flows(const int32_t* labels, int64_t B, int64_t H, int64_t W, float* flows);

void follow_flows(const float* flows, int64_t H, int64_t W, float* points, int64_t n_points, int32_t niter);

void get_masks(const float* endpoints, const int64_t* pixel_index, int64_t n_points, int64_t H, int64_t W,
               int32_t seed_min_count, int32_t grow_min_count, double max_size_fraction, int32_t* labels);

void flow_error(const int32_t* labels, const float* flows, int64_t H, int64_t W, double* errors, int64_t n_labels);

void fill_holes(int32_t* labels, int64_t H, int64_t W);

int max_threads();

}  // namespace percs::cpu
