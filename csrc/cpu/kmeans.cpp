// k-means steps of the CPU backend: fused assignment (tile engine + argmin epilogue), centroid
// update (per-thread partial sums, then a reduction over clusters) and the empty-cluster split.
#include "kmeans.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "gemm_tile.h"

namespace dc {

void assign(const float* x, const float* centroids, int64_t batch, int64_t n, int64_t k,
            int64_t d, float* dist, int64_t* labels, int nthreads) {
  const Microkernel& mk = microkernel(active_isa());
  const int64_t npanels = (k + mk.nr - 1) / mk.nr;
  const int64_t kpad = npanels * mk.nr;
  nthreads = threads_for(static_cast<double>(batch) * n * kpad * d, kSerialTileWork, nthreads);
  const int64_t panel_floats = d * mk.nr;

  // Centroids are packed once per call (all problems), with their squared norms; padding
  // columns get +inf so that they never win the argmin.
  FloatBuffer packed = alloc_floats(static_cast<size_t>(batch * npanels * panel_floats));
  FloatBuffer cnorm = alloc_floats(static_cast<size_t>(batch * kpad));

  const Blocking blk = choose_blocking(mk, d, npanels, n, nthreads);
  const int64_t rows = blk.rows_per_block;
  const int64_t blocks = (n + rows - 1) / rows;
  // Per row and lane: best and runner-up values and columns (see Microkernel::argmin).
  const int64_t tile_state = 2 * mk.mr * mk.lanes;
  const int64_t state = (rows / mk.mr) * tile_state;
  // Two candidates closer than this (relative to the magnitudes that entered the fp32 dot
  // products) may be in the wrong order; their exact distances decide. sqrt(d) ulps is the
  // typical rounding error of a d-term sum; the factor leaves a wide margin.
  const float near_tie = 1e-6f * std::sqrt(static_cast<float>(d));
  // Per-thread scratch, allocated before the parallel region so that a failed allocation
  // throws here rather than inside OpenMP.
  FloatBuffer apack = alloc_floats(static_cast<size_t>(nthreads * rows * d));
  FloatBuffer best = alloc_floats(static_cast<size_t>(nthreads * state));
  std::vector<int32_t> index(static_cast<size_t>(nthreads * state));

  // Packing is O(K d), negligible beside the O(N K d) sweep: doing it before the parallel
  // region spares a barrier, which on a loaded machine can cost a scheduler tick.
  for (int64_t task = 0; task < batch * npanels; ++task) {
    const int64_t b = task / npanels, p = task % npanels;
    const float* cb = centroids + b * k * d;
    const int64_t cols = std::min<int64_t>(mk.nr, k - p * mk.nr);
    pack_b(cb + p * mk.nr * d, cols, d, d, 1, mk.nr, packed.get() + task * panel_floats);
    for (int64_t j = p * mk.nr; j < (p + 1) * mk.nr; ++j) {
      cnorm[b * kpad + j] = j < k ? mk.squared_distance(cb + j * d, nullptr, d)
                                  : std::numeric_limits<float>::infinity();
    }
  }

#pragma omp parallel num_threads(nthreads)
  {
    const int tid = omp_get_thread_num();
    float* a = apack.get() + tid * rows * d;
    float* bv = best.get() + tid * state;
    int32_t* bi = index.data() + tid * state;
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t task = 0; task < batch * blocks; ++task) {
      const int64_t b = task / blocks;
      const int64_t row0 = (task % blocks) * rows;
      const int64_t nrows = std::min(rows, n - row0);
      const float* xb = x + (b * n + row0) * d;
      const float* cb = centroids + b * k * d;
      const float* pb = packed.get() + b * npanels * panel_floats;
      const float* nb = cnorm.get() + b * kpad;
      const int64_t ntiles = (nrows + mk.mr - 1) / mk.mr;
      pack_a(xb, nrows, d, d, nullptr, mk.mr, a);
      std::fill(bv, bv + ntiles * tile_state, std::numeric_limits<float>::infinity());
      std::fill(bi, bi + ntiles * tile_state, -1);  // -1: no column seen yet
      sweep_tiles(ntiles, npanels, blk.panels_per_block, [&](int64_t t, int64_t p) {
        mk.argmin(a + t * mk.mr * d, pb + p * panel_floats, d, nb + p * mk.nr,
                  static_cast<int32_t>(p * mk.nr), bv + t * tile_state, bi + t * tile_state);
      });
      for (int64_t r = 0; r < nrows; ++r) {
        // Merge the lanes (columns interleaved across lanes): the smallest value wins, equal
        // values go to the lowest column, which is the reference's tie rule. Branch-light
        // passes: at small K this merge costs as much as the dot products of the row.
        const int64_t base = (r / mk.mr) * tile_state + (r % mk.mr) * mk.lanes;
        const float* v1 = bv + base;
        const float* v2 = v1 + mk.mr * mk.lanes;
        const int32_t* i1 = bi + base;
        const int32_t* i2 = i1 + mk.mr * mk.lanes;
        float best_value = v1[0];
        for (int l = 1; l < mk.lanes; ++l) best_value = v1[l] < best_value ? v1[l] : best_value;
        int32_t j1 = std::numeric_limits<int32_t>::max();
        int lane1 = 0;
        for (int l = 0; l < mk.lanes; ++l) {
          if (v1[l] == best_value && i1[l] >= 0 && i1[l] < j1) j1 = i1[l], lane1 = l;
        }
        if (j1 == std::numeric_limits<int32_t>::max()) j1 = 0;  // every value overflowed
        const float* xr = xb + r * d;
        int64_t label = j1;
        float best_dist = mk.squared_distance(xr, cb + label * d, d);
        // Runner-up value; only when it is within rounding of the best are its column found
        // and the exact distances compared.
        float runner_up = std::numeric_limits<float>::infinity();
        for (int l = 0; l < mk.lanes; ++l) {
          const float other = l == lane1 ? v2[l] : std::min(v1[l], v2[l]);
          runner_up = other < runner_up ? other : runner_up;
        }
        if (runner_up - best_value <= near_tie * (2.0f * nb[j1] + std::fabs(best_value))) {
          int32_t j2 = std::numeric_limits<int32_t>::max();
          for (int l = 0; l < mk.lanes; ++l) {
            if (l != lane1 && v1[l] == runner_up && i1[l] >= 0) j2 = std::min(j2, i1[l]);
            if (v2[l] == runner_up && i2[l] >= 0) j2 = std::min(j2, i2[l]);
          }
          if (j2 != std::numeric_limits<int32_t>::max()) {
            const float other = mk.squared_distance(xr, cb + int64_t{j2} * d, d);
            if (other < best_dist || (other == best_dist && j2 < j1)) {
              label = j2;
              best_dist = other;
            }
          }
        }
        labels[b * n + row0 + r] = label;
        dist[b * n + row0 + r] = best_dist;
      }
    }
  }
}

// Add rows [i0, i1) of one problem into sums (k x d) and cnt (k).
static void accumulate_rows(const float* x, const int64_t* labels, int64_t i0, int64_t i1,
                            int64_t d, float* sums, int64_t* cnt) {
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t j = labels[i];
    float* s = sums + j * d;
    const float* xi = x + i * d;
    for (int64_t t = 0; t < d; ++t) s[t] += xi[t];
    ++cnt[j];
  }
}

// centroid = sum / count for a non-empty cluster; an empty one keeps its previous centroid.
static void finish_cluster(const float* sum, int64_t count, int64_t d, float* centroid) {
  if (count == 0) return;
  const float denom = static_cast<float>(count);
  for (int64_t t = 0; t < d; ++t) centroid[t] = sum[t] / denom;
}

void update(const float* x, const int64_t* labels, float* centroids, int64_t* counts,
            int64_t batch, int64_t n, int64_t k, int64_t d, int nthreads) {
  // Memory-bound (one add per element of x): serial below ~4M elements, about 1 ms.
  constexpr double kSerialUpdateWork = 4194304.0;  // 2^22
  nthreads = threads_for(static_cast<double>(batch) * n * d, kSerialUpdateWork, nthreads);
  FloatBuffer partial = alloc_floats(static_cast<size_t>(nthreads * k * d));
  if (batch >= nthreads) {
    // Enough problems to go round: each thread owns whole problems, no barrier inside.
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1)
    for (int64_t b = 0; b < batch; ++b) {
      const int tid = omp_get_thread_num();
      float* sums = partial.get() + tid * k * d;
      int64_t* nb = counts + b * k;
      std::fill(sums, sums + k * d, 0.0f);
      std::fill(nb, nb + k, 0);
      accumulate_rows(x + b * n * d, labels + b * n, 0, n, d, sums, nb);
      for (int64_t j = 0; j < k; ++j) {
        finish_cluster(sums + j * d, nb[j], d, centroids + (b * k + j) * d);
      }
    }
    return;
  }
  std::vector<int64_t> partial_counts(static_cast<size_t>(nthreads * k));
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t* lb = labels + b * n;
    int64_t* nb = counts + b * k;
#pragma omp parallel num_threads(nthreads)
    {
      const int tid = omp_get_thread_num();
      const int used = omp_get_num_threads();
      float* sums = partial.get() + tid * k * d;
      int64_t* cnt = partial_counts.data() + tid * k;
      std::fill(sums, sums + k * d, 0.0f);
      std::fill(cnt, cnt + k, 0);
      // Static row ranges: each thread sums its own rows, so the result does not depend on
      // scheduling, only on the thread count.
      const int64_t i0 = n * tid / used, i1 = n * (tid + 1) / used;
      accumulate_rows(x + b * n * d, lb, i0, i1, d, sums, cnt);
#pragma omp barrier
      // Reduce the partial sums over threads, in thread order, one cluster range per thread.
      const int64_t j0 = k * tid / used, j1 = k * (tid + 1) / used;
      for (int64_t j = j0; j < j1; ++j) {
        int64_t total = 0;
        for (int th = 0; th < used; ++th) total += partial_counts[th * k + j];
        nb[j] = total;
        if (total == 0) continue;
        float* first = partial.get() + j * d;
        for (int th = 1; th < used; ++th) {
          const float* other = partial.get() + (th * k + j) * d;
          for (int64_t t = 0; t < d; ++t) first[t] += other[t];
        }
        finish_cluster(first, total, d, centroids + (b * k + j) * d);
      }
    }
  }
}

static uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t split_draw(uint64_t seed, uint64_t iteration, uint64_t cluster) {
  return mix64(mix64(mix64(seed) ^ iteration) ^ cluster);
}

// Relative perturbation of a split pair, as in faiss; equal to reference.SPLIT_EPS.
constexpr float kSplitEps = 1.0f / 1024.0f;

void split(float* centroids, int64_t* counts, int64_t batch, int64_t k, int64_t d,
           uint64_t seed, uint64_t iteration, int64_t* nsplit) {
  // Multipliers of the copy (grow) and of the donor (shrink): +eps on even coordinates, -eps
  // on odd ones, both exactly representable, so the products round like the reference's.
  std::vector<float> grow(static_cast<size_t>(d)), shrink(static_cast<size_t>(d));
  for (int64_t t = 0; t < d; ++t) {
    const float sign = (t % 2 == 0) ? 1.0f : -1.0f;
    grow[t] = 1.0f + kSplitEps * sign;
    shrink[t] = 1.0f - kSplitEps * sign;
  }
  // Serial: O(K + splits * d) per problem, microseconds, never worth a fork/join.
  for (int64_t b = 0; b < batch; ++b) {
    int64_t* cnt = counts + b * k;
    float* c = centroids + b * k * d;
    std::vector<int64_t> weight(static_cast<size_t>(k));
    int64_t total = 0;
    for (int64_t j = 0; j < k; ++j) {
      weight[j] = std::max<int64_t>(cnt[j] - 1, 0);
      total += weight[j];
    }
    int64_t done = 0;
    for (int64_t j = 0; j < k; ++j) {
      if (cnt[j] != 0) continue;
      if (total == 0) break;
      const uint64_t r = split_draw(seed, iteration, static_cast<uint64_t>(j)) %
                         static_cast<uint64_t>(total);
      // The first donor whose running weight exceeds r: probability proportional to size - 1.
      int64_t donor = 0;
      uint64_t running = static_cast<uint64_t>(weight[0]);
      while (running <= r) {
        ++donor;
        running += static_cast<uint64_t>(weight[donor]);
      }
      float* cd = c + donor * d;
      float* cj = c + j * d;
      for (int64_t t = 0; t < d; ++t) {
        const float base = cd[t];
        cj[t] = base * grow[t];
        cd[t] = base * shrink[t];
      }
      cnt[j] = cnt[donor] / 2;
      cnt[donor] -= cnt[j];
      total -= weight[donor];
      weight[donor] = std::max<int64_t>(cnt[donor] - 1, 0);
      weight[j] = std::max<int64_t>(cnt[j] - 1, 0);
      total += weight[donor] + weight[j];
      ++done;
    }
    nsplit[b] = done;
  }
}

}  // namespace dc
