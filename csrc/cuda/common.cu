// Definitions of the host helpers declared in common.cuh.
#include "common.cuh"

namespace dc {

DType parse_dtype(const std::string& name) {
  if (name == "float32") return DType::F32;
  if (name == "float16") return DType::F16;
  if (name == "bfloat16") return DType::BF16;
  throw std::invalid_argument("dc_kernels._cuda: unsupported point dtype '" + name +
                              "' (float32, float16 or bfloat16)");
}

int sm_count() {
  // An attribute query: no host sync and legal while a stream is being captured.
  int device = 0;
  int count = 0;
  DC_CUDA_CHECK(cudaGetDevice(&device));
  DC_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

void check_sizes(const char* step, int64_t batch, int64_t n, int64_t k, int64_t d) {
  // Grid axis y holds the batch (at most 65535); row and cluster indices are kept in int.
  constexpr int64_t kIntMax = 2147483647;
  if (batch < 1 || batch > 65535 || n < 1 || n > kIntMax || k < 1 || k > kIntMax || d < 1 ||
      d > kIntMax) {
    throw std::invalid_argument(std::string("dc_kernels._cuda.") + step +
                                ": sizes out of range (B=" + std::to_string(batch) +
                                ", N=" + std::to_string(n) + ", K=" + std::to_string(k) +
                                ", d=" + std::to_string(d) + ")");
  }
}

}  // namespace dc
