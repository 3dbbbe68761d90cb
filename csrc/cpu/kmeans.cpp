// k-means steps of the CPU backend: fused assignment (tile engine + argmin epilogue), centroid
// cluster sums (per-thread partial sums, then a reduction over clusters) and the empty-cluster
// split.
#include "kmeans.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "assign_core.h"
#include "contract.h"
#include "gemm_tile.h"

namespace dc {

void pack_centroids(const Microkernel& mk, const float* c, int64_t d, const int32_t* subset,
                    int64_t count, float* panels, float* cnorm) {
  const int64_t npanels = (count + mk.nr - 1) / mk.nr;
  for (int64_t p = 0; p < npanels; ++p) {
    float* panel = panels + p * d * mk.nr;
    for (int64_t j = 0; j < mk.nr; ++j) {
      const int64_t col = p * mk.nr + j;
      if (col >= count) {
        for (int64_t t = 0; t < d; ++t) panel[t * mk.nr + j] = 0.0f;
        cnorm[col] = std::numeric_limits<float>::infinity();
        continue;
      }
      const float* src = c + (subset != nullptr ? int64_t{subset[col]} : col) * d;
      for (int64_t t = 0; t < d; ++t) panel[t * mk.nr + j] = src[t];
      cnorm[col] = mk.squared_distance(src, nullptr, d);
    }
  }
}

float near_tie_tolerance(int64_t d) {
  // sqrt(d) ulps is the typical rounding error of a d-term sum; the factor leaves a wide margin.
  return 1e-6f * std::sqrt(static_cast<float>(d));
}

SweepScratch::SweepScratch(const Microkernel& mk, int64_t rows_per_block, int64_t d,
                           int nthreads)
    : a_stride_(rows_per_block * d),
      // Per row and lane: best and runner-up values and columns (see Microkernel::argmin).
      state_((rows_per_block / mk.mr) * 2 * mk.mr * mk.lanes),
      a_(alloc_floats(static_cast<size_t>(nthreads * a_stride_))),
      best_(alloc_floats(static_cast<size_t>(nthreads * state_))),
      index_(new int32_t[static_cast<size_t>(nthreads * state_)]) {}

LaneMerge merge_lanes(const Microkernel& mk, const float* v1, const int32_t* i1) {
  // Columns are interleaved across lanes: the smallest value wins, equal values go to the
  // lowest column, which is the reference's tie rule. Branch-light passes: at small K this
  // merge costs as much as the dot products of the row.
  const float* v2 = v1 + mk.mr * mk.lanes;
  LaneMerge m{v1[0], std::numeric_limits<int32_t>::max(), 0,
              std::numeric_limits<float>::infinity()};
  for (int l = 1; l < mk.lanes; ++l) m.best = v1[l] < m.best ? v1[l] : m.best;
  for (int l = 0; l < mk.lanes; ++l) {
    if (v1[l] == m.best && i1[l] >= 0 && i1[l] < m.col) m.col = i1[l], m.lane = l;
  }
  if (m.col == std::numeric_limits<int32_t>::max()) m.col = 0;  // every value overflowed
  for (int l = 0; l < mk.lanes; ++l) {
    const float other = l == m.lane ? v2[l] : std::min(v1[l], v2[l]);
    m.runner_up = other < m.runner_up ? other : m.runner_up;
  }
  return m;
}

Nearest settle_row(const Microkernel& mk, const float* xr, const float* c, const float* cnorm,
                   int64_t d, float near_tie, const float* v1, const int32_t* i1) {
  const LaneMerge m = merge_lanes(mk, v1, i1);
  Nearest out{m.col, mk.squared_distance(xr, c + int64_t{m.col} * d, d), m.runner_up};
  // Only when the runner-up is within rounding of the best are its column found and the exact
  // distances compared.
  if (!(m.runner_up - m.best <= near_tie * (2.0f * cnorm[m.col] + std::fabs(m.best)))) return out;
  const float* v2 = v1 + mk.mr * mk.lanes;
  const int32_t* i2 = i1 + mk.mr * mk.lanes;
  int32_t j2 = std::numeric_limits<int32_t>::max();
  for (int l = 0; l < mk.lanes; ++l) {
    if (l != m.lane && v1[l] == m.runner_up && i1[l] >= 0) j2 = std::min(j2, i1[l]);
    if (v2[l] == m.runner_up && i2[l] >= 0) j2 = std::min(j2, i2[l]);
  }
  if (j2 == std::numeric_limits<int32_t>::max()) return out;
  const float other = mk.squared_distance(xr, c + int64_t{j2} * d, d);
  if (other < out.dist || (other == out.dist && j2 < m.col)) {
    // The winner changed: the best value now belongs to another column.
    out = Nearest{j2, other, m.best};
  }
  return out;
}

void assign(const float* x, const float* centroids, float* dist, int64_t* labels, int64_t batch,
            int64_t n, int64_t k, int64_t d, int nthreads) {
  const Microkernel& mk = microkernel(active_isa());
  const int64_t npanels = (k + mk.nr - 1) / mk.nr;
  const int64_t kpad = npanels * mk.nr;
  nthreads = threads_for(static_cast<double>(batch) * n * kpad * d, kSerialTileWork, nthreads);
  const int64_t panel_floats = d * mk.nr;

  // Centroids are packed once per call (all problems). Packing is O(K d), negligible beside
  // the O(N K d) sweep: doing it before the parallel region spares a barrier, which on a
  // loaded machine can cost a scheduler tick.
  FloatBuffer packed = alloc_floats(static_cast<size_t>(batch * npanels * panel_floats));
  FloatBuffer cnorm = alloc_floats(static_cast<size_t>(batch * kpad));
  for (int64_t b = 0; b < batch; ++b) {
    pack_centroids(mk, centroids + b * k * d, d, nullptr, k,
                   packed.get() + b * npanels * panel_floats, cnorm.get() + b * kpad);
  }

  const Blocking blk = choose_blocking(mk, d, npanels, n, nthreads);
  const int64_t rows = blk.rows_per_block;
  const int64_t blocks = (n + rows - 1) / rows;
  const float near_tie = near_tie_tolerance(d);
  const SweepScratch scratch(mk, rows, d, nthreads);

#pragma omp parallel num_threads(nthreads)
  {
    const int tid = omp_get_thread_num();
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t task = 0; task < batch * blocks; ++task) {
      const int64_t b = task / blocks;
      const int64_t row0 = (task % blocks) * rows;
      const float* xb = x + (b * n + row0) * d;
      const float* cb = centroids + b * k * d;
      const float* nb = cnorm.get() + b * kpad;
      sweep_block(mk, xb, nullptr, std::min(rows, n - row0), d,
                  packed.get() + b * npanels * panel_floats, nb, npanels,
                  blk.panels_per_block, scratch.a_of(tid), scratch.best_of(tid),
                  scratch.index_of(tid), [&](int64_t r, const float* v1, const int32_t* i1) {
                    const Nearest near = settle_row(mk, xb + r * d, cb, nb, d, near_tie, v1, i1);
                    labels[b * n + row0 + r] = near.label;
                    dist[b * n + row0 + r] = near.dist;
                  });
    }
  }
}

// Add rows [i0, i1) of one problem into sums (k x d) and cnt (k). A label outside [0, k) (only
// a caller bypassing assign can make one) is skipped rather than written out of bounds.
static void accumulate_rows(const float* x, const int64_t* labels, int64_t i0, int64_t i1,
                            int64_t k, int64_t d, float* sums, int64_t* cnt) {
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t j = labels[i];
    if (j < 0 || j >= k) continue;
    float* s = sums + j * d;
    const float* xi = x + i * d;
    for (int64_t t = 0; t < d; ++t) s[t] += xi[t];
    ++cnt[j];
  }
}

void cluster_sums(const float* x, const int64_t* labels, float* sums, int64_t* counts,
                  int64_t batch, int64_t n, int64_t k, int64_t d, int nthreads) {
  // Memory-bound (one add per element of x): serial below ~4M elements, about 1 ms.
  constexpr double kSerialUpdateWork = 4194304.0;  // 2^22
  nthreads = threads_for(static_cast<double>(batch) * n * d, kSerialUpdateWork, nthreads);
  if (batch >= nthreads) {
    // Enough problems to go round: each thread owns whole problems, no barrier inside.
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1)
    for (int64_t b = 0; b < batch; ++b) {
      accumulate_rows(x + b * n * d, labels + b * n, 0, n, k, d, sums + b * k * d,
                      counts + b * k);
    }
    return;
  }
  FloatBuffer partial = alloc_floats(static_cast<size_t>(nthreads * k * d));
  std::vector<int64_t> partial_counts(static_cast<size_t>(nthreads * k));
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t* lb = labels + b * n;
#pragma omp parallel num_threads(nthreads)
    {
      const int tid = omp_get_thread_num();
      const int used = omp_get_num_threads();
      float* part = partial.get() + tid * k * d;
      int64_t* cnt = partial_counts.data() + tid * k;
      std::fill(part, part + k * d, 0.0f);
      std::fill(cnt, cnt + k, 0);
      // Static row ranges: each thread sums its own rows, so the result does not depend on
      // scheduling, only on the thread count.
      const int64_t i0 = n * tid / used, i1 = n * (tid + 1) / used;
      accumulate_rows(x + b * n * d, lb, i0, i1, k, d, part, cnt);
#pragma omp barrier
      // Reduce the partial sums over threads, in thread order, one cluster range per thread,
      // and add the totals to the caller's sums.
      const int64_t j0 = k * tid / used, j1 = k * (tid + 1) / used;
      for (int64_t j = j0; j < j1; ++j) {
        int64_t total = 0;
        for (int th = 0; th < used; ++th) total += partial_counts[th * k + j];
        counts[b * k + j] += total;
        if (total == 0) continue;
        float* first = partial.get() + j * d;
        for (int th = 1; th < used; ++th) {
          const float* other = partial.get() + (th * k + j) * d;
          for (int64_t t = 0; t < d; ++t) first[t] += other[t];
        }
        float* out = sums + (b * k + j) * d;
        for (int64_t t = 0; t < d; ++t) out[t] += first[t];
      }
    }
  }
}

void split(float* centroids, int64_t* counts, int64_t* nsplit, int64_t batch, int64_t k,
           int64_t d, uint64_t seed, uint64_t iteration) {
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
