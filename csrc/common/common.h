// Shared definitions for the CPU and CUDA kernels.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define PERCS_HD __host__ __device__ __forceinline__
#else
#define PERCS_HD inline
#endif

namespace percs {

// One cell of a label image, described by its bounding box. The kernels work on the box padded by one
// pixel on each side: box coordinates (by, bx), by in [0, h + 1], map to image pixel (y0 + by - 1, x0 + bx - 1),
// and the padding ring is always outside the cell.
struct CellBox {
  int32_t image;  // index of the image in the batch
  int32_t label;  // label of the cell in that image
  int32_t y0, x0; // top-left pixel of the bounding box
  int32_t h, w;   // bounding box height and width, >= 1
  int32_t cy, cx; // centre pixel (image coordinates), a pixel of the cell
};

PERCS_HD int64_t padded_box_size(const CellBox& c) { return int64_t(c.h + 2) * int64_t(c.w + 2); }

}  // namespace percs
