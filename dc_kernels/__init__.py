"""dc_kernels: k-means and PCA-whitening kernels for DeepCluster, usable on their own.

    import dc_kernels
    km = dc_kernels.Kmeans(d, k, niter=20, seed=1234)   # same shape as faiss.Kmeans
    km.train(x); D, I = km.assign(x)
    res = dc_kernels.kmeans(x, k)                       # tensors back on x's device
    pca = dc_kernels.PCAWhitening(d_in, 256).train(x); y = pca.apply(x)

Backends: torch (reference), cpu (C++/OpenMP), triton and cuda (GPU); see available_backends().
"""

from .backends import available_backends
from .kmeans import Kmeans, KmeansResult, kmeans
from .pca import PCAWhitening

__all__ = ["Kmeans", "KmeansResult", "PCAWhitening", "available_backends", "kmeans"]
__version__ = "0.1.0"
