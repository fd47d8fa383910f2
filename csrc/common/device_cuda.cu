// Device queries for percs._cuda.
#include <cuda_runtime.h>

#include "cuda_ops.h"

namespace percs::cuda {

int device_count() {
  int count = 0;
  // No driver, no device or a broken installation all mean "no GPU here": the module must still import.
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the error so that it is not reported by the next launch check
    return 0;
  }
  return count;
}

}  // namespace percs::cuda
