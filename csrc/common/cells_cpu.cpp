// Bounding boxes and centres of the cells of a label image (CPU).
#include <algorithm>
#include <stdexcept>
#include <string>

#include "cpu_ops.h"

#ifdef PERCS_HAVE_OPENMP
#include <omp.h>
#endif

namespace percs::cpu {
namespace {

// Median of sorted-or-not integer coordinates, as np.median: the mean of the two middle values for even n.
double median_of(std::vector<int32_t>& v) {
  const size_t n = v.size();
  const size_t hi = n / 2;
  std::nth_element(v.begin(), v.begin() + hi, v.end());
  const double upper = v[hi];
  if (n % 2 == 1) return upper;
  const double lower = *std::max_element(v.begin(), v.begin() + hi);
  return 0.5 * (lower + upper);
}

void collect_image_cells(const int32_t* labels, int32_t image, int64_t H, int64_t W, std::vector<CellBox>& cells) {
  const int64_t n_pixels = H * W;
  int64_t max_label = 0;
  for (int64_t i = 0; i < n_pixels; ++i) {
    if (labels[i] < 0) throw std::invalid_argument("labels: negative label " + std::to_string(labels[i]));
    max_label = std::max<int64_t>(max_label, labels[i]);
  }
  if (max_label > n_pixels)
    throw std::invalid_argument("labels: label " + std::to_string(max_label) + " exceeds the pixel count; renumber");
  if (max_label == 0) return;
  // Counting sort of the cell pixels by label, raster order kept within each label.
  std::vector<int64_t> start(max_label + 2, 0);
  for (int64_t i = 0; i < n_pixels; ++i) start[labels[i] + 1] += 1;
  for (int64_t l = 1; l <= max_label + 1; ++l) start[l] += start[l - 1];
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  std::vector<int64_t> order(n_pixels);
  for (int64_t i = 0; i < n_pixels; ++i) order[fill[labels[i]]++] = i;
  std::vector<int32_t> ys, xs;
  for (int64_t l = 1; l <= max_label; ++l) {
    const int64_t a = start[l], b = start[l + 1];
    if (a == b) continue;
    ys.clear();
    xs.clear();
    for (int64_t k = a; k < b; ++k) {
      ys.push_back(int32_t(order[k] / W));
      xs.push_back(int32_t(order[k] % W));
    }
    CellBox c{image, int32_t(l), ys.front(), *std::min_element(xs.begin(), xs.end()), 0, 0, 0, 0};
    c.h = ys.back() - c.y0 + 1;
    c.w = *std::max_element(xs.begin(), xs.end()) - c.x0 + 1;
    std::vector<int32_t> ys_copy(ys), xs_copy(xs);
    const double ymed = median_of(ys_copy), xmed = median_of(xs_copy);
    double best = 1e300;
    for (size_t k = 0; k < ys.size(); ++k) {
      const double d = (xs[k] - xmed) * (xs[k] - xmed) + (ys[k] - ymed) * (ys[k] - ymed);
      if (d < best) {
        best = d;
        c.cy = ys[k];
        c.cx = xs[k];
      }
    }
    cells.push_back(c);
  }
}

}  // namespace

std::vector<CellBox> collect_cells(const int32_t* labels, int64_t B, int64_t H, int64_t W) {
  std::vector<CellBox> cells;
  for (int64_t b = 0; b < B; ++b) collect_image_cells(labels + b * H * W, int32_t(b), H, W, cells);
  return cells;
}

int max_threads() {
#ifdef PERCS_HAVE_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace percs::cpu
