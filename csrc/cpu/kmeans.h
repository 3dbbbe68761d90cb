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
void assign(const float* x, const float* centroids, int64_t batch, int64_t n, int64_t k,
            int64_t d, float* dist, int64_t* labels, int nthreads);

// counts[b, j] = |{i: labels[b, i] == j}|; centroids[b, j] = mean of its points when the
// cluster is non-empty, unchanged otherwise. Labels must lie in [0, k).
void update(const float* x, const int64_t* labels, float* centroids, int64_t* counts,
            int64_t batch, int64_t n, int64_t k, int64_t d, int nthreads);

// Split empty clusters in place (the shared semantics of TorchBackend.split); nsplit[b] is the
// number of clusters split in problem b.
void split(float* centroids, int64_t* counts, int64_t batch, int64_t k, int64_t d,
           uint64_t seed, uint64_t iteration, int64_t* nsplit);

// The splitmix64 draw shared by every backend (reference.split_draw).
uint64_t split_draw(uint64_t seed, uint64_t iteration, uint64_t cluster);

}  // namespace dc
