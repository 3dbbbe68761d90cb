// pybind11 module dc_kernels._cuda: the CUDA kernels' only Python face. Arguments are device
// addresses (torch's data_ptr()), sizes and the caller's stream handle as integers; the Python
// wrapper (dc_kernels/backends/cuda.py) has validated shapes, dtypes and devices. CUDA failures
// arrive as RuntimeError naming the call, bad sizes or names as ValueError.
//
// Calling convention, shared with the CPU extension (csrc/cpu/bindings.cpp): arrays first
// (inputs, then outputs), then sizes, then the step's scalars, then what only this extension
// takes (x_dtype, precision, workspaces, stream); keyword-only, every argument named.
#include <pybind11/pybind11.h>

#include "contract.h"
#include "kernels.h"

namespace py = pybind11;

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "dc_kernels CUDA kernels (raw device pointers, sizes, stream handle)";
  m.def("assign", &dc::assign, py::kw_only(), py::arg("x"), py::arg("centroids"),
        py::arg("dist"), py::arg("labels"), py::arg("batch"), py::arg("n"), py::arg("k"),
        py::arg("d"), py::arg("x_dtype"), py::arg("precision"), py::arg("c_sqnorm"),
        py::arg("stream"),
        "Fused nearest-centroid search; writes dist and labels (B, N), c_sqnorm (B, K).");
  m.def("cluster_sums", &dc::cluster_sums, py::kw_only(), py::arg("x"), py::arg("labels"),
        py::arg("sums"), py::arg("counts"), py::arg("batch"), py::arg("n"), py::arg("k"),
        py::arg("d"), py::arg("x_dtype"), py::arg("stream"),
        "sums (B, K, d) f32 and counts (B, K) i64 += the rows and sizes of each label's cluster.");
  m.def("split", &dc::split, py::kw_only(), py::arg("centroids"), py::arg("counts"),
        py::arg("nsplit"), py::arg("batch"), py::arg("k"), py::arg("d"), py::arg("seed"),
        py::arg("iteration"), py::arg("iteration_on_device"), py::arg("stream"),
        "Empty-cluster split in place; nsplit (B,) receives the count.");
  m.def("covariance", &dc::covariance, py::kw_only(), py::arg("x"), py::arg("mean"),
        py::arg("cov"), py::arg("n"), py::arg("d"), py::arg("x_dtype"), py::arg("stream"),
        "float64 mean (d,) and population covariance (d, d) of x (N, d).");
  m.def("pca_apply", &dc::pca_apply, py::kw_only(), py::arg("x"), py::arg("mean"),
        py::arg("proj"), py::arg("out"), py::arg("n"), py::arg("d_in"), py::arg("d_out"),
        py::arg("normalize"), py::arg("x_dtype"), py::arg("stream"),
        "out (N, d_out) = (x - mean) @ proj, rows L2-normalised when normalize.");
  m.def("split_draw", &dc::split_draw, py::arg("seed"), py::arg("iteration"), py::arg("cluster"),
        "The split's 64-bit donor draw, computed on the host by the kernels' own code.");
}
