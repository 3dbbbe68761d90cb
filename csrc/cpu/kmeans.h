// k-means steps of the CPU backend on raw float32 / int64 buffers (contiguous, row-major).
// Every array is batched: B independent problems of N points and K centroids in d dimensions.
#pragma once

#include <cstdint>

namespace dc {

// labels[b, i] = argmin_j ||c_j||^2 - 2 x_i.c_j (ties -> lowest j) through the tile engine,
// never materialising the N x K matrix; when the two best values are within the fp32 rounding
// error of that expression, their direct distances decide (so labels match float64 more often
// than the expanded form alone can). dist[b, i] = sum((x_i - c_label)^2) computed directly in
// fp32, so it carries no cancellation error.
void assign(const float* x, const float* centroids, float* dist, int64_t* labels, int64_t batch,
            int64_t n, int64_t k, int64_t d, int nthreads);

// Adds every row of x into sums[b, labels[b, i]] and 1 into counts[b, labels[b, i]] (both
// accumulated into, not zeroed); labels outside [0, k) are skipped.
void cluster_sums(const float* x, const int64_t* labels, float* sums, int64_t* counts,
                  int64_t batch, int64_t n, int64_t k, int64_t d, int nthreads);

// Split empty clusters in place (the shared semantics of TorchBackend.split); nsplit[b] is the
// number of clusters split in problem b. The draw and eps come from contract.h.
void split(float* centroids, int64_t* counts, int64_t* nsplit, int64_t batch, int64_t k,
           int64_t d, uint64_t seed, uint64_t iteration);

}  // namespace dc
