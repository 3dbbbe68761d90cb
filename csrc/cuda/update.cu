// Cluster sums: every row added into its cluster's sum, 1 into its count (both accumulated into,
// so that rows may arrive in chunks; the division by the counts is dc_kernels' finalize).
//
// One warp per point adds the row into its cluster's sum. When the sums of all K clusters fit
// in shared memory, a block first aggregates its points there (shared atomics) and adds its
// totals to global memory once per touched cluster; otherwise the rows go straight to global
// atomics, which are coalesced (32 consecutive dims per instruction).
#include "common.cuh"
#include "kernels.h"

namespace dc {
namespace {

constexpr int kUpdateThreads = 256;
constexpr int kWarpsPerBlock = kUpdateThreads / 32;
// Dynamic shared memory that needs no opt-in attribute.
constexpr int64_t kSharedLimit = 48 * 1024;

template <typename T, bool kShared>
__global__ void __launch_bounds__(kUpdateThreads)
    accumulate_kernel(const T* __restrict__ x, const int64_t* __restrict__ labels,
                      float* __restrict__ sums, unsigned long long* __restrict__ counts, int n,
                      int k, int d) {
  extern __shared__ float s_sums[];  // kShared: K * d sums, then K counts
  unsigned* s_counts = reinterpret_cast<unsigned*>(s_sums + static_cast<int64_t>(k) * d);
  const int b = blockIdx.y;
  x += static_cast<int64_t>(b) * n * d;
  labels += static_cast<int64_t>(b) * n;
  sums += static_cast<int64_t>(b) * k * d;
  counts += static_cast<int64_t>(b) * k;
  const int lane = threadIdx.x & 31;

  if (kShared) {
    for (int i = threadIdx.x; i < k * d + k; i += blockDim.x) s_sums[i] = 0.f;  // 0.f == 0u
    __syncthreads();
  }
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
       row < n; row += warps) {
    const int64_t label = labels[row];
    // Labels come from assign and lie in [0, K); anything else would write out of bounds.
    if (label < 0 || label >= k) continue;
    const T* xr = x + row * d;
    if (kShared) {
      float* dst = s_sums + label * d;
      for (int t = lane; t < d; t += 32) atomicAdd(dst + t, to_float(xr[t]));
      if (lane == 0) atomicAdd(s_counts + label, 1u);
    } else {
      float* dst = sums + label * d;
      for (int t = lane; t < d; t += 32) atomicAdd(dst + t, to_float(xr[t]));
      if (lane == 0) atomicAdd(counts + label, 1ull);
    }
  }
  if (kShared) {
    __syncthreads();
    for (int i = threadIdx.x; i < k * d; i += blockDim.x) {
      if (s_counts[i / d] != 0) atomicAdd(sums + i, s_sums[i]);
    }
    for (int i = threadIdx.x; i < k; i += blockDim.x) {
      if (s_counts[i] != 0) atomicAdd(counts + i, static_cast<unsigned long long>(s_counts[i]));
    }
  }
}

}  // namespace

void cluster_sums(uintptr_t x, uintptr_t labels, uintptr_t sums, uintptr_t counts, int64_t batch,
                  int64_t n, int64_t k, int64_t d, const std::string& x_dtype,
                  uintptr_t stream) {
  check_sizes("cluster_sums", batch, n, k, d);
  const DType dtype = parse_dtype(x_dtype);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  auto* sum_p = reinterpret_cast<float*>(sums);
  auto* count_p = reinterpret_cast<unsigned long long*>(counts);
  const int64_t shared_bytes = (k * d + k) * 4;
  const bool use_shared = shared_bytes <= kSharedLimit;
  const int sms = sm_count();
  // Enough blocks to fill the card; with shared aggregation fewer, larger blocks (each one
  // flushes up to K * d atomics at its end).
  const int64_t per_problem = use_shared ? (4 * sms + batch - 1) / batch
                                         : (32 * sms + batch - 1) / batch;
  const int64_t wanted = (n + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const dim3 grid(static_cast<unsigned>(wanted < per_problem ? wanted : per_problem),
                  static_cast<unsigned>(batch));
  const auto* label_p = reinterpret_cast<const int64_t*>(labels);
  const int ni = static_cast<int>(n), ki = static_cast<int>(k), di = static_cast<int>(d);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto* xp = reinterpret_cast<const T*>(x);
    if (use_shared) {
      accumulate_kernel<T, true><<<grid, kUpdateThreads, static_cast<size_t>(shared_bytes), s>>>(
          xp, label_p, sum_p, count_p, ni, ki, di);
      DC_CHECK_LAUNCH("accumulate_kernel<shared>");
    } else {
      accumulate_kernel<T, false><<<grid, kUpdateThreads, 0, s>>>(xp, label_p, sum_p, count_p,
                                                                  ni, ki, di);
      DC_CHECK_LAUNCH("accumulate_kernel<global>");
    }
  });
}

}  // namespace dc
