// label_overlaps on the CPU: one image pair per OpenMP task. Labels get dense indices from hash maps on the fly,
// so huge or gapped labels cost nothing, and only pixels where the (true, pred) run changes are looked up.
#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <string>

#include "cpu_ops.h"
#include "label_overlaps/label_overlaps.h"

namespace percs::cpu {
namespace {

// Insertion-ordered map from 64-bit keys to dense indices 0, 1, ... (open addressing, linear probing).
class DenseIndex {
 public:
  DenseIndex() : slots_(64, -1), mask_(63) {}

  int64_t index_of(uint64_t key) {
    size_t s = mix_hash(key) & mask_;
    for (; slots_[s] >= 0; s = (s + 1) & mask_) {
      if (keys_[slots_[s]] == key) return slots_[s];
    }
    slots_[s] = int64_t(keys_.size());
    keys_.push_back(key);
    if (2 * keys_.size() > slots_.size()) grow();
    return int64_t(keys_.size()) - 1;
  }

  const std::vector<uint64_t>& keys() const { return keys_; }

 private:
  void grow() {
    slots_.assign(2 * slots_.size(), -1);
    mask_ = slots_.size() - 1;
    for (size_t k = 0; k < keys_.size(); ++k) {
      size_t s = mix_hash(keys_[k]) & mask_;
      while (slots_[s] >= 0) s = (s + 1) & mask_;
      slots_[s] = int64_t(k);
    }
  }

  std::vector<int64_t> slots_;  // -1: empty, else index into keys_
  std::vector<uint64_t> keys_;
  size_t mask_;
};

// The instances of one image: dense ids in order of first appearance, their labels and pixel counts. Labels
// below DIRECT_LIMIT (the usual case) are looked up in a table indexed by label, larger ones hashed.
class CellCounts {
 public:
  static constexpr uint64_t DIRECT_LIMIT = 1 << 16;

  int32_t add(uint64_t label, int64_t pixels) {
    if (label != cached_label_) {
      cached_label_ = label;
      cached_id_ = id_of(label);
    }
    counts_[cached_id_] += pixels;
    return cached_id_;
  }

  const std::vector<uint64_t>& labels() const { return labels_; }
  const std::vector<int64_t>& counts() const { return counts_; }

 private:
  int32_t id_of(uint64_t label) {
    if (label < DIRECT_LIMIT) {
      if (label >= direct_.size()) direct_.resize(std::max<size_t>(64, 2 * label), -1);
      if (direct_[label] < 0) direct_[label] = new_id(label);
      return direct_[label];
    }
    const int64_t h = hashed_.index_of(label);
    if (h == int64_t(hashed_ids_.size())) hashed_ids_.push_back(new_id(label));
    return hashed_ids_[h];
  }

  int32_t new_id(uint64_t label) {
    labels_.push_back(label);
    counts_.push_back(0);
    return int32_t(labels_.size() - 1);
  }

  std::vector<int32_t> direct_;  // label -> id, -1 where unseen
  DenseIndex hashed_;
  std::vector<int32_t> hashed_ids_;  // hashed_ index -> id
  std::vector<uint64_t> labels_;
  std::vector<int64_t> counts_;
  uint64_t cached_label_ = EMPTY_PAIR_KEY;  // no label is all ones
  int32_t cached_id_ = -1;
};

// Pixel counts of (true id, pred id) pairs. A true cell meets the same pred cell row after row, so each true
// id remembers its last pair and the hash map is consulted only when the partner changes.
class PairCounts {
 public:
  void add(int32_t true_id, int32_t pred_id, int64_t pixels) {
    if (size_t(true_id) >= last_pred_.size()) {
      last_pred_.resize(true_id + 1, -1);
      last_pair_.resize(true_id + 1, -1);
    }
    if (last_pred_[true_id] != pred_id) {
      last_pred_[true_id] = pred_id;
      last_pair_[true_id] = index_.index_of(pack_pair(uint32_t(true_id), uint32_t(pred_id)));
      if (last_pair_[true_id] == int64_t(counts_.size())) counts_.push_back(0);
    }
    counts_[last_pair_[true_id]] += pixels;
  }

  const std::vector<uint64_t>& keys() const { return index_.keys(); }
  const std::vector<int64_t>& counts() const { return counts_; }

 private:
  DenseIndex index_;
  std::vector<int64_t> counts_;
  std::vector<int32_t> last_pred_;
  std::vector<int64_t> last_pair_;
};

struct ImageCounts {
  CellCounts true_cells, pred_cells;
  PairCounts pairs;
  bool negative_true = false, negative_pred = false;

  // A run of pixels that all have true label t and pred label p.
  void add_run(int64_t t, int64_t p, int64_t pixels) {
    negative_true |= t < 0;
    negative_pred |= p < 0;
    const int32_t ti = t > 0 ? true_cells.add(uint64_t(t), pixels) : -1;
    const int32_t pi = p > 0 ? pred_cells.add(uint64_t(p), pixels) : -1;
    if (ti >= 0 && pi >= 0) pairs.add(ti, pi, pixels);
  }
};

constexpr int64_t BLOCK = 16;

// True when all BLOCK pixels from t, p continue the run (no early exit, so the compiler vectorises it).
template <typename T>
bool block_continues(const T* t, const T* p, T run_t, T run_p) {
  bool same = true;
  for (int64_t k = 0; k < BLOCK; ++k) same &= (t[k] == run_t) & (p[k] == run_p);
  return same;
}

template <typename T>
void count_runs(const void* true_data, const void* pred_data, int64_t n, ImageCounts& counts) {
  const T* t = static_cast<const T*>(true_data);
  const T* p = static_cast<const T*>(pred_data);
  if (n == 0) return;
  T run_t = t[0], run_p = p[0];
  int64_t run = 0;
  for (int64_t i = 0; i < n;) {
    while (i + BLOCK <= n && block_continues(t + i, p + i, run_t, run_p)) {
      run += BLOCK;
      i += BLOCK;
    }
    for (const int64_t stop = std::min(n, i + BLOCK); i < stop; ++i) {
      if (t[i] == run_t && p[i] == run_p) {
        ++run;
        continue;
      }
      counts.add_run(int64_t(run_t), int64_t(run_p), run);
      run_t = t[i];
      run_p = p[i];
      run = 1;
    }
  }
  counts.add_run(int64_t(run_t), int64_t(run_p), run);
}

// One image's overlaps in canonical order; pair indices are local to the image.
struct ImageOverlaps {
  std::vector<int64_t> true_labels, true_areas, pred_labels, pred_areas, pair_true, pair_pred, intersection;
};

// Writes the labels and areas in ascending label order; rank[dense index] = position in that order.
void sort_cells(const CellCounts& cells, std::vector<int64_t>& labels, std::vector<int64_t>& areas,
                std::vector<uint32_t>& rank) {
  const std::vector<uint64_t>& keys = cells.labels();
  std::vector<uint32_t> order(keys.size());
  std::iota(order.begin(), order.end(), 0u);
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return keys[a] < keys[b]; });
  rank.resize(keys.size());
  for (size_t r = 0; r < order.size(); ++r) {
    rank[order[r]] = uint32_t(r);
    labels.push_back(int64_t(keys[order[r]]));
    areas.push_back(cells.counts()[order[r]]);
  }
}

ImageOverlaps sorted_overlaps(const ImageCounts& counts) {
  ImageOverlaps out;
  std::vector<uint32_t> true_rank, pred_rank;
  sort_cells(counts.true_cells, out.true_labels, out.true_areas, true_rank);
  sort_cells(counts.pred_cells, out.pred_labels, out.pred_areas, pred_rank);
  const std::vector<uint64_t>& keys = counts.pairs.keys();
  std::vector<std::pair<uint64_t, int64_t>> ranked(keys.size());
  for (size_t k = 0; k < keys.size(); ++k) {
    ranked[k] = {pack_pair(true_rank[keys[k] >> 32], pred_rank[keys[k] & 0xffffffffu]), counts.pairs.counts()[k]};
  }
  std::sort(ranked.begin(), ranked.end());
  for (const auto& [key, pixels] : ranked) {
    out.pair_true.push_back(int64_t(key >> 32));
    out.pair_pred.push_back(int64_t(key & 0xffffffffu));
    out.intersection.push_back(pixels);
  }
  return out;
}

ImageOverlaps image_overlaps(const LabelPairView& view, int64_t b, std::string& error) {
  ImageCounts counts;
  switch (view.type) {
    case LabelType::u8: count_runs<uint8_t>(view.true_labels, view.pred_labels, view.n_pixels, counts); break;
    case LabelType::u16: count_runs<uint16_t>(view.true_labels, view.pred_labels, view.n_pixels, counts); break;
    case LabelType::i32: count_runs<int32_t>(view.true_labels, view.pred_labels, view.n_pixels, counts); break;
    case LabelType::i64: count_runs<int64_t>(view.true_labels, view.pred_labels, view.n_pixels, counts); break;
  }
  if (counts.negative_true || counts.negative_pred) {
    error = std::string(counts.negative_true ? "true_labels" : "pred_labels") + "[" + std::to_string(b) +
            "] has negative labels";
    return {};
  }
  return sorted_overlaps(counts);
}

// Appends src to dst, adding shift to every element.
void append_shifted(std::vector<int64_t>& dst, const std::vector<int64_t>& src, int64_t shift) {
  for (int64_t v : src) dst.push_back(v + shift);
}

LabelOverlaps concatenate(const std::vector<ImageOverlaps>& images) {
  LabelOverlaps out;
  out.true_offsets.push_back(0);
  out.pred_offsets.push_back(0);
  out.pair_offsets.push_back(0);
  for (const ImageOverlaps& im : images) {
    append_shifted(out.pair_true, im.pair_true, out.true_offsets.back());
    append_shifted(out.pair_pred, im.pair_pred, out.pred_offsets.back());
    append_shifted(out.pair_intersection, im.intersection, 0);
    append_shifted(out.true_labels, im.true_labels, 0);
    append_shifted(out.true_areas, im.true_areas, 0);
    append_shifted(out.pred_labels, im.pred_labels, 0);
    append_shifted(out.pred_areas, im.pred_areas, 0);
    out.true_offsets.push_back(int64_t(out.true_labels.size()));
    out.pred_offsets.push_back(int64_t(out.pred_labels.size()));
    out.pair_offsets.push_back(int64_t(out.pair_true.size()));
  }
  return out;
}

}  // namespace

LabelOverlaps label_overlaps(const std::vector<LabelPairView>& images) {
  const int64_t B = int64_t(images.size());
  std::vector<ImageOverlaps> per_image(B);
  std::vector<std::string> errors(B);
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t b = 0; b < B; ++b) per_image[b] = image_overlaps(images[b], b, errors[b]);
  for (const std::string& error : errors) {
    if (!error.empty()) throw std::invalid_argument(error);
  }
  return concatenate(per_image);
}

}  // namespace percs::cpu
