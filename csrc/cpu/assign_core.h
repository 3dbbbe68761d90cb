// The assignment core shared by the plain assignment (kmeans.cpp) and the pruned one
// (prune.cpp): centroids packed for the tile engine, one block of rows swept against them, and
// the per-row merge of the argmin lanes with its near-tie rule. Both assignments go through
// this one path, so a row gets bit-identical values, labels and distances whichever of them
// computes it, and wherever it sits in a block.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>

#include "gemm_tile.h"

namespace dc {

// Pack ``count`` centroids (rows of c; with a subset, packed column j is row subset[j]) into
// ceil(count / nr) panels, with their squared norms in cnorm; padding columns get +inf norms so
// that they never win an argmin.
void pack_centroids(const Microkernel& mk, const float* c, int64_t d, const int32_t* subset,
                    int64_t count, float* panels, float* cnorm);

// Two candidates closer than this, relative to the magnitudes that entered the fp32 dot
// products, may be in the wrong order; their exact distances decide.
float near_tie_tolerance(int64_t d);

// The lanes of one row after a sweep, merged: the best value (lowest column among equals) with
// its column and lane, and the runner-up, the smallest value over every other column.
struct LaneMerge {
  float best;
  int32_t col;
  int lane;
  float runner_up;
};
// v1, i1: the row's lane state as sweep_block hands it over (runner-ups follow at mr * lanes).
LaneMerge merge_lanes(const Microkernel& mk, const float* v1, const int32_t* i1);

// The nearest centroid of one row (the reference's argmin; near-ties settled by exact
// distances), its exact fp32 squared distance, and ``second``: the smallest value of
// ||c||^2 - 2 x.c over every other column (the input of a lower bound).
struct Nearest {
  int64_t label;
  float dist;
  float second;
};
Nearest settle_row(const Microkernel& mk, const float* xr, const float* c, const float* cnorm,
                   int64_t d, float near_tie, const float* v1, const int32_t* i1);

// Per-thread scratch of sweep_block for blocks of up to ``rows`` rows.
// Allocated before a parallel region, so that a failed allocation throws outside OpenMP.
struct SweepScratch {
  SweepScratch(const Microkernel& mk, int64_t rows_per_block, int64_t d, int nthreads);
  float* a_of(int tid) const { return a_.get() + tid * a_stride_; }
  float* best_of(int tid) const { return best_.get() + tid * state_; }
  int32_t* index_of(int tid) const { return index_.get() + tid * state_; }

 private:
  int64_t a_stride_, state_;
  FloatBuffer a_, best_;
  std::unique_ptr<int32_t[]> index_;
};

// Sweep nrows rows of x (row i is x[(index ? index[i] : i) * d]) against npanels packed
// centroid panels, then call row(r, v1, i1) for each row with its lane state (see merge_lanes).
template <class Row>
void sweep_block(const Microkernel& mk, const float* x, const int64_t* index, int64_t nrows,
                 int64_t d, const float* panels, const float* cnorm, int64_t npanels,
                 int64_t panels_per_block, float* a, float* bv, int32_t* bi, Row&& row) {
  const int64_t tile_state = 2 * mk.mr * mk.lanes;
  const int64_t ntiles = (nrows + mk.mr - 1) / mk.mr;
  const int64_t panel_floats = d * mk.nr;
  pack_a(x, nrows, d, d, nullptr, mk.mr, a, index);
  std::fill(bv, bv + ntiles * tile_state, std::numeric_limits<float>::infinity());
  std::fill(bi, bi + ntiles * tile_state, -1);  // -1: no column seen yet
  sweep_tiles(ntiles, npanels, panels_per_block, [&](int64_t t, int64_t p) {
    mk.argmin(a + t * mk.mr * d, panels + p * panel_floats, d, cnorm + p * mk.nr,
              static_cast<int32_t>(p * mk.nr), bv + t * tile_state, bi + t * tile_state);
  });
  for (int64_t r = 0; r < nrows; ++r) {
    const int64_t base = (r / mk.mr) * tile_state + (r % mk.mr) * mk.lanes;
    row(r, bv + base, bi + base);
  }
}

}  // namespace dc
