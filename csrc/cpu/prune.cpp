// Pruned assignment (prune.h). Per row: an upper bound on the distance to its centroid (the
// exact fp32 distance, recomputed every call: O(d), 1/K of the row's sweep) and a lower bound
// l on the distance to every other centroid (Hamerly). When the centroids move by drift_j,
// min_{j != a} ||x - c'_j|| >= l - max_{j != a} drift_j. Hamerly's max over all K drifts is
// weak in practice: a few centroids keep travelling (splits, clusters still forming) while most
// stand still. So the largest movers (a count chosen per call from the bounds) are measured
// instead: one sweep of the rows against the movers only, through the same tile engine, gives
// min_{movers} ||x - c'_j|| directly, and only the others' drifts loosen l. Rows whose bounds
// still cross get the full sweep.
//
// Exactness. A skipped row must get the label assign() would give it, and assign() decides in
// fp32: v_j = fl(||c_j||^2 - 2 x.c_j), near-ties by fl(sum (x - c_j)^2). With u = 2^-24, the
// error of v_j is at most (d + 2) u (||x|| + ||c_j||)^2 (d-term dot product, squared norm, one
// FMA) and that of a direct distance (d + 3) u times its value. With r = 2 (d + 8) u, twice
// either, and E = r (||x|| + max_j ||c_j||)^2: if the exact squared distances satisfy
// L^2 (1 - r) > U (1 + r) + 2 E, where U bounds the own one from above and L the others from
// below, then v_own < v_j for every j (so no tie and no other argmin) and the near-tie test,
// if it runs, keeps the own label. Bounds are kept in double; the factor 2 in r also absorbs
// their rounding (relative 1e-16 per step). Relative bounds fail where fp32 products underflow
// (below 2^-126); an absolute term of 2^-140 per summed term covers that.
#include "prune.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "assign_core.h"
#include "gemm_tile.h"

namespace dc {

namespace {

// Row passes (O(N d), memory-bound) below ~4M elements stay on the calling thread.
constexpr double kSerialRowWork = 4194304.0;  // 2^22
// Relative round-up of quantities computed in double from fp32 inputs (drifts, norms).
constexpr double kRoundUp = 1.0 + 1e-12;

// The per-problem constants of the exactness argument (see the top of this file).
struct Slack {
  double r;     // relative error bound of fp32 values
  double tiny;  // absolute error bound of underflowed fp32 terms, summed
  double cmax;  // max_j ||c_j||, rounded up
  // Bound on the error of an fp32 value ||c||^2 - 2 x.c for a row of squared norm xx.
  double e(double xx) const {
    const double m = std::sqrt(xx) + cmax;
    return r * m * m + tiny;
  }
  // Lower bound on the distance to a centroid whose fp32 value was v.
  double lower_from(float v, double xx) const {
    return std::sqrt(std::max(0.0, static_cast<double>(v) + xx - e(xx)));
  }
  // Whether a row with fp32 distance dist to its centroid and lower bound l on the distance to
  // every other centroid provably keeps its label (false for NaN).
  bool keeps(double l, float dist, double xx) const {
    const double upper = static_cast<double>(dist) * (1.0 + 2.0 * r) + tiny;
    return l > 0.0 && l * l * (1.0 - r) > upper * (1.0 + r) + 2.0 * e(xx);
  }
};

double norm(const float* a, const float* b, int64_t d) {
  double s = 0.0;
  for (int64_t t = 0; t < d; ++t) {
    const double v = b != nullptr ? static_cast<double>(a[t]) - b[t] : a[t];
    s += v * v;
  }
  return std::sqrt(s) * kRoundUp;
}

// Sweep the listed rows of one problem against packed panels, in blocks over the threads;
// row(i, v1, i1) gets the source row index and its lane state.
template <class Row>
void sweep_list(const Microkernel& mk, const float* xb, const std::vector<int64_t>& list,
                int64_t d, const float* panels, const float* cnorm, int64_t npanels,
                int nthreads, Row&& row) {
  const int64_t count = static_cast<int64_t>(list.size());
  if (count == 0) return;
  nthreads = threads_for(static_cast<double>(count) * npanels * mk.nr * d, kSerialTileWork,
                         nthreads);
  const Blocking blk = choose_blocking(mk, d, npanels, count, nthreads);
  const int64_t rows = blk.rows_per_block;
  const int64_t blocks = (count + rows - 1) / rows;
  const SweepScratch scratch(mk, rows, d, nthreads);
#pragma omp parallel num_threads(nthreads)
  {
    const int tid = omp_get_thread_num();
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t block = 0; block < blocks; ++block) {
      const int64_t* index = list.data() + block * rows;
      sweep_block(mk, xb, index, std::min(rows, count - block * rows), d, panels, cnorm,
                  npanels, blk.panels_per_block, scratch.a_of(tid), scratch.best_of(tid),
                  scratch.index_of(tid), [&](int64_t r, const float* v1, const int32_t* i1) {
                    row(index[r], v1, i1);
                  });
    }
  }
}

// Mover counts tried per call: none, then whole panels, doubling, up to a quarter of K.
std::vector<int64_t> mover_counts(int64_t k, int nr) {
  std::vector<int64_t> counts{0};
  for (int64_t m = nr; m <= k / 4; m *= 2) counts.push_back(m);
  return counts;
}

}  // namespace

void assign_pruned(const float* x, const float* centroids, const float* previous, float* dist,
                   int64_t* labels, double* lower, double* xnorm, int64_t* skipped,
                   int64_t batch, int64_t n, int64_t k, int64_t d, bool first, int nthreads) {
  const Microkernel& mk = microkernel(active_isa());
  const int row_threads = threads_for(static_cast<double>(n) * d, kSerialRowWork, nthreads);
  const int64_t npanels = (k + mk.nr - 1) / mk.nr;
  const float near_tie = near_tie_tolerance(d);
  const std::vector<int64_t> candidates = mover_counts(k, mk.nr);
  const int64_t ncand = static_cast<int64_t>(candidates.size());
  for (int64_t b = 0; b < batch; ++b) {
    const float* xb = x + b * n * d;
    const float* cb = centroids + b * k * d;
    int64_t* lab = labels + b * n;
    float* dst = dist + b * n;
    double* low = lower + b * n;
    double* xx = xnorm + b * n;
    Slack slack{2.0 * static_cast<double>(d + 8) * 0x1p-24,
                static_cast<double>(d + 8) * 0x1p-140, 0.0};
    for (int64_t j = 0; j < k; ++j) {
      slack.cmax = std::max(slack.cmax, norm(cb + j * d, nullptr, d));
    }

    std::vector<int64_t> active;
    if (first) {
#pragma omp parallel for num_threads(row_threads) schedule(static)
      for (int64_t i = 0; i < n; ++i) {
        const double v = norm(xb + i * d, nullptr, d);
        xx[i] = v * v;
      }
      active.resize(static_cast<size_t>(n));
      std::iota(active.begin(), active.end(), int64_t{0});
    } else {
      // Drifts, largest first; rank[j] is j's place in that order.
      const float* pb = previous + b * k * d;
      std::vector<double> drift(static_cast<size_t>(k));
      for (int64_t j = 0; j < k; ++j) drift[j] = norm(cb + j * d, pb + j * d, d);
      std::vector<int32_t> order(static_cast<size_t>(k));
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(),
                       [&](int32_t i, int32_t j) { return drift[i] > drift[j]; });
      std::vector<int64_t> rank(static_cast<size_t>(k));
      for (int64_t j = 0; j < k; ++j) rank[order[j]] = j;
      // The largest drift of a centroid other than a when the first m are measured.
      auto rest = [&](int64_t m, int64_t a) {
        const int64_t first_other = rank[a] == m ? m + 1 : m;
        return first_other < k ? drift[order[first_other]] : 0.0;
      };

      // Exact distances to the own centroids (the output for skipped rows, bit-identical to
      // assign()'s), and how many rows each mover count would let through.
      std::vector<int64_t> passes(static_cast<size_t>(ncand), 0);
#pragma omp parallel num_threads(row_threads)
      {
        std::vector<int64_t> mine(static_cast<size_t>(ncand), 0);
#pragma omp for schedule(static) nowait
        for (int64_t i = 0; i < n; ++i) {
          dst[i] = mk.squared_distance(xb + i * d, cb + lab[i] * d, d);
          for (int64_t c = 0; c < ncand; ++c) {
            mine[c] += slack.keeps(low[i] - rest(candidates[c], lab[i]), dst[i], xx[i]);
          }
        }
#pragma omp critical
        for (int64_t c = 0; c < ncand; ++c) passes[c] += mine[c];
      }
      // Cost in swept columns: full rows for the rows that fail, the movers for the others.
      // An estimate: measuring the movers can still send a row to the full sweep.
      int64_t movers = 0;
      double best_cost = std::numeric_limits<double>::infinity();
      for (int64_t c = 0; c < ncand; ++c) {
        const int64_t m = candidates[c];
        const double cost = static_cast<double>(n - passes[c]) * npanels * mk.nr +
                            static_cast<double>(passes[c]) * m;
        if (cost < best_cost) best_cost = cost, movers = m;
      }

      std::vector<int64_t> checked;  // rows that pass on the others' drifts
      for (int64_t i = 0; i < n; ++i) {
        const double l = low[i] - rest(movers, lab[i]);
        if (slack.keeps(l, dst[i], xx[i])) {
          low[i] = l;
          if (movers > 0) checked.push_back(i);
        } else {
          active.push_back(i);
        }
      }
      if (!checked.empty()) {
        const int64_t mpanels = (movers + mk.nr - 1) / mk.nr;
        FloatBuffer panels = alloc_floats(static_cast<size_t>(mpanels * d * mk.nr));
        FloatBuffer cnorm = alloc_floats(static_cast<size_t>(mpanels * mk.nr));
        pack_centroids(mk, cb, d, order.data(), movers, panels.get(), cnorm.get());
        std::vector<char> fails(static_cast<size_t>(n), 0);
        sweep_list(mk, xb, checked, d, panels.get(), cnorm.get(), mpanels, nthreads,
                   [&](int64_t i, const float* v1, const int32_t* i1) {
                     // The nearest mover other than the own centroid.
                     const LaneMerge m = merge_lanes(mk, v1, i1);
                     const float v = order[m.col] == lab[i] ? m.runner_up : m.best;
                     low[i] = std::min(low[i], slack.lower_from(v, xx[i]));
                     fails[i] = !slack.keeps(low[i], dst[i], xx[i]);
                   });
        for (int64_t i : checked) {
          if (fails[i]) active.push_back(i);
        }
      }
    }
    skipped[b] = n - static_cast<int64_t>(active.size());

    if (!active.empty()) {
      FloatBuffer panels = alloc_floats(static_cast<size_t>(npanels * d * mk.nr));
      FloatBuffer cnorm = alloc_floats(static_cast<size_t>(npanels * mk.nr));
      pack_centroids(mk, cb, d, nullptr, k, panels.get(), cnorm.get());
      sweep_list(mk, xb, active, d, panels.get(), cnorm.get(), npanels, nthreads,
                 [&](int64_t i, const float* v1, const int32_t* i1) {
                   const Nearest near = settle_row(mk, xb + i * d, cb, cnorm.get(), d,
                                                   near_tie, v1, i1);
                   lab[i] = near.label;
                   dst[i] = near.dist;
                   low[i] = slack.lower_from(near.second, xx[i]);
                 });
    }
  }
}

}  // namespace dc
