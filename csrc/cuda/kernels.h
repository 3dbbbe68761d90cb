// Host entry points of the CUDA kernels, called by bindings.cpp. Plain C++ (no CUDA syntax) so
// that the binding compiles with the host compiler. Arguments in the order shared with the CPU
// extension: arrays (inputs, then outputs), sizes, the step's scalars, then x_dtype, precision,
// workspaces and the stream. Pointers are device addresses; every entry
// point only enqueues work on `stream` (no host sync, so a CUDA graph can capture it) and throws
// std::runtime_error naming the failed CUDA call.
#pragma once

#include <cstdint>
#include <string>

namespace dc {

// Nearest centroid per row. x (B, N, d) of `x_dtype`, centroids (B, K, d) fp32; writes dist
// (B, N) fp32 = sum((x - c_label)^2), labels (B, N) int64 (argmin of ||c||^2 - 2 x.c in
// `precision`, ties to the lowest index) and c_sqnorm (B, K) fp32 (workspace).
void assign(uintptr_t x, uintptr_t centroids, uintptr_t dist, uintptr_t labels, int64_t batch,
            int64_t n, int64_t k, int64_t d, const std::string& x_dtype,
            const std::string& precision, uintptr_t c_sqnorm, uintptr_t stream);

// Adds every row of x (B, N, d) into sums (B, K, d) fp32 at its label (B, N) int64 and 1 into
// counts (B, K) int64; both accumulated into, not zeroed. Labels outside [0, K) are skipped.
void cluster_sums(uintptr_t x, uintptr_t labels, uintptr_t sums, uintptr_t counts, int64_t batch,
                  int64_t n, int64_t k, int64_t d, const std::string& x_dtype, uintptr_t stream);

// Empty-cluster split of the reference, in place on centroids (B, K, d) fp32 and counts (B, K)
// int64; nsplit (B,) int64 receives the number of splits per problem. The iteration is read
// from `iteration_on_device` (one int64 in device memory) when that is not 0.
void split(uintptr_t centroids, uintptr_t counts, uintptr_t nsplit, int64_t batch, int64_t k,
           int64_t d, uint64_t seed, uint64_t iteration, uintptr_t iteration_on_device,
           uintptr_t stream);

// mean (d,) fp64 and population covariance (d, d) fp64 of x (N, d).
void covariance(uintptr_t x, uintptr_t mean, uintptr_t cov, int64_t n, int64_t d,
                const std::string& x_dtype, uintptr_t stream);

// out (N, d_out) fp32 = (x - mean) @ proj, rows L2-normalised when `normalize`.
void pca_apply(uintptr_t x, uintptr_t mean, uintptr_t proj, uintptr_t out, int64_t n,
               int64_t d_in, int64_t d_out, bool normalize, const std::string& x_dtype,
               uintptr_t stream);

}  // namespace dc
