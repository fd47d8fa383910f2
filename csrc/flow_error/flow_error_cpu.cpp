// flow_error on the CPU: one cell per task, reusing the masks_to_flows diffusion.
#include <stdexcept>

#include "cpu_ops.h"
#include "flow_error/flow_error.h"
#include "masks_to_flows/masks_to_flows.h"

namespace percs::cpu {

void flow_error(const int32_t* labels, const float* flows, int64_t H, int64_t W, double* errors, int64_t n_labels) {
  const std::vector<CellBox> cells = collect_cells(labels, 1, H, W);
  for (int64_t l = 0; l < n_labels; ++l) errors[l] = 0.0;
  for (const CellBox& c : cells) {
    if (c.label > n_labels) throw std::invalid_argument("errors: fewer entries than the largest label");
  }
  const int64_t n_cells = int64_t(cells.size());
#pragma omp parallel
  {
    CellScratch scratch;
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < n_cells; ++k) {
      const CellBox& c = cells[k];
      diffuse_cell(labels, W, c, scratch);
      const int64_t stride = c.w + 2;
      double sum = 0.0;
      int64_t area = 0;
      for (int32_t by = 1; by <= c.h; ++by) {
        for (int32_t bx = 1; bx <= c.w; ++bx) {
          const int64_t i = by * stride + bx;
          if (!scratch.inside[i]) continue;
          double dy, dx;
          unit_gradient(scratch.L.data(), stride, i, &dy, &dx);
          const int64_t p = int64_t(c.y0 + by - 1) * W + (c.x0 + bx - 1);
          sum += squared_flow_difference(dy, dx, flows[p], flows[H * W + p]);
          area += 1;
        }
      }
      errors[c.label - 1] = sum / double(area);
    }
  }
}

}  // namespace percs::cpu
