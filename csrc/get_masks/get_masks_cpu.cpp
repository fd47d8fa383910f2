// get_masks on the CPU.
#include <algorithm>
#include <stdexcept>
#include <utility>
#include <vector>

#include "cpu_ops.h"
#include "get_masks/get_masks.h"

namespace percs::cpu {
namespace {

std::vector<int64_t> find_seeds(const std::vector<int32_t>& hist, int64_t H, int64_t W, int32_t seed_min_count) {
  std::vector<int64_t> seeds;
  for (int64_t p = 0; p < H * W; ++p) {
    if (hist[p] > seed_min_count && is_seed(hist.data(), H, W, p / W, p % W, seed_min_count)) seeds.push_back(p);
  }
  std::stable_sort(seeds.begin(), seeds.end(), [&](int64_t a, int64_t b) { return hist[a] < hist[b]; });
  return seeds;
}

// Paints the grown seeds in rank order: seed k (0-based) paints k + 1, so a later seed wins a shared pixel.
std::vector<int32_t> paint_seeds(const std::vector<int32_t>& hist, const std::vector<int64_t>& seeds, int64_t H,
                                 int64_t W, int32_t grow_min_count) {
  std::vector<int32_t> painted(H * W, 0);
  uint8_t region[GROW_WINDOW * GROW_WINDOW];
  for (size_t k = 0; k < seeds.size(); ++k) {
    const int64_t y = seeds[k] / W, x = seeds[k] % W;
    grow_seed(hist.data(), H, W, y, x, grow_min_count, region);
    for (int i = 0; i < GROW_WINDOW; ++i) {
      for (int j = 0; j < GROW_WINDOW; ++j) {
        if (region[i * GROW_WINDOW + j])
          painted[(y + i - GROW_RADIUS) * W + (x + j - GROW_RADIUS)] = int32_t(k + 1);
      }
    }
  }
  return painted;
}

}  // namespace

void get_masks(const float* endpoints, const int64_t* pixel_index, int64_t n_points, int64_t H, int64_t W,
               int32_t seed_min_count, int32_t grow_min_count, double max_size_fraction, int32_t* labels) {
  const int64_t n_pixels = H * W;
  std::vector<int64_t> end_index(n_points);
  std::vector<int32_t> hist(n_pixels, 0);
  for (int64_t k = 0; k < n_points; ++k) {
    const int64_t y = round_coordinate(endpoints[2 * k]), x = round_coordinate(endpoints[2 * k + 1]);
    if (y < 0 || y >= H || x < 0 || x >= W) throw std::invalid_argument("endpoints: a point lies outside the image");
    if (pixel_index[k] < 0 || pixel_index[k] >= n_pixels)
      throw std::invalid_argument("pixel_index: an index lies outside the image");
    end_index[k] = y * W + x;
    hist[end_index[k]] += 1;
  }
  const std::vector<int64_t> seeds = find_seeds(hist, H, W, seed_min_count);
  const std::vector<int32_t> painted = paint_seeds(hist, seeds, H, W, grow_min_count);
  std::fill(labels, labels + n_pixels, 0);
  std::vector<int64_t> sizes(seeds.size() + 1, 0);
  for (int64_t k = 0; k < n_points; ++k) {
    const int32_t l = painted[end_index[k]];
    labels[pixel_index[k]] = l;
    sizes[l] += 1;
  }
  // Remove masks larger than the fraction, then number the rest in raster order of their first pixel.
  const double max_size = max_size_fraction * double(n_pixels);
  std::vector<int32_t> new_label(seeds.size() + 1, -1);
  new_label[0] = 0;
  for (size_t l = 1; l < sizes.size(); ++l) {
    if (double(sizes[l]) > max_size) new_label[l] = 0;
  }
  int32_t next = 0;
  for (int64_t p = 0; p < n_pixels; ++p) {
    int32_t& m = new_label[labels[p]];
    if (m < 0) m = ++next;
    labels[p] = m;
  }
}

}  // namespace percs::cpu
