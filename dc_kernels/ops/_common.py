"""Helpers shared by the Triton kernel families: precision codes, the precision-exact dot
product, and the device guard every launcher uses."""

import contextlib
import os
from collections.abc import Callable

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from ..contract import PRECISIONS, check_precision


def precision_code(precision: str) -> int:
    """The integer the kernels branch on at compile time: 0 fp32, 1 tf32, 2 bf16, 3 fp16."""
    return PRECISIONS.index(check_precision(precision))


def interpreting(t: torch.Tensor) -> bool:
    """True when ``t``'s kernels will run in the Triton interpreter (CPU, TRITON_INTERPRET=1)."""
    return t.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def check_launchable(t: torch.Tensor, what: str) -> None:
    """Raise a clear error when a kernel cannot run on ``t``'s device."""
    if t.device.type == "cuda" or interpreting(t):
        return
    raise ValueError(f"{what}: Triton kernels need a CUDA tensor (or TRITON_INTERPRET=1 for CPU "
                     f"tensors), got a tensor on {t.device}")


def device_guard(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Make ``t``'s GPU the current one, since Triton launches on the current device."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


@triton.jit
def truncate_tf32(v):
    """Zero the 13 low mantissa bits of fp32 values: what tensor cores read in TF32 mode."""
    bits = v.to(tl.uint32, bitcast=True) & 0xFFFFE000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def round_bf16(v):
    """fp32 values rounded to the nearest bf16 (ties to even), kept in fp32: what the GPU's
    conversion does (the interpreter's own conversion truncates)."""
    bits = v.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def to_operand(v, PRECISION: tl.constexpr, EMULATE: tl.constexpr):
    """``v`` rounded to the dot operand type of PRECISION (see ``dot_operands``)."""
    if PRECISION == 0:
        out = v.to(tl.float32)
    elif PRECISION == 1:
        out = v.to(tl.float32)
        if EMULATE:
            out = truncate_tf32(out)
    elif PRECISION == 2:
        if EMULATE:
            out = round_bf16(v.to(tl.float32))
        else:
            out = v.to(tl.bfloat16)
    else:
        out = v.to(tl.float16)
    return out


@triton.jit
def dot_operands(a, b, acc, PRECISION: tl.constexpr, EMULATE: tl.constexpr):
    """acc + a @ b for operands made by ``to_operand``, accumulated in fp32.

    fp32 uses 3xTF32 (hi/lo split on tensor cores: about fp32 accuracy at tensor-core speed);
    tf32, bf16 and fp16 multiply the operands as named. EMULATE is set for the CPU interpreter,
    whose dot ignores TF32 and misreads bf16 operands (it multiplies their raw bits), and whose
    fp32 -> bf16 conversion truncates: there ``to_operand`` rounds the operands explicitly as
    the GPU does and they are multiplied in fp32, which is what the hardware computes, since
    products of TF32 or bf16 values are exact in fp32.
    """
    if PRECISION == 0:
        acc = tl.dot(a, b, acc, input_precision="tf32x3")
    elif PRECISION == 1:
        if EMULATE:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc, input_precision="tf32")
    elif PRECISION == 2:
        if EMULATE:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
    else:
        acc = tl.dot(a, b, acc)
    return acc


_FITTING: dict[tuple, int] = {}


def launch(kernel: triton.JITFunction, grid: Callable[[dict], tuple], args: tuple,
           configs: list[dict], key: tuple) -> None:
    """Launch ``kernel`` with the first of ``configs`` that fits the GPU (shared memory,
    registers), remembering per ``key`` which one did.

    The configs are tuned for Hopper; a card with less shared memory, or a compiler that stages
    differently, raises OutOfResources when the kernel is built, before anything runs, so the
    next (smaller) config can be tried safely. ``grid`` takes the chosen config.
    """
    first = _FITTING.get((kernel, key), 0)
    for i in range(first, len(configs)):
        try:
            kernel[grid](*args, **configs[i])
        except OutOfResources:
            if i == len(configs) - 1:
                raise
            continue
        _FITTING[(kernel, key)] = i
        return
