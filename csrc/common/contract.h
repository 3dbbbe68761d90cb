// The facts every native backend shares with dc_kernels/contract.py, written once for the C++
// (csrc/cpu) and CUDA (csrc/cuda) extensions: the empty-cluster split's draw and perturbation.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define DC_HOST_DEVICE __host__ __device__
#else
#define DC_HOST_DEVICE
#endif

namespace dc {

// Relative perturbation of the two copies of a split centroid (contract.SPLIT_EPS): a power of
// two, so that 1 +- eps and the products by it round exactly as in the reference.
constexpr float kSplitEps = 1.0f / 1024.0f;

// splitmix64's finaliser (contract.mix64).
DC_HOST_DEVICE inline uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The draw that picks the donor of empty `cluster` at `iteration` (contract.split_draw); the
// seed is the Python seed masked to 64 bits.
DC_HOST_DEVICE inline uint64_t split_draw(uint64_t seed, uint64_t iteration, uint64_t cluster) {
  return mix64(mix64(mix64(seed) ^ iteration) ^ cluster);
}

}  // namespace dc
