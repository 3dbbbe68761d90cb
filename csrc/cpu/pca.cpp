// Fused PCA apply: the tile engine with the store epilogue. Centring is folded into the packing
// of x and the projection is packed once per call, so x is read once and y written once.
#include "pca.h"

#include <omp.h>

#include <algorithm>
#include <cmath>

#include "gemm_tile.h"

namespace dc {

void pca_apply(const float* x, const float* mean, const float* proj, float* out, int64_t n,
               int64_t d_in, int64_t d_out, bool normalize, int nthreads) {
  const Microkernel& mk = microkernel(active_isa());
  const int64_t npanels = (d_out + mk.nr - 1) / mk.nr;
  const int64_t panel_floats = d_in * mk.nr;
  nthreads = threads_for(static_cast<double>(n) * npanels * mk.nr * d_in, kSerialTileWork,
                         nthreads);
  // Column j of B is column j of proj: stride 1 between columns, d_out along the depth.
  FloatBuffer packed = alloc_floats(static_cast<size_t>(npanels * panel_floats));
  const Blocking blk = choose_blocking(mk, d_in, npanels, n, nthreads);
  const int64_t rows = blk.rows_per_block;
  const int64_t blocks = (n + rows - 1) / rows;
  FloatBuffer apack = alloc_floats(static_cast<size_t>(nthreads * rows * d_in));

  // Packing is O(d_in d_out), negligible beside the sweep; done serially it needs no barrier.
  for (int64_t p = 0; p < npanels; ++p) {
    const int64_t cols = std::min<int64_t>(mk.nr, d_out - p * mk.nr);
    pack_b(proj + p * mk.nr, cols, d_in, 1, d_out, mk.nr, packed.get() + p * panel_floats);
  }

#pragma omp parallel num_threads(nthreads)
  {
    float* a = apack.get() + omp_get_thread_num() * rows * d_in;
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t block = 0; block < blocks; ++block) {
      const int64_t row0 = block * rows;
      const int64_t nrows = std::min(rows, n - row0);
      const int64_t ntiles = (nrows + mk.mr - 1) / mk.mr;
      pack_a(x + row0 * d_in, nrows, d_in, d_in, mean, mk.mr, a);
      float* yb = out + row0 * d_out;
      sweep_tiles(ntiles, npanels, blk.panels_per_block, [&](int64_t t, int64_t p) {
        const int tile_rows = static_cast<int>(std::min<int64_t>(mk.mr, nrows - t * mk.mr));
        const int tile_cols = static_cast<int>(std::min<int64_t>(mk.nr, d_out - p * mk.nr));
        mk.store(a + t * mk.mr * d_in, packed.get() + p * panel_floats, d_in,
                 yb + t * mk.mr * d_out + p * mk.nr, d_out, tile_rows, tile_cols);
      });
      if (!normalize) continue;
      for (int64_t r = 0; r < nrows; ++r) {
        float* y = yb + r * d_out;
        const float norm = std::sqrt(mk.squared_distance(y, nullptr, d_out));
        const float denom = std::max(norm, 1e-12f);
        for (int64_t j = 0; j < d_out; ++j) y[j] /= denom;
      }
    }
  }
}

}  // namespace dc
