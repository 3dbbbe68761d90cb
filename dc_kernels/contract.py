"""The facts every backend shares, written once: precisions, the empty-cluster split's draw and
perturbation, and the imbalance statistic. The C++ and CUDA kernels read the same facts from
csrc/common/contract.h; the Triton split kernel from its own copy of splitmix64 in Triton's
language (the one place a third spelling cannot be avoided), tested bit for bit against this.
"""

import torch

# Precisions of the nearest-centroid search, most accurate first: fp32 (IEEE-accurate
# distances), tf32 (fp32 operands rounded to 10 mantissa bits), bf16, fp16 (operands cast).
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")

# Relative perturbation of the two copies of a split centroid, as in faiss: coordinate t is
# scaled by (1 + eps) in the copy and (1 - eps) in the donor for even t, the other way round for
# odd t. A power of two, so both factors are exact in fp32.
SPLIT_EPS = 1.0 / 1024.0

MASK64 = (1 << 64) - 1

# Point dtypes every entry point accepts (computation is fp32 whatever the input).
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def mix64(z: int) -> int:
    """splitmix64's finaliser on a 64-bit integer (wrapping arithmetic)."""
    z = (z + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def split_seed(seed: int) -> int:
    """A Python seed (any sign) as the unsigned 64-bit value the native kernels take."""
    return int(seed) & MASK64


def split_draw(seed: int, iteration: int, cluster: int) -> int:
    """The 64-bit draw that picks the donor of empty ``cluster`` at ``iteration``.

    Integer-only, so that every backend (Python, C++, Triton, CUDA) picks the same donor: the
    donor is the first cluster m whose running sum of weights max(count_m - 1, 0) exceeds
    draw % (sum of the weights).
    """
    return mix64(mix64(mix64(split_seed(seed)) ^ iteration) ^ cluster)


def imbalance_factor(counts: torch.Tensor, n: int) -> torch.Tensor:
    """faiss's imbalance factor of cluster sizes (B, K): K * sum(size^2) / N^2 per problem,
    float64 (1.0 when perfectly balanced)."""
    return counts.shape[-1] * counts.double().square().sum(-1) / float(n) ** 2

