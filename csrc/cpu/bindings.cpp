// pybind11 face of the CPU kernels: raw addresses (uintptr_t), sizes and a thread count. The
// Python wrapper (dc_kernels/backends/cpu.py) has already checked shapes, dtypes, contiguity
// and devices; the kernels run without the GIL.
//
// Calling convention, shared with the CUDA extension (csrc/cuda/bindings.cpp): arrays first
// (inputs, then outputs), then sizes, then the step's scalars, then what only this extension
// takes (nthreads); every argument is named, and dc_kernels calls them by keyword only.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "contract.h"
#include "gemm_tile.h"
#include "kmeans.h"
#include "pca.h"
#include "prune.h"

namespace py = pybind11;

namespace {

template <class T>
T* ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

int threads(int nthreads) { return nthreads > 0 ? nthreads : 1; }

}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "dc_kernels CPU kernels (C++/OpenMP, AVX-512 / AVX2 / scalar chosen at run time)";

  m.def(
      "assign",
      [](uintptr_t x, uintptr_t centroids, uintptr_t dist, uintptr_t labels, int64_t batch,
         int64_t n, int64_t k, int64_t d, int nthreads) {
        py::gil_scoped_release release;
        dc::assign(ptr<const float>(x), ptr<const float>(centroids), ptr<float>(dist),
                   ptr<int64_t>(labels), batch, n, k, d, threads(nthreads));
      },
      py::kw_only(), py::arg("x"), py::arg("centroids"), py::arg("dist"), py::arg("labels"),
      py::arg("batch"), py::arg("n"), py::arg("k"), py::arg("d"), py::arg("nthreads"),
      "Nearest centroid: x (B,N,d) f32, centroids (B,K,d) f32 -> dist (B,N) f32, labels i64.");

  m.def(
      "cluster_sums",
      [](uintptr_t x, uintptr_t labels, uintptr_t sums, uintptr_t counts, int64_t batch,
         int64_t n, int64_t k, int64_t d, int nthreads) {
        py::gil_scoped_release release;
        dc::cluster_sums(ptr<const float>(x), ptr<const int64_t>(labels), ptr<float>(sums),
                         ptr<int64_t>(counts), batch, n, k, d, threads(nthreads));
      },
      py::kw_only(), py::arg("x"), py::arg("labels"), py::arg("sums"), py::arg("counts"),
      py::arg("batch"), py::arg("n"), py::arg("k"), py::arg("d"), py::arg("nthreads"),
      "sums (B,K,d) f32 and counts (B,K) i64 += the rows and sizes of each label's cluster.");

  m.def(
      "split",
      [](uintptr_t centroids, uintptr_t counts, uintptr_t nsplit, int64_t batch, int64_t k,
         int64_t d, uint64_t seed, uint64_t iteration) {
        py::gil_scoped_release release;
        dc::split(ptr<float>(centroids), ptr<int64_t>(counts), ptr<int64_t>(nsplit), batch, k,
                  d, seed, iteration);
      },
      py::kw_only(), py::arg("centroids"), py::arg("counts"), py::arg("nsplit"),
      py::arg("batch"), py::arg("k"), py::arg("d"), py::arg("seed"), py::arg("iteration"),
      "Split empty clusters in place; nsplit (B,) i64.");

  m.def(
      "assign_pruned",
      [](uintptr_t x, uintptr_t centroids, uintptr_t previous, uintptr_t dist, uintptr_t labels,
         uintptr_t lower, uintptr_t xnorm, uintptr_t skipped, int64_t batch, int64_t n,
         int64_t k, int64_t d, bool first, int nthreads) {
        py::gil_scoped_release release;
        dc::assign_pruned(ptr<const float>(x), ptr<const float>(centroids),
                          ptr<const float>(previous), ptr<float>(dist), ptr<int64_t>(labels),
                          ptr<double>(lower), ptr<double>(xnorm), ptr<int64_t>(skipped), batch,
                          n, k, d, first, threads(nthreads));
      },
      py::kw_only(), py::arg("x"), py::arg("centroids"), py::arg("previous"), py::arg("dist"),
      py::arg("labels"), py::arg("lower"), py::arg("xnorm"), py::arg("skipped"),
      py::arg("batch"), py::arg("n"), py::arg("k"), py::arg("d"), py::arg("first"),
      py::arg("nthreads"),
      "assign() with bounds kept between calls (lower, xnorm (B,N) f64; labels the state); "
      "skipped (B,) i64: rows whose full assignment was skipped.");

  m.def(
      "pca_apply",
      [](uintptr_t x, uintptr_t mean, uintptr_t proj, uintptr_t out, int64_t n, int64_t d_in,
         int64_t d_out, bool normalize, int nthreads) {
        py::gil_scoped_release release;
        dc::pca_apply(ptr<const float>(x), ptr<const float>(mean), ptr<const float>(proj),
                      ptr<float>(out), n, d_in, d_out, normalize, threads(nthreads));
      },
      py::kw_only(), py::arg("x"), py::arg("mean"), py::arg("proj"), py::arg("out"),
      py::arg("n"), py::arg("d_in"), py::arg("d_out"), py::arg("normalize"), py::arg("nthreads"),
      "out (N,d_out) = (x - mean) @ proj, rows L2-normalised when normalize.");

  m.def("split_draw", &dc::split_draw, py::arg("seed"), py::arg("iteration"),
        py::arg("cluster"), "splitmix64 draw of the empty-cluster split (seed as uint64).");

  m.def("isa", [] { return std::string(dc::isa_name(dc::active_isa())); },
        "Instruction set the kernels use now.");
  m.def("set_isa", [](const std::string& name) { dc::set_isa(dc::isa_from_name(name)); },
        py::arg("name"), "Use 'avx512', 'avx2', 'scalar' or 'auto' (best supported).");
  m.def(
      "supported_isas",
      [] {
        std::vector<std::string> names;
        for (dc::Isa isa : {dc::Isa::avx512, dc::Isa::avx2, dc::Isa::scalar}) {
          if (dc::isa_supported(isa)) names.emplace_back(dc::isa_name(isa));
        }
        return names;
      },
      "Instruction sets this CPU can run, best first.");
}
