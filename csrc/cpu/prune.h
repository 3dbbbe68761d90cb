// The pruned assignment of the CPU backend's Lloyd loop: bounds in the manner of Hamerly's
// algorithm skip the rows whose nearest centroid provably cannot have changed.
#pragma once

#include <cstdint>

namespace dc {

// One assignment of a Lloyd run, with the same labels and distances as assign() (bit for bit),
// computing the full row only where the bounds cannot rule a change out. State kept by the
// caller between the calls of one run, per problem and row: labels, lower (a lower bound on
// the distance, not squared, from the row to every centroid other than its label's) and xnorm
// (the squared norm of the row). ``first``: no state yet (every row is computed and the state
// is filled); otherwise ``previous`` are the centroids of the last call, whose moves loosen the
// bounds. skipped[b]: rows of problem b whose full assignment was skipped.
void assign_pruned(const float* x, const float* centroids, const float* previous, float* dist,
                   int64_t* labels, double* lower, double* xnorm, int64_t* skipped,
                   int64_t batch, int64_t n, int64_t k, int64_t d, bool first, int nthreads);

}  // namespace dc
