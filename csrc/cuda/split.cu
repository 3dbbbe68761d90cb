// On-device empty-cluster split with the reference's exact semantics (see split() in
// dc_kernels/backends/reference.py): empty clusters in index order; donor m drawn with
// probability weight_m / W, weight_m = max(count_m - 1, 0), by the splitmix64 draw modulo W and
// the first m whose running weight sum exceeds it; both copies scaled by (1 +- 2^-10) on
// alternate dims; counts halved between them. One block per problem; nothing leaves the device.
//
// Each of the 1024 threads owns a contiguous chunk of clusters and keeps its chunk's total
// weight and its next empty cluster in registers. Per split: a block minimum finds the next
// empty cluster, a block scan of the chunk weights gives W and each chunk's offset, and the one
// thread whose chunk holds the draw walks it to the donor. A split never empties a cluster
// (the donor keeps count - count / 2 >= 1), so the clusters to visit are exactly the ones
// empty at the start, each visited once.
#include "common.cuh"
#include "contract.h"
#include "kernels.h"

namespace dc {
namespace {

constexpr int kSplitThreads = 1024;
constexpr int kSplitWarps = kSplitThreads / 32;
constexpr unsigned kFull = 0xffffffffu;
constexpr float kGrow = 1.0f + kSplitEps;
constexpr float kShrink = 1.0f - kSplitEps;

__device__ __forceinline__ long long weight(long long count) { return count > 1 ? count - 1 : 0; }

// Minimum of v over the block; `red` holds kSplitWarps ints. Ends with a barrier so that `red`
// can be reused at once.
__device__ int block_min(int v, int* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  for (int off = 16; off; off >>= 1) v = min(v, __shfl_xor_sync(kFull, v, off));
  if (lane == 0) red[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = red[lane];  // kSplitWarps == 32: one value per lane
    for (int off = 16; off; off >>= 1) v = min(v, __shfl_xor_sync(kFull, v, off));
    if (lane == 0) red[0] = v;
  }
  __syncthreads();
  const int result = red[0];
  __syncthreads();
  return result;
}

// Exclusive prefix sum of v over the block (thread order); *total receives the sum. Same
// barrier discipline as block_min.
__device__ unsigned long long block_exclusive_scan(unsigned long long v, unsigned long long* red,
                                                   unsigned long long* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  unsigned long long inclusive = v;
  for (int off = 1; off < 32; off <<= 1) {
    const unsigned long long other = __shfl_up_sync(kFull, inclusive, off);
    if (lane >= off) inclusive += other;
  }
  if (lane == 31) red[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    unsigned long long w = red[lane];
    for (int off = 1; off < 32; off <<= 1) {
      const unsigned long long other = __shfl_up_sync(kFull, w, off);
      if (lane >= off) w += other;
    }
    red[lane] = w;  // inclusive sums of the warp totals
  }
  __syncthreads();
  const unsigned long long exclusive = inclusive - v + (warp > 0 ? red[warp - 1] : 0ull);
  *total = red[kSplitWarps - 1];
  __syncthreads();
  return exclusive;
}

__global__ void __launch_bounds__(kSplitThreads)
    split_kernel(float* __restrict__ centroids, long long* __restrict__ counts,
                 long long* __restrict__ nsplit, int k, int d, uint64_t seed,
                 uint64_t iteration, const long long* __restrict__ iteration_on_device) {
  static_assert(kSplitWarps == 32, "block_min and the scan assume 32 warps");
  __shared__ int red_int[kSplitWarps];
  __shared__ unsigned long long red_sum[kSplitWarps];
  __shared__ int s_donor;
  const int b = blockIdx.x;
  // Inside a captured CUDA graph the iteration lives on the device (one graph, every iteration).
  if (iteration_on_device != nullptr) iteration = static_cast<uint64_t>(*iteration_on_device);
  centroids += static_cast<int64_t>(b) * k * d;
  counts += static_cast<int64_t>(b) * k;

  const int chunk = (k + kSplitThreads - 1) / kSplitThreads;
  const int begin = min(k, static_cast<int>(threadIdx.x) * chunk);
  const int end = min(k, begin + chunk);
  unsigned long long my_weight = 0;
  int my_next = k;  // first empty cluster of the chunk not yet split (k: none)
  for (int m = begin; m < end; ++m) {
    const long long count = counts[m];
    my_weight += weight(count);
    if (count == 0 && my_next == k) my_next = m;
  }

  long long done = 0;
  while (true) {
    const int j = block_min(my_next, red_int);
    if (j >= k) break;
    unsigned long long total;
    const unsigned long long offset = block_exclusive_scan(my_weight, red_sum, &total);
    if (total == 0) break;  // every cluster has at most one point: nothing can donate
    const unsigned long long r = split_draw(seed, iteration, static_cast<uint64_t>(j)) % total;
    if (my_weight > 0 && offset <= r && r < offset + my_weight) {
      unsigned long long running = offset;
      for (int m = begin; m < end; ++m) {
        running += weight(counts[m]);
        if (running > r) {
          s_donor = m;
          break;
        }
      }
    }
    __syncthreads();
    const int donor = s_donor;
    const long long donor_count = counts[donor];
    const long long moved = donor_count / 2;
    const long long kept = donor_count - moved;
    float* cj = centroids + static_cast<int64_t>(j) * d;
    float* cd = centroids + static_cast<int64_t>(donor) * d;
    for (int t = threadIdx.x; t < d; t += kSplitThreads) {
      const float v = cd[t];
      const bool even = (t & 1) == 0;
      cj[t] = v * (even ? kGrow : kShrink);
      cd[t] = v * (even ? kShrink : kGrow);
    }
    if (donor >= begin && donor < end) my_weight = my_weight - weight(donor_count) + weight(kept);
    if (j >= begin && j < end) {
      my_weight += weight(moved);
      my_next = k;
      for (int m = j + 1; m < end; ++m) {
        if (counts[m] == 0) {  // counts[j] is still 0 but lies behind; donors are never 0
          my_next = m;
          break;
        }
      }
    }
    __syncthreads();  // every thread has read counts[donor] and its chunk
    if (threadIdx.x == 0) {
      counts[j] = moved;
      counts[donor] = kept;
    }
    ++done;
    __syncthreads();  // the new counts are visible to the next donor walk
  }
  if (threadIdx.x == 0) nsplit[b] = done;
}

}  // namespace

void split(uintptr_t centroids, uintptr_t counts, uintptr_t nsplit, int64_t batch, int64_t k,
           int64_t d, uint64_t seed, uint64_t iteration, uintptr_t iteration_on_device,
           uintptr_t stream) {
  check_sizes("split", batch, 1, k, d);
  split_kernel<<<static_cast<unsigned>(batch), kSplitThreads, 0,
                 reinterpret_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<float*>(centroids), reinterpret_cast<long long*>(counts),
      reinterpret_cast<long long*>(nsplit), static_cast<int>(k), static_cast<int>(d), seed,
      iteration, reinterpret_cast<const long long*>(iteration_on_device));
  DC_CHECK_LAUNCH("split_kernel");
}

}  // namespace dc
