// fill_holes on the GPU: one thread block per mask floods its padded box from the border (the CPU's stack
// search, done as repeated sweeps until nothing changes); each enclosed background pixel takes the smallest
// hole_owner_key of the masks enclosing it (atomicMin), and a last kernel writes those labels. Holes are found
// from the input labels only and written afterwards, as on the CPU, so the result does not depend on order.
#include "common/cuda_common.cuh"
#include "cuda_ops.h"
#include "fill_holes/fill_holes.h"

namespace percs::cuda {
namespace {

// State of a padded-box pixel during the flood.
constexpr uint8_t OPEN = 0;     // not in the mask, not (yet) reached from the border
constexpr uint8_t REACHED = 1;  // connected to the border through pixels not in the mask
constexpr uint8_t WALL = 2;     // a pixel of the mask

constexpr unsigned long long NO_KEY = ~0ull;

__device__ void mark_walls_and_border(const int32_t* __restrict__ labels, int64_t W, const CellBox& c,
                                      uint8_t* state) {
  const int32_t bh = c.h + 2, bw = c.w + 2, size = bh * bw;
  for (int32_t i = threadIdx.x; i < size; i += blockDim.x) {
    const int32_t by = i / bw, bx = i % bw;
    const bool border = by == 0 || bx == 0 || by == bh - 1 || bx == bw - 1;
    state[i] = border ? REACHED : (labels[image_pixel(c, W, by, bx)] == c.label ? WALL : OPEN);
  }
}

// Sweeps until a whole sweep reaches no new pixel. Reaching is monotonic (OPEN -> REACHED only), so threads
// may see a neighbour's update in the same sweep or the next one: the fixed point is the same. The accesses
// are volatile so that those concurrent byte loads and stores are real memory operations, never cached.
__device__ void flood_from_border(const CellBox& c, uint8_t* state_memory) {
  __shared__ int changed;
  volatile uint8_t* state = state_memory;
  const int32_t bw = c.w + 2, n_interior = c.h * c.w;
  do {
    __syncthreads();  // every thread has read `changed` (and mark_walls_and_border is done) before the reset
    if (threadIdx.x == 0) changed = 0;
    __syncthreads();
    bool reached_any = false;
    for (int32_t k = threadIdx.x; k < n_interior; k += blockDim.x) {
      int32_t by, bx;
      interior_pixel(c, k, &by, &bx);
      const int32_t i = by * bw + bx;
      if (state[i] != OPEN) continue;
      if (state[i - bw] == REACHED || state[i + bw] == REACHED || state[i - 1] == REACHED || state[i + 1] == REACHED) {
        state[i] = REACHED;
        reached_any = true;
      }
    }
    if (reached_any) changed = 1;
    __syncthreads();  // all updates of this sweep, and `changed`, are visible to every thread
  } while (changed);
}

__global__ void find_holes_kernel(const int32_t* __restrict__ labels, int64_t W, const CellBox* __restrict__ cells,
                                  const int64_t* __restrict__ offsets, uint8_t* scratch,
                                  unsigned long long* hole_keys) {
  const CellBox c = cells[blockIdx.x];
  uint8_t* state = scratch + offsets[blockIdx.x];
  mark_walls_and_border(labels, W, c, state);
  flood_from_border(c, state);
  const unsigned long long key = hole_owner_key(c);
  const int32_t bw = c.w + 2, n_interior = c.h * c.w;
  for (int32_t k = threadIdx.x; k < n_interior; k += blockDim.x) {
    int32_t by, bx;
    interior_pixel(c, k, &by, &bx);
    const int64_t p = image_pixel(c, W, by, bx);
    if (state[by * bw + bx] == OPEN && labels[p] == 0) atomicMin(hole_keys + p, key);
  }
}

__global__ void write_holes_kernel(int32_t* labels, int64_t n_pixels, const unsigned long long* __restrict__ keys) {
  for (int64_t p = first_item(); p < n_pixels; p += item_stride()) {
    const unsigned long long key = keys[p];
    if (key != NO_KEY) labels[p] = int32_t(uint32_t(key & 0xffffffffull));
  }
}

}  // namespace

void fill_holes(int32_t* labels, int64_t H, int64_t W, DeviceCells cells, uint8_t* scratch, uint64_t* hole_keys,
                void* stream) {
  require_non_negative(H, "H");
  require_non_negative(W, "W");
  require_non_negative(cells.n, "n_cells");
  if (cells.n == 0) return;
  static_assert(sizeof(uint64_t) == sizeof(unsigned long long), "hole keys are 64-bit");
  unsigned long long* keys = reinterpret_cast<unsigned long long*>(hole_keys);
  find_holes_kernel<<<cell_blocks(cells.n), THREADS, 0, as_stream(stream)>>>(
      labels, W, reinterpret_cast<const CellBox*>(cells.boxes), cells.scratch_offsets, scratch, keys);
  check_launch("fill_holes (find)");
  write_holes_kernel<<<item_blocks(H * W), THREADS, 0, as_stream(stream)>>>(labels, H * W, keys);
  check_launch("fill_holes (write)");
}

}  // namespace percs::cuda
