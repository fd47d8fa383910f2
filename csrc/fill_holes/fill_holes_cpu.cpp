// fill_holes on the CPU: holes found per mask in parallel (read only), then written in key order.
#include <algorithm>
#include <vector>

#include "cpu_ops.h"
#include "fill_holes/fill_holes.h"

namespace percs::cpu {
namespace {

// Background pixels (flat image indices) enclosed by cell c.
std::vector<int64_t> find_holes(const int32_t* labels, int64_t W, const CellBox& c) {
  const int64_t bw = c.w + 2, bh = c.h + 2;
  std::vector<uint8_t> reached(bh * bw, 0);
  std::vector<int64_t> stack;
  auto passable = [&](int64_t by, int64_t bx) {
    if (by == 0 || bx == 0 || by == bh - 1 || bx == bw - 1) return true;
    return labels[(c.y0 + by - 1) * W + (c.x0 + bx - 1)] != c.label;
  };
  auto push = [&](int64_t by, int64_t bx) {
    const int64_t i = by * bw + bx;
    if (!reached[i] && passable(by, bx)) {
      reached[i] = 1;
      stack.push_back(i);
    }
  };
  for (int64_t bx = 0; bx < bw; ++bx) push(0, bx), push(bh - 1, bx);
  for (int64_t by = 1; by < bh - 1; ++by) push(by, 0), push(by, bw - 1);
  while (!stack.empty()) {
    const int64_t i = stack.back();
    stack.pop_back();
    const int64_t by = i / bw, bx = i % bw;
    if (by > 0) push(by - 1, bx);
    if (by < bh - 1) push(by + 1, bx);
    if (bx > 0) push(by, bx - 1);
    if (bx < bw - 1) push(by, bx + 1);
  }
  std::vector<int64_t> holes;
  for (int64_t by = 1; by < bh - 1; ++by) {
    for (int64_t bx = 1; bx < bw - 1; ++bx) {
      const int64_t p = (c.y0 + by - 1) * W + (c.x0 + bx - 1);
      if (!reached[by * bw + bx] && labels[p] == 0) holes.push_back(p);
    }
  }
  return holes;
}

}  // namespace

void fill_holes(int32_t* labels, int64_t H, int64_t W) {
  std::vector<CellBox> cells = collect_cells(labels, 1, H, W);
  // Largest key first, so that the innermost mask writes a shared hole pixel last.
  std::sort(cells.begin(), cells.end(),
            [](const CellBox& a, const CellBox& b) { return hole_owner_key(a) > hole_owner_key(b); });
  const int64_t n_cells = int64_t(cells.size());
  std::vector<std::vector<int64_t>> holes(n_cells);
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t k = 0; k < n_cells; ++k) holes[k] = find_holes(labels, W, cells[k]);
  for (int64_t k = 0; k < n_cells; ++k) {
    for (int64_t p : holes[k]) labels[p] = cells[k].label;
  }
}

}  // namespace percs::cpu
