// The one GEMM tile engine of the CPU backend: C = A @ B^T in register-blocked tiles, where
// A holds points (rows of x, optionally shifted by a mean) and B holds columns (centroids, or
// the columns of a projection). Two epilogues consume a finished tile: running argmin of
// ||c||^2 - 2 a.c (k-means assignment) or store (PCA apply). Each instruction set provides one
// microkernel that accumulates an MR x NR tile over the full inner dimension d in fp32 and
// then runs either epilogue; everything else here (packing, blocking) is ISA-independent.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace dc {

enum class Isa { scalar = 0, avx2 = 1, avx512 = 2 };

bool isa_supported(Isa isa);
// The instruction set the kernels use now: the best one the CPU supports unless overridden.
Isa active_isa();
// Override the choice (tests exercise every path this CPU can run); throws if unsupported.
void set_isa(Isa isa);
Isa isa_from_name(const std::string& name);
const char* isa_name(Isa isa);

// A microkernel. Packed layouts (see pack_a / pack_b):
//   a: one micro-panel of MR rows, element (row r, depth k) at a[k * MR + r]
//   b: one micro-panel of NR columns, element (column j, depth k) at b[k * NR + j], 64-byte
//      aligned, zero beyond the real columns.
struct Microkernel {
  int mr;     // rows per tile
  int nr;     // columns per tile (one B micro-panel)
  int lanes;  // width of the running-argmin state per row (a divisor of nr)
  // Argmin epilogue: for every row r and column j of the tile, v = cnorm[j] - 2 * (a_r . b_j).
  // Lane l = j % lanes of row r keeps the two smallest values it has seen with their columns:
  // (best[r * lanes + l], index[...]) and the runner-up (best[(mr + r) * lanes + l], ...). A
  // value replaces a kept one only when strictly smaller, so ties keep the lowest column
  // (col0 + j) first. The runner-up lets the caller settle near-ties with exact distances.
  void (*argmin)(const float* a, const float* b, int64_t d, const float* cnorm, int32_t col0,
                 float* best, int32_t* index);
  // Store epilogue: out[r * ldo + j] = a_r . b_j for r < rows, j < cols.
  void (*store)(const float* a, const float* b, int64_t d, float* out, int64_t ldo, int rows,
                int cols);
  // Row epilogue: sum((a - b)^2) over n floats in fp32 (b == nullptr: sum(a^2)). Per-row work
  // after the sweep (exact distances, norms) is ~5 % of an assignment at d = 256, so it gets
  // the wide instructions too.
  float (*squared_distance)(const float* a, const float* b, int64_t n);
};

const Microkernel& microkernel(Isa isa);

// 64-byte aligned float buffer (aligned vector loads of packed panels, no false sharing).
struct AlignedFree {
  void operator()(void* p) const;
};
using FloatBuffer = std::unique_ptr<float[], AlignedFree>;
FloatBuffer alloc_floats(size_t count);

// Pack ncols columns of depth d into ceil(ncols / nr) micro-panels of nr columns each. Column j,
// depth k of the source is src[j * stride_col + k * stride_depth]; missing columns are zero.
void pack_b(const float* src, int64_t ncols, int64_t d, int64_t stride_col, int64_t stride_depth,
            int nr, float* dst);

// Pack rows [0, nrows) of a row-major source (leading dimension ld) into micro-panels of mr
// rows, subtracting shift (length d) when it is not null; missing rows are zero. With an index,
// packed row i is source row index[i] (the pruned assignment gathers its active rows here).
void pack_a(const float* src, int64_t nrows, int64_t d, int64_t ld, const float* shift, int mr,
            float* dst, const int64_t* index = nullptr);

// Threads worth using for a job of ``work`` elementary operations. Below ``serial_below`` the
// job runs on the calling thread: a fork/join costs microseconds on an idle machine but up to a
// scheduler tick (4 ms) on a loaded one, more than a small job takes on one core.
inline int threads_for(double work, double serial_below, int nthreads) {
  return work < serial_below ? 1 : nthreads;
}
// Multiply-adds below which the tile engine stays serial (about 1 ms on one AVX-512 core).
constexpr double kSerialTileWork = 67108864.0;  // 2^26

// Cache blocking for a problem with inner dimension d and npanels B micro-panels.
struct Blocking {
  int64_t rows_per_block;    // rows of A packed and processed together (a multiple of mr)
  int64_t panels_per_block;  // B micro-panels kept hot in L2 while a row block sweeps them
};
Blocking choose_blocking(const Microkernel& mk, int64_t d, int64_t npanels, int64_t rows_total,
                         int nthreads);

// The engine: sweep one packed row block (ntiles micro-panels of A) against npanels packed B
// panels, in L2-sized groups of panels, calling tile(tile_index, panel_index) in an order
// that keeps each A micro-panel in L1 across a group and each group of B panels in L2.
template <class Tile>
inline void sweep_tiles(int64_t ntiles, int64_t npanels, int64_t panels_per_block, Tile&& tile) {
  for (int64_t p0 = 0; p0 < npanels; p0 += panels_per_block) {
    const int64_t p1 = p0 + panels_per_block < npanels ? p0 + panels_per_block : npanels;
    for (int64_t t = 0; t < ntiles; ++t) {
      for (int64_t p = p0; p < p1; ++p) tile(t, p);
    }
  }
}

}  // namespace dc
