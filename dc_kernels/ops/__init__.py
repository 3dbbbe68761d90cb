"""Triton kernels, one family per module: assign, update, split, pca.

Each module holds the ``@triton.jit`` kernel, its launcher and the public function. Importing
this package imports triton; ``dc_kernels`` itself only does so when the triton backend is asked
for.
"""
