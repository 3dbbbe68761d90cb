// pybind11 module dc_kernels._cuda: the CUDA kernels' only Python face. Arguments are device
// addresses (torch's data_ptr()), sizes and the caller's stream handle as integers; the Python
// wrapper (dc_kernels/backends/cuda.py) has validated shapes, dtypes and devices. CUDA failures
// arrive as RuntimeError naming the call, bad sizes or names as ValueError.
#include <pybind11/pybind11.h>

#include "kernels.h"

namespace py = pybind11;

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "dc_kernels CUDA kernels (raw device pointers, sizes, stream handle)";
  m.def("assign", &dc::assign, py::arg("x"), py::arg("x_dtype"), py::arg("centroids"),
        py::arg("c_sqnorm"), py::arg("dist"), py::arg("labels"), py::arg("batch"), py::arg("n"),
        py::arg("k"), py::arg("d"), py::arg("precision"), py::arg("stream"),
        "Fused nearest-centroid search; writes c_sqnorm (B, K), dist and labels (B, N).");
  m.def("update", &dc::update, py::arg("x"), py::arg("x_dtype"), py::arg("labels"),
        py::arg("centroids"), py::arg("sums"), py::arg("counts"), py::arg("batch"), py::arg("n"),
        py::arg("k"), py::arg("d"), py::arg("stream"),
        "Cluster sums (workspace) and counts, then the non-empty centroids in place.");
  m.def("split", &dc::split, py::arg("centroids"), py::arg("counts"), py::arg("nsplit"),
        py::arg("batch"), py::arg("k"), py::arg("d"), py::arg("seed"), py::arg("iteration"),
        py::arg("stream"), "Empty-cluster split in place; nsplit (B,) receives the count.");
  m.def("covariance", &dc::covariance, py::arg("x"), py::arg("x_dtype"), py::arg("mean"),
        py::arg("cov"), py::arg("n"), py::arg("d"), py::arg("stream"),
        "float64 mean (d,) and population covariance (d, d) of x (N, d).");
  m.def("pca_apply", &dc::pca_apply, py::arg("x"), py::arg("x_dtype"), py::arg("mean"),
        py::arg("proj"), py::arg("out"), py::arg("n"), py::arg("d_in"), py::arg("d_out"),
        py::arg("normalize"), py::arg("stream"),
        "out (N, d_out) = (x - mean) @ proj, rows L2-normalised when normalize.");
  m.def("split_draw", &dc::split_draw, py::arg("seed"), py::arg("iteration"), py::arg("cluster"),
        "The split's 64-bit donor draw, computed on the host by the kernel's own code.");
}
