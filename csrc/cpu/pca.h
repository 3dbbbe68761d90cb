// Fused PCA apply of the CPU backend on raw float32 buffers (contiguous, row-major).
#pragma once

#include <cstdint>

namespace dc {

// out (n, d_out) = (x (n, d_in) - mean) @ proj (d_in, d_out), then each row divided by
// max(||row||, 1e-12) when normalize; centring happens while packing, so x is read once.
void pca_apply(const float* x, const float* mean, const float* proj, float* out, int64_t n,
               int64_t d_in, int64_t d_out, bool normalize, int nthreads);

}  // namespace dc
