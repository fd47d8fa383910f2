// CUDA launchers. Plain C++ (no CUDA, pybind11 or torch headers) so that the host-compiled binding can call them.
//
// Every pointer is a device pointer to a C-contiguous array owned by the caller (torch tensors in percs);
// `stream` is the caller's cudaStream_t. Launchers are asynchronous on that stream: they only check that the
// launch itself succeeded and throw std::runtime_error naming the kernel otherwise. Shapes and dtypes follow
// each op's contract header; the "cell table" is the (n_cells, 8) int32 array of CellBox rows
// (common/common.h) and scratch_offsets says where each cell's scratch starts, in elements of scratch.
#pragma once
#include <cstdint>

namespace percs::cuda {

// Number of CUDA devices visible to this process; 0 (never an error) when there is no device or no driver.
int device_count();

// Cells on the device: the CellBox table and the start of each cell's scratch (in elements).
struct DeviceCells {
  const int32_t* boxes;            // (n, 8) int32 CellBox rows
  const int64_t* scratch_offsets;  // (n,) int64
  int64_t n;
};

// masks_to_flows. labels (B, H, W) int32 whose cells are exactly the rows of `cells` (cell label unique per
// image); scratch float64 zeroed, 2 * padded_box_size(c) elements per cell; flows (B, 2, H, W) float32 zeroed.
void masks_to_flows(const int32_t* labels, int64_t H, int64_t W, DeviceCells cells, double* scratch, float* flows,
                    void* stream);

// flow_error. labels (H, W) int32 (cells: one row per label present, image 0); unit_flows (2, H, W) float32;
// scratch as for masks_to_flows; errors (n_labels,) float64 zeroed; errors[label - 1] is written per cell.
void flow_error(const int32_t* labels, const float* unit_flows, int64_t H, int64_t W, DeviceCells cells,
                double* scratch, double* errors, void* stream);

// follow_flows. yx_flows (H, W, 2) float32 interleaved unit flows; points (n_points, 2) float32 in/out, inside
// [0, H - 1] x [0, W - 1] (the caller checks).
void follow_flows(const float* yx_flows, int64_t H, int64_t W, float* points, int64_t n_points, int32_t niter,
                  void* stream);

// get_masks, step 1: end_index[k] = flat index of endpoint k rounded to its pixel; hist (H * W,) int32 zeroed
// on entry, the number of end points per pixel on exit.
void histogram_endpoints(const float* endpoints, int64_t n_points, int64_t H, int64_t W, int64_t* end_index,
                         int32_t* hist, void* stream);

// get_masks, step 2: flags (H * W,) uint8, 1 where the pixel is a seed (is_seed).
void seed_flags(const int32_t* hist, int64_t H, int64_t W, int32_t seed_min_count, uint8_t* flags, void* stream);

// get_masks, step 3: seeds (n_seeds,) int64 flat indices in rank order; painted (H * W,) int32 zeroed. Each
// seed's grown region gets rank + 1 where no later-ranked seed covers the pixel (the CPU's painting order).
void paint_seeds(const int32_t* hist, int64_t H, int64_t W, const int64_t* seeds, int64_t n_seeds,
                 int32_t grow_min_count, int32_t* painted, void* stream);

// get_masks, step 4: labels[pixel_index[k]] = painted[end_index[k]]; labels (H * W,) int32 zeroed.
void assign_labels(const int64_t* pixel_index, const int64_t* end_index, int64_t n_points, const int32_t* painted,
                   int32_t* labels, void* stream);

// fill_holes. labels (H, W) int32 in/out (cells: one row per label present, image 0); scratch uint8,
// padded_box_size(c) bytes per cell; hole_keys (H * W,) uint64 set to UINT64_MAX by the caller.
void fill_holes(int32_t* labels, int64_t H, int64_t W, DeviceCells cells, uint8_t* scratch, uint64_t* hole_keys,
                void* stream);

}  // namespace percs::cuda

// ---- metrics: label_overlaps (contract in label_overlaps/label_overlaps.h) ----
namespace percs::cuda {

// Per-image hash tables of (true, pred) label pair counts; image b owns slots [b * capacity, (b + 1) * capacity).
struct PairTables {
  uint64_t* keys;    // (B * capacity,) pack_pair(true label, pred label), EMPTY_PAIR_KEY where free
  uint64_t* counts;  // (B * capacity,) pixel counts
  int64_t capacity;  // a power of two above n_pixels
};

// label_overlaps, step 1. true_labels, pred_labels (B, n_pixels) int32, B <= 65535. Resets the tables, then
// counts every (true, pred) label pair other than (0, 0); n_keys (1,) uint64: the number of occupied slots;
// negative (B, 2) int32: 1 where image b of true_labels (column 0) / pred_labels (column 1) has a negative label
// (those pixels are not counted).
void label_overlaps_count(const int32_t* true_labels, const int32_t* pred_labels, int64_t B, int64_t n_pixels,
                          PairTables tables, uint64_t* n_keys, int32_t* negative, void* stream);

// label_overlaps, step 2. rows (4, n_keys) int64: image, true label, pred label and pixel count of every
// occupied slot, in no particular order (the host sorts); cursor (1,) uint64 scratch.
void label_overlaps_compact(PairTables tables, int64_t B, int64_t n_keys, int64_t* rows, uint64_t* cursor,
                            void* stream);

}  // namespace percs::cuda
