// Host entry points of the CUDA kernels, called by bindings.cpp. Plain C++ (no CUDA syntax) so
// that the binding compiles with the host compiler. Pointers are device addresses; every entry
// point only enqueues work on `stream` (no host sync, so a CUDA graph can capture it) and throws
// std::runtime_error naming the failed CUDA call.
#pragma once

#include <cstdint>
#include <string>

namespace dc {

// Nearest centroid per row. x (B, N, d) of `x_dtype`, centroids (B, K, d) fp32; writes
// c_sqnorm (B, K) fp32 (workspace), dist (B, N) fp32 = sum((x - c_label)^2) and labels (B, N)
// int64 (argmin of ||c||^2 - 2 x.c in `precision`, ties to the lowest index).
void assign(uintptr_t x, const std::string& x_dtype, uintptr_t centroids, uintptr_t c_sqnorm,
            uintptr_t dist, uintptr_t labels, int64_t batch, int64_t n, int64_t k, int64_t d,
            const std::string& precision, uintptr_t stream);

// Cluster sums and sizes, then centroids = sums / counts for non-empty clusters. sums (B, K, d)
// fp32 workspace and counts (B, K) int64 are zeroed here.
void update(uintptr_t x, const std::string& x_dtype, uintptr_t labels, uintptr_t centroids,
            uintptr_t sums, uintptr_t counts, int64_t batch, int64_t n, int64_t k, int64_t d,
            uintptr_t stream);

// Empty-cluster split of the reference, in place on centroids (B, K, d) fp32 and counts (B, K)
// int64; nsplit (B,) int64 receives the number of splits per problem.
void split(uintptr_t centroids, uintptr_t counts, uintptr_t nsplit, int64_t batch, int64_t k,
           int64_t d, uint64_t seed, uint64_t iteration, uintptr_t stream);

// mean (d,) fp64 and population covariance (d, d) fp64 of x (N, d).
void covariance(uintptr_t x, const std::string& x_dtype, uintptr_t mean, uintptr_t cov,
                int64_t n, int64_t d, uintptr_t stream);

// out (N, d_out) fp32 = (x - mean) @ proj, rows L2-normalised when `normalize`.
void pca_apply(uintptr_t x, const std::string& x_dtype, uintptr_t mean, uintptr_t proj,
               uintptr_t out, int64_t n, int64_t d_in, int64_t d_out, bool normalize,
               uintptr_t stream);

// The split's donor draw evaluated on the host by the same code the kernel runs, so that a
// machine without a GPU can check it against the Python reference bit for bit.
uint64_t split_draw(uint64_t seed, uint64_t iteration, uint64_t cluster);

}  // namespace dc
