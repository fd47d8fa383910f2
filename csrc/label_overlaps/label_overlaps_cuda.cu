// label_overlaps on the GPU: every pixel's (true, pred) label pair is counted in a per-image hash table
// (open addressing, linear probing, 64-bit atomicCAS keys), then the occupied slots are compacted into a list of
// (image, true label, pred label, count) rows for the host. Neighbouring pixels mostly share their pair, so a
// warp first merges equal keys (__match_any_sync) and one lane adds the warp's count.
#include "common/cuda_common.cuh"
#include "cuda_ops.h"
#include "label_overlaps/label_overlaps.h"

namespace percs::cuda {
namespace {

using u64 = unsigned long long;

// Adds count to key's slot, claiming an empty slot when the key is new (n_keys counts the claims).
__device__ void add_to_table(u64* keys, u64* counts, int64_t capacity, uint64_t key, u64 count, u64* n_keys) {
  const uint64_t mask = uint64_t(capacity) - 1;
  for (uint64_t slot = mix_hash(key) & mask;; slot = (slot + 1) & mask) {
    const u64 previous = atomicCAS(&keys[slot], u64(EMPTY_PAIR_KEY), u64(key));
    if (previous == u64(EMPTY_PAIR_KEY) || previous == u64(key)) {
      if (previous == u64(EMPTY_PAIR_KEY)) atomicAdd(n_keys, 1ull);
      atomicAdd(&counts[slot], count);
      return;
    }
  }
}

// blockIdx.y is the image. Loop bounds are warp-uniform (blockDim.x is a multiple of 32), as __match_any_sync needs.
__global__ void __launch_bounds__(THREADS)
    count_pairs_kernel(const int32_t* __restrict__ true_labels, const int32_t* __restrict__ pred_labels,
                       int64_t n_pixels, int64_t capacity, u64* keys, u64* counts, u64* n_keys, int32_t* negative) {
  const int64_t b = blockIdx.y;
  const int32_t* t = true_labels + b * n_pixels;
  const int32_t* p = pred_labels + b * n_pixels;
  u64* image_keys = keys + b * capacity;
  u64* image_counts = counts + b * capacity;
  const int lane = threadIdx.x & 31;
  for (int64_t warp_start = first_item() - lane; warp_start < n_pixels; warp_start += item_stride()) {
    const int64_t i = warp_start + lane;
    uint64_t key = EMPTY_PAIR_KEY;
    if (i < n_pixels) {
      const int32_t lt = t[i], lp = p[i];
      if (lt < 0) negative[2 * b] = 1;
      if (lp < 0) negative[2 * b + 1] = 1;
      if (lt >= 0 && lp >= 0 && (lt > 0 || lp > 0)) key = pack_pair(uint32_t(lt), uint32_t(lp));
    }
    const unsigned peers = __match_any_sync(0xffffffffu, key);
    if (key != EMPTY_PAIR_KEY && lane == __ffs(peers) - 1) {
      add_to_table(image_keys, image_counts, capacity, key, u64(__popc(peers)), n_keys);
    }
  }
}

__global__ void __launch_bounds__(THREADS)
    compact_kernel(const u64* __restrict__ keys, const u64* __restrict__ counts, int64_t n_slots, int64_t capacity,
                   int64_t n_keys, int64_t* rows, u64* cursor) {
  for (int64_t s = first_item(); s < n_slots; s += item_stride()) {
    const u64 key = keys[s];
    if (key == u64(EMPTY_PAIR_KEY)) continue;
    const int64_t k = int64_t(atomicAdd(cursor, 1ull));
    rows[k] = s / capacity;
    rows[n_keys + k] = int64_t(key >> 32);
    rows[2 * n_keys + k] = int64_t(key & 0xffffffffu);
    rows[3 * n_keys + k] = int64_t(counts[s]);
  }
}

}  // namespace

void label_overlaps_count(const int32_t* true_labels, const int32_t* pred_labels, int64_t B, int64_t n_pixels,
                          PairTables tables, uint64_t* n_keys, int32_t* negative, void* stream) {
  require_non_negative(B, "B");
  require_non_negative(n_pixels, "n_pixels");
  if (tables.capacity <= n_pixels || (tables.capacity & (tables.capacity - 1)) != 0)
    throw std::invalid_argument("tables.capacity must be a power of two above n_pixels");
  if (B > 65535) throw std::invalid_argument("B must be at most 65535 images per launch");
  const cudaStream_t s = as_stream(stream);
  const size_t n_slots = size_t(B * tables.capacity);
  cudaMemsetAsync(tables.keys, 0xff, n_slots * sizeof(uint64_t), s);
  cudaMemsetAsync(tables.counts, 0, n_slots * sizeof(uint64_t), s);
  cudaMemsetAsync(n_keys, 0, sizeof(uint64_t), s);
  cudaMemsetAsync(negative, 0, size_t(2 * B) * sizeof(int32_t), s);
  if (B == 0 || n_pixels == 0) return;
  const dim3 grid(item_blocks(n_pixels), unsigned(B));
  count_pairs_kernel<<<grid, THREADS, 0, s>>>(true_labels, pred_labels, n_pixels, tables.capacity,
                                              reinterpret_cast<u64*>(tables.keys), reinterpret_cast<u64*>(tables.counts),
                                              reinterpret_cast<u64*>(n_keys), negative);
  check_launch("label_overlaps_count");
}

void label_overlaps_compact(PairTables tables, int64_t B, int64_t n_keys, int64_t* rows, uint64_t* cursor,
                            void* stream) {
  const cudaStream_t s = as_stream(stream);
  cudaMemsetAsync(cursor, 0, sizeof(uint64_t), s);
  const int64_t n_slots = B * tables.capacity;
  if (n_slots == 0 || n_keys == 0) return;
  compact_kernel<<<item_blocks(n_slots), THREADS, 0, s>>>(reinterpret_cast<const u64*>(tables.keys),
                                                          reinterpret_cast<const u64*>(tables.counts), n_slots,
                                                          tables.capacity, n_keys, rows,
                                                          reinterpret_cast<u64*>(cursor));
  check_launch("label_overlaps_compact");
}

}  // namespace percs::cuda
