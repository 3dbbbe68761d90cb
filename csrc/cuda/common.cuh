// Shared helpers of the CUDA kernels: error checks that become Python exceptions, element
// types, and the fp32 register-tiled micro-kernel used by the exact (CUDA-core) GEMM paths.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace dc {

// Every CUDA runtime call goes through this: a failure throws std::runtime_error naming the
// call and the CUDA error, which pybind11 turns into a Python RuntimeError.
#define DC_CUDA_CHECK(call)                                                                   \
  do {                                                                                        \
    cudaError_t dc_err_ = (call);                                                             \
    if (dc_err_ != cudaSuccess) {                                                             \
      throw std::runtime_error(std::string("CUDA call failed: ") + #call + " at " + __FILE__ + \
                               ":" + std::to_string(__LINE__) + ": " +                        \
                               cudaGetErrorString(dc_err_));                                  \
    }                                                                                         \
  } while (0)

// After a <<<...>>> launch: a bad configuration is reported by cudaGetLastError, not by the
// launch itself. `what` names the kernel in the message.
#define DC_CHECK_LAUNCH(what)                                                                 \
  do {                                                                                        \
    cudaError_t dc_err_ = cudaGetLastError();                                                 \
    if (dc_err_ != cudaSuccess) {                                                             \
      throw std::runtime_error(std::string("CUDA kernel launch failed: ") + (what) + " at " + \
                               __FILE__ + ":" + std::to_string(__LINE__) + ": " +             \
                               cudaGetErrorString(dc_err_));                                  \
    }                                                                                         \
  } while (0)

// Element types of the point arrays the kernels read (the wrapper converts anything else).
enum class DType { F32, F16, BF16 };

DType parse_dtype(const std::string& name);  // "float32" | "float16" | "bfloat16"

// Number of SMs of the current device (sizes grids that loop over their rows).
int sm_count();

// Throws std::invalid_argument (Python ValueError) unless 1 <= B <= 65535 and 1 <= N, K, d
// < 2^31; `step` names the entry point in the message.
void check_sizes(const char* step, int64_t batch, int64_t n, int64_t k, int64_t d);

// Calls f(T{}) with T the C++ type of `dtype`: one switch instead of one per launcher.
template <typename F>
void dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::F32: f(float{}); break;
    case DType::F16: f(__half{}); break;
    case DType::BF16: f(__nv_bfloat16{}); break;
  }
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

inline unsigned ceil_div(int64_t a, int64_t b) { return static_cast<unsigned>((a + b - 1) / b); }

// ---------------------------------------------------------------------------------------------
// fp32 register tile: a 64 x 64 output tile per 256-thread block, 4 x 4 per thread, operands
// staged in shared memory k-major (As[k][m], Bs[k][n]) so that the inner loop reads one value
// per row and per column. Thread (ty, tx) = (tid / 16, tid % 16) owns rows ty + 16 i and
// columns tx + 16 j: within a warp the A reads are 2 broadcast addresses and the B reads 16
// consecutive words, so neither has bank conflicts. Plain FMA, so the result is IEEE fp32.
constexpr int kFmaTile = 64;
constexpr int kFmaK = 16;
constexpr int kFmaThreads = 256;
constexpr int kFmaPad = kFmaTile + 1;  // +1 word per k-row keeps transposed stores conflict-light

__device__ __forceinline__ void fma_tile(const float (*As)[kFmaPad], const float (*Bs)[kFmaPad],
                                         int ty, int tx, float acc[4][4]) {
#pragma unroll
  for (int k = 0; k < kFmaK; ++k) {
    float a[4], b[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) a[i] = As[k][ty + 16 * i];
#pragma unroll
    for (int j = 0; j < 4; ++j) b[j] = Bs[k][tx + 16 * j];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
  }
}

}  // namespace dc
