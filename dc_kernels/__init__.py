"""dc_kernels: k-means and PCA-whitening kernels for DeepCluster, usable on their own.

    import dc_kernels
    km = dc_kernels.Kmeans(d, k, niter=25, seed=1234)   # faiss.Kmeans's options and defaults
    km.train(x); D, I = km.assign(x); D, I = km.index.search(x, 5)
    res = dc_kernels.kmeans(x, k)                       # tensors back on x's device
    pca = dc_kernels.PCAWhitening(d_in, 256).train(x); y = pca.apply(x)
    pca = dc_kernels.PCAMatrix(d_in, 256, -0.5); pca.train(x); y = pca.apply(x)  # faiss's

Backends: torch (reference), cpu (C++/OpenMP), triton and cuda (GPU); see available_backends().
"""

from .backends import available_backends
from .kmeans import CentroidIndex, Kmeans, KmeansResult, kmeans
from .pca import PCAMatrix, PCAWhitening

__all__ = ["CentroidIndex", "Kmeans", "KmeansResult", "PCAMatrix", "PCAWhitening",
           "available_backends", "kmeans"]
__version__ = "0.1.0"
