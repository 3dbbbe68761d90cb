// Microkernels (AVX-512, AVX2+FMA, portable scalar), run-time ISA choice, packing and blocking
// for the tile engine declared in gemm_tile.h. The build is portable (no -march flags): only the
// functions marked with a target attribute use wider instructions, and they are called only
// after __builtin_cpu_supports says the CPU has them.
#include "gemm_tile.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <limits>
#include <new>
#include <stdexcept>

namespace dc {

// ------------------------------------------------------------------ instruction-set choice
bool isa_supported(Isa isa) {
  __builtin_cpu_init();
  switch (isa) {
    case Isa::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
    case Isa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::scalar:
      return true;
  }
  return false;
}

static Isa best_isa() {
  if (isa_supported(Isa::avx512)) return Isa::avx512;
  if (isa_supported(Isa::avx2)) return Isa::avx2;
  return Isa::scalar;
}

static std::atomic<int> g_isa{-1};

Isa active_isa() {
  int v = g_isa.load(std::memory_order_relaxed);
  if (v < 0) {
    v = static_cast<int>(best_isa());
    g_isa.store(v, std::memory_order_relaxed);
  }
  return static_cast<Isa>(v);
}

void set_isa(Isa isa) {
  if (!isa_supported(isa)) {
    throw std::invalid_argument(std::string("this CPU does not support ") + isa_name(isa));
  }
  g_isa.store(static_cast<int>(isa), std::memory_order_relaxed);
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    case Isa::scalar: return "scalar";
  }
  return "?";
}

Isa isa_from_name(const std::string& name) {
  if (name == "avx512") return Isa::avx512;
  if (name == "avx2") return Isa::avx2;
  if (name == "scalar") return Isa::scalar;
  if (name == "auto") return best_isa();
  throw std::invalid_argument("unknown instruction set '" + name +
                              "' (choose avx512, avx2, scalar or auto)");
}

// ------------------------------------------------------------------ AVX-512: 8 rows x 48 columns
// 24 zmm accumulators + 3 B vectors + 1 broadcast A value. On Zen 4 (2 x 256-bit FMA pipes)
// this runs at ~92 % of the FMA peak in the inner loop, with 11 loads per 24 FMAs. Measured
// alternatives that were no better: 6 x 64, 12 x 32 (worse: more broadcasts), FMAs with
// embedded broadcasts, software prefetch of the B panel (it streams from L2 in order).
#define DC_AVX512 __attribute__((target("avx512f,fma")))

namespace {

constexpr int kMr512 = 8, kNr512 = 48, kV512 = kNr512 / 16;

struct Acc512 {
  __m512 v[kMr512][kV512];
};

DC_AVX512 __attribute__((always_inline)) inline void accumulate_512(const float* __restrict a,
                                                                    const float* __restrict b,
                                                                    int64_t d, Acc512& acc) {
#pragma GCC unroll 8
  for (int r = 0; r < kMr512; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < kV512; ++v) acc.v[r][v] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < d; ++k) {
    const float* bk = b + k * kNr512;
    __m512 bv[kV512];
#pragma GCC unroll 4
    for (int v = 0; v < kV512; ++v) bv[v] = _mm512_load_ps(bk + 16 * v);
    const float* ak = a + k * kMr512;
#pragma GCC unroll 8
    for (int r = 0; r < kMr512; ++r) {
      const __m512 ar = _mm512_set1_ps(ak[r]);
#pragma GCC unroll 4
      for (int v = 0; v < kV512; ++v) acc.v[r][v] = _mm512_fmadd_ps(ar, bv[v], acc.v[r][v]);
    }
  }
}

DC_AVX512 void argmin_512(const float* a, const float* b, int64_t d, const float* cnorm,
                          int32_t col0, float* best, int32_t* index) {
  Acc512 acc;
  accumulate_512(a, b, d, acc);
  const __m512 minus2 = _mm512_set1_ps(-2.0f);
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512i col[kV512];
  __m512 cn[kV512];
  for (int v = 0; v < kV512; ++v) {
    col[v] = _mm512_add_epi32(iota, _mm512_set1_epi32(col0 + 16 * v));
    cn[v] = _mm512_loadu_ps(cnorm + 16 * v);
  }
#pragma GCC unroll 8
  for (int r = 0; r < kMr512; ++r) {
    float* second = best + kMr512 * 16;
    int32_t* second_index = index + kMr512 * 16;
    __m512 v1 = _mm512_loadu_ps(best + 16 * r);
    __m512i i1 = _mm512_loadu_si512(index + 16 * r);
    __m512 v2 = _mm512_loadu_ps(second + 16 * r);
    __m512i i2 = _mm512_loadu_si512(second_index + 16 * r);
    for (int v = 0; v < kV512; ++v) {  // columns in increasing order: strict < keeps the first
      const __m512 val = _mm512_fmadd_ps(acc.v[r][v], minus2, cn[v]);
      const __mmask16 lt1 = _mm512_cmp_ps_mask(val, v1, _CMP_LT_OQ);
      const __mmask16 lt2 = _mm512_cmp_ps_mask(val, v2, _CMP_LT_OQ);
      // Runner-up: the old best where val beats it, else val where val beats the runner-up.
      v2 = _mm512_mask_mov_ps(_mm512_mask_mov_ps(v2, lt2, val), lt1, v1);
      i2 = _mm512_mask_mov_epi32(_mm512_mask_mov_epi32(i2, lt2, col[v]), lt1, i1);
      v1 = _mm512_mask_mov_ps(v1, lt1, val);
      i1 = _mm512_mask_mov_epi32(i1, lt1, col[v]);
    }
    _mm512_storeu_ps(best + 16 * r, v1);
    _mm512_storeu_si512(index + 16 * r, i1);
    _mm512_storeu_ps(second + 16 * r, v2);
    _mm512_storeu_si512(second_index + 16 * r, i2);
  }
}

DC_AVX512 void store_512(const float* a, const float* b, int64_t d, float* out, int64_t ldo,
                         int rows, int cols) {
  Acc512 acc;
  accumulate_512(a, b, d, acc);
  __mmask16 mask[kV512];
  for (int v = 0; v < kV512; ++v) {
    const int n = std::clamp(cols - 16 * v, 0, 16);
    mask[v] = static_cast<__mmask16>((1u << n) - 1u);
  }
  for (int r = 0; r < rows; ++r) {
    for (int v = 0; v < kV512; ++v) {
      _mm512_mask_storeu_ps(out + r * ldo + 16 * v, mask[v], acc.v[r][v]);
    }
  }
}

DC_AVX512 float squared_distance_512(const float* a, const float* b, int64_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= n; k += 32) {
    __m512 u = _mm512_loadu_ps(a + k), w = _mm512_loadu_ps(a + k + 16);
    if (b != nullptr) {
      u = _mm512_sub_ps(u, _mm512_loadu_ps(b + k));
      w = _mm512_sub_ps(w, _mm512_loadu_ps(b + k + 16));
    }
    acc0 = _mm512_fmadd_ps(u, u, acc0);
    acc1 = _mm512_fmadd_ps(w, w, acc1);
  }
  for (; k < n; k += 16) {
    const __mmask16 m = static_cast<__mmask16>(n - k >= 16 ? 0xFFFF : (1u << (n - k)) - 1u);
    __m512 u = _mm512_maskz_loadu_ps(m, a + k);
    if (b != nullptr) u = _mm512_sub_ps(u, _mm512_maskz_loadu_ps(m, b + k));
    acc0 = _mm512_fmadd_ps(u, u, acc0);
  }
  // Horizontal sum through memory (GCC 12's _mm512_reduce_add_ps warns spuriously).
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, _mm512_add_ps(acc0, acc1));
  float total = 0.0f;
  for (float v : lanes) total += v;
  return total;
}

// ------------------------------------------------------------------ AVX2 + FMA: 6 rows x 16
// 12 ymm accumulators + 2 B vectors + 1 broadcast fit the 16 ymm registers.
#define DC_AVX2 __attribute__((target("avx2,fma")))

constexpr int kMr256 = 6, kNr256 = 16;

struct Acc256 {
  __m256 v[kMr256][2];
};

DC_AVX2 __attribute__((always_inline)) inline void accumulate_256(const float* __restrict a,
                                                                  const float* __restrict b,
                                                                  int64_t d, Acc256& acc) {
#pragma GCC unroll 6
  for (int r = 0; r < kMr256; ++r) {
    acc.v[r][0] = _mm256_setzero_ps();
    acc.v[r][1] = _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < d; ++k) {
    const float* bk = b + k * kNr256;
    const __m256 b0 = _mm256_load_ps(bk);
    const __m256 b1 = _mm256_load_ps(bk + 8);
    const float* ak = a + k * kMr256;
#pragma GCC unroll 6
    for (int r = 0; r < kMr256; ++r) {
      const __m256 ar = _mm256_broadcast_ss(ak + r);
      acc.v[r][0] = _mm256_fmadd_ps(ar, b0, acc.v[r][0]);
      acc.v[r][1] = _mm256_fmadd_ps(ar, b1, acc.v[r][1]);
    }
  }
}

DC_AVX2 void argmin_256(const float* a, const float* b, int64_t d, const float* cnorm,
                        int32_t col0, float* best, int32_t* index) {
  Acc256 acc;
  accumulate_256(a, b, d, acc);
  const __m256 minus2 = _mm256_set1_ps(-2.0f);
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256i col[2];
  __m256 cn[2];
  for (int v = 0; v < 2; ++v) {
    col[v] = _mm256_add_epi32(iota, _mm256_set1_epi32(col0 + 8 * v));
    cn[v] = _mm256_loadu_ps(cnorm + 8 * v);
  }
#pragma GCC unroll 6
  for (int r = 0; r < kMr256; ++r) {
    float* second = best + kMr256 * 8;
    int32_t* second_index = index + kMr256 * 8;
    __m256 v1 = _mm256_loadu_ps(best + 8 * r);
    __m256 i1 = _mm256_castsi256_ps(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(index + 8 * r)));
    __m256 v2 = _mm256_loadu_ps(second + 8 * r);
    __m256 i2 = _mm256_castsi256_ps(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(second_index + 8 * r)));
    for (int v = 0; v < 2; ++v) {
      const __m256 val = _mm256_fmadd_ps(acc.v[r][v], minus2, cn[v]);
      const __m256 colf = _mm256_castsi256_ps(col[v]);
      const __m256 lt1 = _mm256_cmp_ps(val, v1, _CMP_LT_OQ);
      const __m256 lt2 = _mm256_cmp_ps(val, v2, _CMP_LT_OQ);
      v2 = _mm256_blendv_ps(_mm256_blendv_ps(v2, val, lt2), v1, lt1);
      i2 = _mm256_blendv_ps(_mm256_blendv_ps(i2, colf, lt2), i1, lt1);
      v1 = _mm256_blendv_ps(v1, val, lt1);
      i1 = _mm256_blendv_ps(i1, colf, lt1);
    }
    _mm256_storeu_ps(best + 8 * r, v1);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(index + 8 * r), _mm256_castps_si256(i1));
    _mm256_storeu_ps(second + 8 * r, v2);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(second_index + 8 * r),
                        _mm256_castps_si256(i2));
  }
}

DC_AVX2 void store_256(const float* a, const float* b, int64_t d, float* out, int64_t ldo,
                       int rows, int cols) {
  Acc256 acc;
  accumulate_256(a, b, d, acc);
  alignas(32) float row[kNr256];
  for (int r = 0; r < rows; ++r) {
    _mm256_store_ps(row, acc.v[r][0]);
    _mm256_store_ps(row + 8, acc.v[r][1]);
    std::copy(row, row + cols, out + r * ldo);
  }
}

DC_AVX2 float squared_distance_256(const float* a, const float* b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    __m256 u = _mm256_loadu_ps(a + k), w = _mm256_loadu_ps(a + k + 8);
    if (b != nullptr) {
      u = _mm256_sub_ps(u, _mm256_loadu_ps(b + k));
      w = _mm256_sub_ps(w, _mm256_loadu_ps(b + k + 8));
    }
    acc0 = _mm256_fmadd_ps(u, u, acc0);
    acc1 = _mm256_fmadd_ps(w, w, acc1);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_add_ps(acc0, acc1));
  float total = 0.0f;
  for (float v : lanes) total += v;
  for (; k < n; ++k) {
    const float u = b != nullptr ? a[k] - b[k] : a[k];
    total += u * u;
  }
  return total;
}

// ------------------------------------------------------------------ portable: 4 rows x 8
constexpr int kMrScalar = 4, kNrScalar = 8;

void accumulate_scalar(const float* a, const float* b, int64_t d,
                       float acc[kMrScalar][kNrScalar]) {
  for (int r = 0; r < kMrScalar; ++r) {
    for (int j = 0; j < kNrScalar; ++j) acc[r][j] = 0.0f;
  }
  for (int64_t k = 0; k < d; ++k) {
    for (int r = 0; r < kMrScalar; ++r) {
      const float ar = a[k * kMrScalar + r];
      for (int j = 0; j < kNrScalar; ++j) acc[r][j] += ar * b[k * kNrScalar + j];
    }
  }
}

void argmin_scalar(const float* a, const float* b, int64_t d, const float* cnorm, int32_t col0,
                   float* best, int32_t* index) {
  float acc[kMrScalar][kNrScalar];
  accumulate_scalar(a, b, d, acc);
  float* second = best + kMrScalar * kNrScalar;
  int32_t* second_index = index + kMrScalar * kNrScalar;
  for (int r = 0; r < kMrScalar; ++r) {
    for (int j = 0; j < kNrScalar; ++j) {
      const float val = cnorm[j] - 2.0f * acc[r][j];
      const int s = r * kNrScalar + j;
      if (val < best[s]) {
        second[s] = best[s];
        second_index[s] = index[s];
        best[s] = val;
        index[s] = col0 + j;
      } else if (val < second[s]) {
        second[s] = val;
        second_index[s] = col0 + j;
      }
    }
  }
}

void store_scalar(const float* a, const float* b, int64_t d, float* out, int64_t ldo, int rows,
                  int cols) {
  float acc[kMrScalar][kNrScalar];
  accumulate_scalar(a, b, d, acc);
  for (int r = 0; r < rows; ++r) {
    for (int j = 0; j < cols; ++j) out[r * ldo + j] = acc[r][j];
  }
}

// Sixteen independent partial sums let the compiler vectorise without reassociating one sum.
float squared_distance_scalar(const float* a, const float* b, int64_t n) {
  float part[16] = {};
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    for (int l = 0; l < 16; ++l) {
      const float v = b != nullptr ? a[k + l] - b[k + l] : a[k + l];
      part[l] += v * v;
    }
  }
  for (int l = 0; k < n; ++k, ++l) {
    const float v = b != nullptr ? a[k] - b[k] : a[k];
    part[l] += v * v;
  }
  float total = 0.0f;
  for (float v : part) total += v;
  return total;
}

const Microkernel kAvx512{kMr512, kNr512, 16, argmin_512, store_512, squared_distance_512};
const Microkernel kAvx2{kMr256, kNr256, 8, argmin_256, store_256, squared_distance_256};
const Microkernel kScalar{kMrScalar, kNrScalar, kNrScalar, argmin_scalar, store_scalar,
                          squared_distance_scalar};

}  // namespace

const Microkernel& microkernel(Isa isa) {
  switch (isa) {
    case Isa::avx512: return kAvx512;
    case Isa::avx2: return kAvx2;
    case Isa::scalar: break;
  }
  return kScalar;
}

// ------------------------------------------------------------------ buffers, packing, blocking
void AlignedFree::operator()(void* p) const { std::free(p); }

FloatBuffer alloc_floats(size_t count) {
  const size_t bytes = ((std::max<size_t>(count, 1) * sizeof(float) + 63) / 64) * 64;
  void* p = std::aligned_alloc(64, bytes);
  if (p == nullptr) throw std::bad_alloc();
  return FloatBuffer(static_cast<float*>(p));
}

void pack_b(const float* src, int64_t ncols, int64_t d, int64_t stride_col, int64_t stride_depth,
            int nr, float* dst) {
  const int64_t npanels = (ncols + nr - 1) / nr;
  for (int64_t p = 0; p < npanels; ++p) {
    float* panel = dst + p * d * nr;
    const int64_t cols = std::min<int64_t>(nr, ncols - p * nr);
    for (int64_t j = 0; j < nr; ++j) {
      if (j < cols) {
        const float* s = src + (p * nr + j) * stride_col;
        for (int64_t k = 0; k < d; ++k) panel[k * nr + j] = s[k * stride_depth];
      } else {
        for (int64_t k = 0; k < d; ++k) panel[k * nr + j] = 0.0f;
      }
    }
  }
}

void pack_a(const float* src, int64_t nrows, int64_t d, int64_t ld, const float* shift, int mr,
            float* dst, const int64_t* index) {
  const int64_t ntiles = (nrows + mr - 1) / mr;
  for (int64_t t = 0; t < ntiles; ++t) {
    float* panel = dst + t * d * mr;
    for (int r = 0; r < mr; ++r) {
      const int64_t row = t * mr + r;
      if (row >= nrows) {
        for (int64_t k = 0; k < d; ++k) panel[k * mr + r] = 0.0f;
        continue;
      }
      const float* s = src + (index != nullptr ? index[row] : row) * ld;
      if (shift != nullptr) {
        for (int64_t k = 0; k < d; ++k) panel[k * mr + r] = s[k] - shift[k];
      } else {
        for (int64_t k = 0; k < d; ++k) panel[k * mr + r] = s[k];
      }
    }
  }
}

Blocking choose_blocking(const Microkernel& mk, int64_t d, int64_t npanels, int64_t rows_total,
                         int nthreads) {
  // Budgets per core: a group of B panels that stays in L2 (Zen 4 has 1 MiB, Intel 1-2 MiB),
  // and a packed row block small enough to sit beside it.
  constexpr int64_t kPanelBytes = 384 * 1024;
  constexpr int64_t kRowBlockBytes = 96 * 1024;
  const int64_t panel_bytes = d * mk.nr * static_cast<int64_t>(sizeof(float));
  Blocking blk;
  blk.panels_per_block = std::clamp<int64_t>(kPanelBytes / panel_bytes, 1, npanels);
  const int64_t row_bytes = d * static_cast<int64_t>(sizeof(float));
  int64_t rows = std::max<int64_t>(kRowBlockBytes / row_bytes, mk.mr);
  // Enough blocks for dynamic scheduling to balance the threads at the end of the sweep.
  const int64_t fair = (rows_total + 4 * nthreads - 1) / (4 * static_cast<int64_t>(nthreads));
  rows = std::max<int64_t>(std::min(rows, fair), mk.mr);
  blk.rows_per_block = ((rows + mk.mr - 1) / mk.mr) * mk.mr;
  return blk;
}

}  // namespace dc
