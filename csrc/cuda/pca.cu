// PCA steps: covariance (mean, then the Gram matrix of the centred rows) and the fused apply
// (centre, project, L2-normalise).
//
// Covariance: column sums in fp64 give the mean; the Gram matrix of x - mean is computed only
// for the upper-triangle 64 x 64 tiles, with fp32 FMA over runs of 256 rows whose partial sums
// are added into fp64 registers, and the blocks' tiles summed with fp64 atomics. Centring first
// (instead of gram / N - mean mean^T) avoids cancellation when the mean is large.
#include <algorithm>

#include "common.cuh"
#include "kernels.h"

namespace dc {
namespace {

constexpr int kColThreadsX = 32;  // columns per block (coalesced)
constexpr int kColThreadsY = 8;   // row lanes per column
constexpr int64_t kColRows = 4096;  // rows per block of the column sums (at least)
constexpr int kFlushSteps = 16;   // fp32 accumulation over 16 * 16 = 256 rows, then fp64

template <typename T>
__global__ void column_sum_kernel(const T* __restrict__ x, double* __restrict__ sums, int n,
                                  int d, int64_t rows_per_block) {
  __shared__ double part[kColThreadsY][kColThreadsX];
  const int col = blockIdx.x * kColThreadsX + threadIdx.x;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * rows_per_block;
  const int64_t row_end = min(static_cast<int64_t>(n), row0 + rows_per_block);
  double s = 0.0;
  if (col < d) {
    for (int64_t r = row0 + threadIdx.y; r < row_end; r += kColThreadsY) {
      s += to_float(x[r * d + col]);
    }
  }
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && col < d) {
    for (int y = 1; y < kColThreadsY; ++y) s += part[y][threadIdx.x];
    atomicAdd(sums + col, s);
  }
}

__global__ void divide_kernel(double* __restrict__ v, int64_t size, double by) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < size) v[i] /= by;
}

// Block (tile pair p, row chunk): tile pair p enumerates the tiles (ti, tj), ti <= tj, of the
// upper triangle row by row.
template <typename T>
__global__ void __launch_bounds__(kFmaThreads)
    gram_kernel(const T* __restrict__ x, const double* __restrict__ mean,
                double* __restrict__ gram, int n, int d, int tiles, int64_t rows_per_chunk) {
  __shared__ float As[kFmaK][kFmaPad];
  __shared__ float Bs[kFmaK][kFmaPad];
  __shared__ double mean_i[kFmaTile], mean_j[kFmaTile];
  int ti = 0, rest = blockIdx.x;
  while (rest >= tiles - ti) {
    rest -= tiles - ti;
    ++ti;
  }
  const int tj = ti + rest;
  const int i0 = ti * kFmaTile, j0 = tj * kFmaTile;
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  if (tid < kFmaTile) {
    mean_i[tid] = i0 + tid < d ? mean[i0 + tid] : 0.0;
    mean_j[tid] = j0 + tid < d ? mean[j0 + tid] : 0.0;
  }
  __syncthreads();

  const int64_t r_begin = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  const int64_t r_end = min(static_cast<int64_t>(n), r_begin + rows_per_chunk);
  float acc[4][4] = {};
  double total[4][4] = {};
  int steps = 0;
  for (int64_t r0 = r_begin; r0 < r_end; r0 += kFmaK) {
    // 16 rows x 64 columns for each side; row-major x makes these loads coalesced as is.
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int e = tid + q * kFmaThreads, kk = e / kFmaTile, cc = e % kFmaTile;
      const int64_t r = r0 + kk;
      const bool in_rows = r < r_end;
      As[kk][cc] = (in_rows && i0 + cc < d)
                       ? static_cast<float>(to_float(x[r * d + i0 + cc]) - mean_i[cc])
                       : 0.f;
      Bs[kk][cc] = (in_rows && j0 + cc < d)
                       ? static_cast<float>(to_float(x[r * d + j0 + cc]) - mean_j[cc])
                       : 0.f;
    }
    __syncthreads();
    fma_tile(As, Bs, ty, tx, acc);
    __syncthreads();
    if (++steps == kFlushSteps) {
      steps = 0;
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          total[i][j] += acc[i][j];
          acc[i][j] = 0.f;
        }
    }
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int gi = i0 + ty + 16 * i, gj = j0 + tx + 16 * j;
      if (gi < d && gj < d && gi <= gj) {
        atomicAdd(gram + static_cast<int64_t>(gi) * d + gj, total[i][j] + acc[i][j]);
      }
    }
}

// cov = gram / n, mirrored: the thread of (i, j), i <= j, writes both halves, so no thread
// reads an element another one writes.
__global__ void symmetrize_kernel(double* __restrict__ cov, int d, double n) {
  const int64_t total = static_cast<int64_t>(d) * d;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += stride) {
    const int64_t i = idx / d, j = idx % d;
    if (i <= j) {
      const double v = cov[idx] / n;
      cov[idx] = v;
      cov[j * d + i] = v;
    }
  }
}

// out = (x - mean) @ proj for 64 rows per block, all d_out columns 64 at a time; the row's sum
// of squares accumulates across column tiles and the epilogue divides the block's own outputs
// by the norm (each thread rereads only what it wrote, so no barrier is needed).
template <typename T>
__global__ void __launch_bounds__(kFmaThreads)
    pca_apply_kernel(const T* __restrict__ x, const float* __restrict__ mean,
                     const float* __restrict__ proj, float* __restrict__ out, int n, int d_in,
                     int d_out, bool normalize) {
  __shared__ float As[kFmaK][kFmaPad];
  __shared__ float Bs[kFmaK][kFmaPad];
  const int m0 = blockIdx.x * kFmaTile;
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  float sumsq[4] = {0.f, 0.f, 0.f, 0.f};
  for (int n0 = 0; n0 < d_out; n0 += kFmaTile) {
    float acc[4][4] = {};
    for (int k0 = 0; k0 < d_in; k0 += kFmaK) {
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int e = tid + q * kFmaThreads;
        {  // points: 64 rows x 16 dims, stored transposed
          const int r = e / kFmaK, kk = e % kFmaK, gk = k0 + kk;
          const int64_t gr = static_cast<int64_t>(m0) + r;
          As[kk][r] = (gr < n && gk < d_in) ? to_float(x[gr * d_in + gk]) - mean[gk] : 0.f;
        }
        {  // projection: 16 dims x 64 output columns, already k-major
          const int kk = e / kFmaTile, cc = e % kFmaTile, gk = k0 + kk, gc = n0 + cc;
          Bs[kk][cc] = (gk < d_in && gc < d_out)
                           ? proj[static_cast<int64_t>(gk) * d_out + gc]
                           : 0.f;
        }
      }
      __syncthreads();
      fma_tile(As, Bs, ty, tx, acc);
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = m0 + ty + 16 * i;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int col = n0 + tx + 16 * j;
        if (row < n && col < d_out) {
          out[static_cast<int64_t>(row) * d_out + col] = acc[i][j];
          sumsq[i] = fmaf(acc[i][j], acc[i][j], sumsq[i]);
        }
      }
    }
  }
  if (!normalize) return;  // uniform over the grid
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float s = sumsq[i];
    for (int off = 8; off; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    const float norm = fmaxf(sqrtf(s), 1e-12f);
    const int row = m0 + ty + 16 * i;
    if (row >= n) continue;
    float* out_row = out + static_cast<int64_t>(row) * d_out;
    for (int col = tx; col < d_out; col += 16) out_row[col] = out_row[col] / norm;
  }
}

}  // namespace

void covariance(uintptr_t x, uintptr_t mean, uintptr_t cov, int64_t n, int64_t d,
                const std::string& x_dtype, uintptr_t stream) {
  check_sizes("covariance", 1, n, 1, d);
  const DType dtype = parse_dtype(x_dtype);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  auto* mean_p = reinterpret_cast<double*>(mean);
  auto* cov_p = reinterpret_cast<double*>(cov);
  DC_CUDA_CHECK(cudaMemsetAsync(mean_p, 0, sizeof(double) * d, s));
  DC_CUDA_CHECK(cudaMemsetAsync(cov_p, 0, sizeof(double) * d * d, s));
  const int ni = static_cast<int>(n), di = static_cast<int>(d);

  const int tiles = static_cast<int>(ceil_div(d, kFmaTile));
  const int64_t pairs = static_cast<int64_t>(tiles) * (tiles + 1) / 2;
  // Row chunks so that about 4 blocks per SM run; at least 256 rows per chunk.
  const int64_t sms = sm_count();
  int64_t chunks = (4 * sms + pairs - 1) / pairs;
  const int64_t max_chunks = (n + 255) / 256;
  if (chunks > max_chunks) chunks = max_chunks;
  int64_t rows_per_chunk = (n + chunks - 1) / chunks;
  rows_per_chunk = (rows_per_chunk + kFmaK - 1) / kFmaK * kFmaK;
  chunks = (n + rows_per_chunk - 1) / rows_per_chunk;

  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto* xp = reinterpret_cast<const T*>(x);
    // Grid axis y is limited to 65535 blocks: longer inputs get longer blocks.
    const int64_t col_rows = std::max<int64_t>(kColRows, (n + 65534) / 65535);
    const dim3 col_grid(ceil_div(d, kColThreadsX), ceil_div(n, col_rows));
    column_sum_kernel<T><<<col_grid, dim3(kColThreadsX, kColThreadsY), 0, s>>>(xp, mean_p, ni,
                                                                               di, col_rows);
    DC_CHECK_LAUNCH("column_sum_kernel");
    divide_kernel<<<ceil_div(d, 256), 256, 0, s>>>(mean_p, d, static_cast<double>(n));
    DC_CHECK_LAUNCH("covariance divide_kernel");
    const dim3 grid(static_cast<unsigned>(pairs), static_cast<unsigned>(chunks));
    gram_kernel<T><<<grid, kFmaThreads, 0, s>>>(xp, mean_p, cov_p, ni, di, tiles,
                                                rows_per_chunk);
    DC_CHECK_LAUNCH("gram_kernel");
  });
  const int64_t blocks = (d * d + 255) / 256;
  const int64_t max_blocks = 16 * sms;
  symmetrize_kernel<<<static_cast<unsigned>(blocks < max_blocks ? blocks : max_blocks), 256, 0,
                      s>>>(cov_p, di, static_cast<double>(n));
  DC_CHECK_LAUNCH("symmetrize_kernel");
}

void pca_apply(uintptr_t x, uintptr_t mean, uintptr_t proj, uintptr_t out, int64_t n,
               int64_t d_in, int64_t d_out, bool normalize, const std::string& x_dtype,
               uintptr_t stream) {
  check_sizes("pca_apply", 1, n, d_out, d_in);
  const DType dtype = parse_dtype(x_dtype);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    pca_apply_kernel<T><<<ceil_div(n, kFmaTile), kFmaThreads, 0, s>>>(
        reinterpret_cast<const T*>(x), reinterpret_cast<const float*>(mean),
        reinterpret_cast<const float*>(proj), reinterpret_cast<float*>(out),
        static_cast<int>(n), static_cast<int>(d_in), static_cast<int>(d_out), normalize);
    DC_CHECK_LAUNCH("pca_apply_kernel");
  });
}

}  // namespace dc
