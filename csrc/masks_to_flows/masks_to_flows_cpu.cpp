// masks_to_flows on the CPU: one cell per task (OpenMP dynamic schedule), each inside its own padded box.
#include <cmath>
#include <utility>

#include "cpu_ops.h"
#include "masks_to_flows/masks_to_flows.h"

namespace percs::cpu {

void diffuse_cell(const int32_t* labels, int64_t W, const CellBox& c, std::vector<double>& L,
                  std::vector<double>& scratch, std::vector<uint8_t>& inside) {
  const int64_t stride = c.w + 2, size = padded_box_size(c);
  L.assign(size, 0.0);
  scratch.assign(size, 0.0);
  inside.assign(size, 0);
  for (int32_t by = 1; by <= c.h; ++by) {
    const int32_t* row = labels + int64_t(c.y0 + by - 1) * W + c.x0 - 1;
    for (int32_t bx = 1; bx <= c.w; ++bx) inside[by * stride + bx] = row[bx] == c.label;
  }
  const int64_t centre = int64_t(c.cy - c.y0 + 1) * stride + (c.cx - c.x0 + 1);
  double* T = L.data();
  double* next = scratch.data();
  T[centre] = 1.0;
  const int32_t n_iter = diffusion_iterations(c);
  for (int32_t it = 0; it < n_iter; ++it) {
    for (int32_t by = 1; by <= c.h; ++by) {
      const int64_t row = by * stride;
      for (int64_t i = row + 1; i <= row + c.w; ++i) next[i] = inside[i] ? neighbourhood_mean(T, stride, i) : 0.0;
    }
    if (it + 1 < n_iter) next[centre] += 1.0;
    std::swap(T, next);
  }
  for (int64_t i = 0; i < size; ++i) T[i] = std::log1p(T[i]);
  if (T != L.data()) L.swap(scratch);
}

void masks_to_flows(const int32_t* labels, int64_t B, int64_t H, int64_t W, float* flows) {
  const std::vector<CellBox> cells = collect_cells(labels, B, H, W);
  for (int64_t i = 0; i < B * 2 * H * W; ++i) flows[i] = 0.0f;
  const int64_t n_cells = int64_t(cells.size());
#pragma omp parallel
  {
    std::vector<double> L, scratch;
    std::vector<uint8_t> inside;
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < n_cells; ++k) {
      const CellBox& c = cells[k];
      const int32_t* image = labels + int64_t(c.image) * H * W;
      diffuse_cell(image, W, c, L, scratch, inside);
      float* fy = flows + int64_t(c.image) * 2 * H * W;
      float* fx = fy + H * W;
      const int64_t stride = c.w + 2;
      for (int32_t by = 1; by <= c.h; ++by) {
        for (int32_t bx = 1; bx <= c.w; ++bx) {
          const int64_t i = by * stride + bx;
          if (!inside[i]) continue;
          double dy, dx;
          unit_gradient(L.data(), stride, i, &dy, &dx);
          const int64_t p = int64_t(c.y0 + by - 1) * W + (c.x0 + bx - 1);
          fy[p] = float(dy);
          fx[p] = float(dx);
        }
      }
    }
  }
}

}  // namespace percs::cpu
