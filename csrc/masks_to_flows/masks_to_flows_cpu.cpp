// masks_to_flows on the CPU: one cell per task (OpenMP dynamic schedule), each inside its own padded box.
#include <cmath>
#include <utility>

#include "cpu_ops.h"
#include "masks_to_flows/masks_to_flows.h"

namespace percs::cpu {
namespace {

// One Jacobi sweep over box indices [begin, end): next = weight * neighbourhood sum, weight = 1/9 inside the
// cell and 0 outside (exactly neighbourhood_mean or 0). Branch-free and unaliased so that it vectorises;
// cloned for AVX2 where the CPU has it.
__attribute__((target_clones("avx2", "default"))) void sweep_rows(const double* __restrict T,
                                                                   double* __restrict next,
                                                                   const double* __restrict weight,
                                                                   int64_t stride, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) next[i] = neighbourhood_sum(T, stride, i) * weight[i];
}

}  // namespace

void diffuse_cell(const int32_t* labels, int64_t W, const CellBox& c, CellScratch& s) {
  const int64_t stride = c.w + 2, size = padded_box_size(c);
  s.L.assign(size, 0.0);
  s.next.assign(size, 0.0);
  s.weight.assign(size, 0.0);
  s.inside.assign(size, 0);
  for (int32_t by = 1; by <= c.h; ++by) {
    const int32_t* row = labels + int64_t(c.y0 + by - 1) * W + c.x0 - 1;
    for (int32_t bx = 1; bx <= c.w; ++bx) {
      s.inside[by * stride + bx] = row[bx] == c.label;
      s.weight[by * stride + bx] = row[bx] == c.label ? NINTH : 0.0;
    }
  }
  const int64_t centre = int64_t(c.cy - c.y0 + 1) * stride + (c.cx - c.x0 + 1);
  double* T = s.L.data();
  double* next = s.next.data();
  T[centre] = 1.0;
  const int32_t n_iter = diffusion_iterations(c);
  for (int32_t it = 0; it < n_iter; ++it) {
    // Rows 1..h of the padded box as one run: the padding columns in between have weight 0.
    sweep_rows(T, next, s.weight.data(), stride, stride + 1, (c.h + 1) * stride - 1);
    if (it + 1 < n_iter) next[centre] += 1.0;
    std::swap(T, next);
  }
  for (int64_t i = 0; i < size; ++i) T[i] = std::log1p(T[i]);
  if (T != s.L.data()) s.L.swap(s.next);
}

void masks_to_flows(const int32_t* labels, int64_t B, int64_t H, int64_t W, float* flows) {
  const std::vector<CellBox> cells = collect_cells(labels, B, H, W);
  for (int64_t i = 0; i < B * 2 * H * W; ++i) flows[i] = 0.0f;
  const int64_t n_cells = int64_t(cells.size());
#pragma omp parallel
  {
    CellScratch scratch;
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < n_cells; ++k) {
      const CellBox& c = cells[k];
      const int32_t* image = labels + int64_t(c.image) * H * W;
      diffuse_cell(image, W, c, scratch);
      float* fy = flows + int64_t(c.image) * 2 * H * W;
      float* fx = fy + H * W;
      const int64_t stride = c.w + 2;
      for (int32_t by = 1; by <= c.h; ++by) {
        for (int32_t bx = 1; bx <= c.w; ++bx) {
          const int64_t i = by * stride + bx;
          if (!scratch.inside[i]) continue;
          double dy, dx;
          unit_gradient(scratch.L.data(), stride, i, &dy, &dx);
          const int64_t p = int64_t(c.y0 + by - 1) * W + (c.x0 + bx - 1);
          fy[p] = float(dy);
          fx[p] = float(dx);
        }
      }
    }
  }
}

}  // namespace percs::cpu
