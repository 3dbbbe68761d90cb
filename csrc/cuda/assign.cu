// Fused assign: for every point the centroid minimising ||c||^2 - 2 x.c, found tile by tile
// (points x centroids on chip, running min/argmin in registers) so that the N x K matrix of
// distances never exists. Then the exact fp32 distance sum((x - c)^2) to the chosen centroid.
//
// Precisions: fp32 = FMA on CUDA cores (IEEE fp32 dot products); tf32 / bf16 / fp16 = tensor
// cores through nvcuda::wmma with fp32 accumulation, operands rounded to nearest when they are
// staged in shared memory. Problems of a batch run side by side on grid axis y.
#include <mma.h>

#include <cmath>

#include "common.cuh"
#include "kernels.h"

namespace dc {
namespace {

using namespace nvcuda;

constexpr unsigned kFull = 0xffffffffu;

// ||c||^2 of every centroid row, one warp per row, fp32 like the reference.
__global__ void centroid_sqnorm_kernel(const float* __restrict__ c, float* __restrict__ out,
                                       int64_t rows, int d) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;  // uniform per warp: the shuffles below stay converged
  const float* p = c + row * d;
  float s = 0.f;
  for (int t = lane; t < d; t += 32) s = fmaf(p[t], p[t], s);
  for (int off = 16; off; off >>= 1) s += __shfl_xor_sync(kFull, s, off);
  if (lane == 0) out[row] = s;
}

// Lexicographic (value, index) minimum: associative, so any reduction order keeps ties on the
// lowest index.
__device__ __forceinline__ void take_min(float& best, int& arg, float v, int idx) {
  if (v < best || (v == best && idx < arg)) {
    best = v;
    arg = idx;
  }
}

// ---------------------------------------------------------------------------------- fp32 (FMA)
// A block owns 64 points and walks over all centroids 64 at a time. Thread (ty, tx) keeps the
// running minimum of rows ty + 16 i over its columns tx + 16 j; the 16 threads of a row (one
// half-warp) merge their minima at the end.
template <typename T>
__global__ void __launch_bounds__(kFmaThreads)
    assign_fma_kernel(const T* __restrict__ x, const float* __restrict__ c,
                      const float* __restrict__ csq, float* __restrict__ dist,
                      int64_t* __restrict__ labels, int n, int k, int d) {
  __shared__ float As[kFmaK][kFmaPad];
  __shared__ float Bs[kFmaK][kFmaPad];
  const int b = blockIdx.y;
  x += static_cast<int64_t>(b) * n * d;
  c += static_cast<int64_t>(b) * k * d;
  csq += static_cast<int64_t>(b) * k;
  const int m0 = blockIdx.x * kFmaTile;
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;

  float best[4];
  int arg[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    best[i] = INFINITY;
    arg[i] = 0;
  }
  for (int n0 = 0; n0 < k; n0 += kFmaTile) {
    float acc[4][4] = {};
    for (int k0 = 0; k0 < d; k0 += kFmaK) {
      // 64 rows x 16 dims of points and of centroids, 4 elements of each per thread; rows
      // and dims past the end are zeros, which add nothing to the dot products.
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int e = tid + q * kFmaThreads, r = e / kFmaK, kk = e % kFmaK, gk = k0 + kk;
        const int64_t gr = static_cast<int64_t>(m0) + r, gc = static_cast<int64_t>(n0) + r;
        As[kk][r] = (gr < n && gk < d) ? to_float(x[gr * d + gk]) : 0.f;
        Bs[kk][r] = (gc < k && gk < d) ? c[gc * d + gk] : 0.f;
      }
      __syncthreads();
      fma_tile(As, Bs, ty, tx, acc);
      __syncthreads();
    }
    // Columns are visited in increasing order per thread, so a strict < keeps the lowest index.
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int col = n0 + tx + 16 * j;
      if (col < k) {
        const float cn = csq[col];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float v = fmaf(-2.f, acc[i][j], cn);
          if (v < best[i]) {
            best[i] = v;
            arg[i] = col;
          }
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    // Offsets below 16 stay inside the half-warp that shares the row.
    for (int off = 8; off; off >>= 1) {
      const float ov = __shfl_xor_sync(kFull, best[i], off);
      const int oa = __shfl_xor_sync(kFull, arg[i], off);
      take_min(best[i], arg[i], ov, oa);
    }
    const int row = m0 + ty + 16 * i;
    float s = 0.f;
    if (row < n) {
      const T* xr = x + static_cast<int64_t>(row) * d;
      const float* cr = c + static_cast<int64_t>(arg[i]) * d;
      for (int t = tx; t < d; t += 16) {
        const float diff = to_float(xr[t]) - cr[t];
        s = fmaf(diff, diff, s);
      }
    }
    for (int off = 8; off; off >>= 1) s += __shfl_xor_sync(kFull, s, off);
    if (tx == 0 && row < n) {
      dist[static_cast<int64_t>(b) * n + row] = s;
      labels[static_cast<int64_t>(b) * n + row] = arg[i];
    }
  }
}

// ------------------------------------------------------------------------- tensor cores (WMMA)
// Shared-memory element type S and WMMA fragment type per precision. Rows are padded by 16
// bytes so that fragment loads spread over the banks while every fragment pointer stays
// 32-byte aligned (WMMA's requirement).
template <typename S>
struct MmaTraits;
template <>
struct MmaTraits<__half> {
  using Frag = __half;
  static constexpr int kStep = 16;
  static constexpr int kPad = 8;
  static __device__ __forceinline__ __half convert(float v) { return __float2half_rn(v); }
};
template <>
struct MmaTraits<__nv_bfloat16> {
  using Frag = __nv_bfloat16;
  static constexpr int kStep = 16;
  static constexpr int kPad = 8;
  static __device__ __forceinline__ __nv_bfloat16 convert(float v) {
    return __float2bfloat16_rn(v);
  }
};
template <>
struct MmaTraits<float> {  // TF32: staged as float, already rounded to TF32
  using Frag = wmma::precision::tf32;
  static constexpr int kStep = 8;
  static constexpr int kPad = 4;
  static __device__ __forceinline__ float convert(float v) { return wmma::__float_to_tf32(v); }
};

constexpr int kMmaM = 128;  // points per block
constexpr int kMmaN = 64;   // centroids per tile
constexpr int kMmaK = 32;   // dims per stage
constexpr int kMmaThreads = 256;
constexpr int kLdc = kMmaN + 4;  // fp32 scores: 272-byte rows, 16-row steps stay 32-byte aligned

// 8 warps in a 4 x 2 grid, each computing 32 x 32 scores as 2 x 2 fragments. After the dims
// of a centroid tile are done the fragments go to shared memory (aliasing the operand tiles),
// and thread t scans row t / 2, columns of parity t % 2, keeping its running min/argmin in
// registers across all centroid tiles.
template <typename S, typename T>
__global__ void __launch_bounds__(kMmaThreads, 2)
    assign_mma_kernel(const T* __restrict__ x, const float* __restrict__ c,
                      const float* __restrict__ csq, float* __restrict__ dist,
                      int64_t* __restrict__ labels, int n, int k, int d) {
  using Tr = MmaTraits<S>;
  constexpr int kLdt = kMmaK + Tr::kPad;
  struct Tiles {
    S a[kMmaM][kLdt];
    S b[kMmaN][kLdt];
  };
  constexpr size_t kTileBytes = sizeof(Tiles);
  constexpr size_t kScoreBytes = sizeof(float) * kMmaM * kLdc;
  __shared__ __align__(128) unsigned char smem[kTileBytes > kScoreBytes ? kTileBytes : kScoreBytes];
  auto& tiles = *reinterpret_cast<Tiles*>(smem);
  auto scores = reinterpret_cast<float(*)[kLdc]>(smem);

  const int b = blockIdx.y;
  x += static_cast<int64_t>(b) * n * d;
  c += static_cast<int64_t>(b) * k * d;
  csq += static_cast<int64_t>(b) * k;
  const int m0 = blockIdx.x * kMmaM;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid / 32;
  const int wm = warp / 2, wn = warp % 2;
  const int own_row = tid >> 1, parity = tid & 1;

  wmma::fragment<wmma::matrix_a, 16, 16, Tr::kStep, typename Tr::Frag, wmma::row_major> fa[2];
  wmma::fragment<wmma::matrix_b, 16, 16, Tr::kStep, typename Tr::Frag, wmma::col_major> fb[2];
  wmma::fragment<wmma::accumulator, 16, 16, Tr::kStep, float> acc[2][2];

  float best = INFINITY;
  int arg = 0;
  for (int n0 = 0; n0 < k; n0 += kMmaN) {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);
    for (int k0 = 0; k0 < d; k0 += kMmaK) {
      __syncthreads();  // the previous stage (or score scan) is done with the shared memory
      // Partial unrolling keeps the block within 128 registers (two blocks per SM).
#pragma unroll 4
      for (int q = 0; q < kMmaM * kMmaK / kMmaThreads; ++q) {
        const int e = tid + q * kMmaThreads, r = e / kMmaK, kk = e % kMmaK, gk = k0 + kk;
        const int64_t gr = static_cast<int64_t>(m0) + r;
        tiles.a[r][kk] = Tr::convert((gr < n && gk < d) ? to_float(x[gr * d + gk]) : 0.f);
      }
#pragma unroll 4
      for (int q = 0; q < kMmaN * kMmaK / kMmaThreads; ++q) {
        const int e = tid + q * kMmaThreads, r = e / kMmaK, kk = e % kMmaK, gk = k0 + kk;
        const int64_t gc = static_cast<int64_t>(n0) + r;
        tiles.b[r][kk] = Tr::convert((gc < k && gk < d) ? c[gc * d + gk] : 0.f);
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kMmaK; kk += Tr::kStep) {
#pragma unroll
        for (int i = 0; i < 2; ++i)
          wmma::load_matrix_sync(fa[i], &tiles.a[wm * 32 + i * 16][kk], kLdt);
#pragma unroll
        for (int j = 0; j < 2; ++j)
          wmma::load_matrix_sync(fb[j], &tiles.b[wn * 32 + j * 16][kk], kLdt);
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
      }
    }
    __syncthreads();  // every warp has read its operands before the scores overwrite them
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j)
        wmma::store_matrix_sync(&scores[wm * 32 + i * 16][wn * 32 + j * 16], acc[i][j], kLdc,
                                wmma::mem_row_major);
    __syncthreads();
    for (int q = 0; q < kMmaN / 2; ++q) {
      const int col = 2 * q + parity, gcol = n0 + col;
      if (gcol < k) {
        const float v = fmaf(-2.f, scores[own_row][col], csq[gcol]);
        if (v < best) {  // increasing columns per thread: strict < keeps the lowest index
          best = v;
          arg = gcol;
        }
      }
    }
  }
  {
    const float ov = __shfl_xor_sync(kFull, best, 1);
    const int oa = __shfl_xor_sync(kFull, arg, 1);
    take_min(best, arg, ov, oa);
  }
  // Exact distances: the warp walks its 16 rows one by one so that the loads are coalesced;
  // the lanes that own the row keep the sum.
  float my_dist = 0.f;
  for (int rr = 0; rr < 16; ++rr) {
    const int row = m0 + warp * 16 + rr;
    const int label = __shfl_sync(kFull, arg, 2 * rr);
    float s = 0.f;
    if (row < n) {
      const T* xr = x + static_cast<int64_t>(row) * d;
      const float* cr = c + static_cast<int64_t>(label) * d;
      for (int t = lane; t < d; t += 32) {
        const float diff = to_float(xr[t]) - cr[t];
        s = fmaf(diff, diff, s);
      }
    }
    for (int off = 16; off; off >>= 1) s += __shfl_xor_sync(kFull, s, off);
    if ((lane >> 1) == rr) my_dist = s;
  }
  const int row = m0 + own_row;
  if (parity == 0 && row < n) {
    dist[static_cast<int64_t>(b) * n + row] = my_dist;
    labels[static_cast<int64_t>(b) * n + row] = arg;
  }
}

template <typename S, typename T>
void launch_mma(const T* x, const float* c, const float* csq, float* dist, int64_t* labels,
                int64_t batch, int n, int k, int d, cudaStream_t stream, const char* name) {
  const dim3 grid(ceil_div(n, kMmaM), static_cast<unsigned>(batch));
  assign_mma_kernel<S, T><<<grid, kMmaThreads, 0, stream>>>(x, c, csq, dist, labels, n, k, d);
  DC_CHECK_LAUNCH(name);
}

}  // namespace

void assign(uintptr_t x, uintptr_t centroids, uintptr_t dist, uintptr_t labels, int64_t batch,
            int64_t n, int64_t k, int64_t d, const std::string& x_dtype,
            const std::string& precision, uintptr_t c_sqnorm, uintptr_t stream) {
  check_sizes("assign", batch, n, k, d);
  const DType dtype = parse_dtype(x_dtype);
  if (precision != "fp32" && precision != "tf32" && precision != "bf16" && precision != "fp16") {
    throw std::invalid_argument("dc_kernels._cuda.assign: unknown precision '" + precision +
                                "' (fp32, tf32, bf16 or fp16)");
  }
  auto s = reinterpret_cast<cudaStream_t>(stream);
  const auto* c = reinterpret_cast<const float*>(centroids);
  auto* csq = reinterpret_cast<float*>(c_sqnorm);
  auto* out_dist = reinterpret_cast<float*>(dist);
  auto* out_labels = reinterpret_cast<int64_t*>(labels);

  const int64_t rows = batch * k;
  constexpr int kNormThreads = 256;
  centroid_sqnorm_kernel<<<ceil_div(rows, kNormThreads / 32), kNormThreads, 0, s>>>(
      c, csq, rows, static_cast<int>(d));
  DC_CHECK_LAUNCH("centroid_sqnorm_kernel");

  const int ni = static_cast<int>(n), ki = static_cast<int>(k), di = static_cast<int>(d);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto* xp = reinterpret_cast<const T*>(x);
    if (precision == "fp32") {
      const dim3 grid(ceil_div(n, kFmaTile), static_cast<unsigned>(batch));
      assign_fma_kernel<T><<<grid, kFmaThreads, 0, s>>>(xp, c, csq, out_dist, out_labels, ni,
                                                        ki, di);
      DC_CHECK_LAUNCH("assign_fma_kernel");
    } else if (precision == "tf32") {
      launch_mma<float>(xp, c, csq, out_dist, out_labels, batch, ni, ki, di, s,
                        "assign_mma_kernel<tf32>");
    } else if (precision == "bf16") {
      launch_mma<__nv_bfloat16>(xp, c, csq, out_dist, out_labels, batch, ni, ki, di, s,
                                "assign_mma_kernel<bf16>");
    } else {
      launch_mma<__half>(xp, c, csq, out_dist, out_labels, batch, ni, ki, di, s,
                         "assign_mma_kernel<fp16>");
    }
  });
}

}  // namespace dc
