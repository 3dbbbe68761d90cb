"""What only the Triton backend does (the shared contract is tests/test_backend_contract.py,
which runs these kernels in the Triton interpreter on a machine without a GPU).

The interpreter multiplies dot operands in fp32 whatever the precision: the kernels then round
the operands themselves (``EMULATE``) as the tensor cores do, so the reduced-precision tests
below check what the hardware computes: the search is neither higher nor lower than named.
``test_kernels_build_for_hopper`` compiles every kernel for sm_90 (no GPU needed) and checks
shared memory and register spills.
"""

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dc_kernels import testing
from dc_kernels.backends import unavailable_reason
from tests import reference_numpy as oracle

CAN_RUN = not unavailable_reason("triton", torch.device("cpu")) or torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not CAN_RUN, reason="triton cannot run here")
DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")

if CAN_RUN:
    from dc_kernels.ops import pca as pca_ops
    from dc_kernels.ops.assign import assign


def _readings(precision: str) -> list[bool]:
    """How tf32 operands may be rounded: truncated (the interpreter's emulation), or to nearest
    too on a GPU (whichever its compiler does); other precisions round one way."""
    return [False, True] if precision == "tf32" and DEV.type == "cuda" else [False]


@pytest.mark.parametrize("precision", ["tf32", "bf16", "fp16"])
def test_assign_precision_is_as_named(precision):
    # An offset makes the dot products large beside the gaps between candidates, so that many
    # labels change when the operands are rounded.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1000, 32, generator=g) + 2
    c = 0.5 * torch.randn(1, 100, 32, generator=g) + 2
    _, labels = assign(x.to(DEV), c.to(DEV), precision)
    labels = labels.cpu().numpy()
    csq = (c.double().numpy() ** 2).sum(-1)[:, None]
    emulated = [(csq - 2.0 * oracle.round_operand(x.numpy(), precision, nearest)
                 @ oracle.round_operand(c.numpy(), precision, nearest).transpose(0, 2, 1)
                 ).argmin(-1) for nearest in _readings(precision)]
    ours_agree = max(float((labels == e).mean()) for e in emulated)
    exact_agree = max(float((oracle.assign(x.numpy(), c.numpy())[1] == e).mean())
                      for e in emulated)
    # Closer to the search in the named precision than exact arithmetic is: not silently
    # higher (the contract suite bounds its error: not lower either).
    assert ours_agree > exact_agree and ours_agree >= 0.97


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_pca_apply_precision_is_as_named(precision):
    x = testing.blobs(100, 64, 5, seed=9, spread=1.0) + 3
    proj = torch.randn(64, 16, generator=torch.Generator().manual_seed(1)) / 8
    mean = x.mean(0)
    out = pca_ops.pca_apply(x.to(DEV), mean.to(DEV), proj.to(DEV), False, precision)
    out = out.double().cpu().numpy()
    xc = (x - mean).numpy()
    errors = [np.abs(out - oracle.round_operand(xc, precision, nearest)
                     @ oracle.round_operand(proj.numpy(), precision, nearest)).max()
              for nearest in _readings(precision)]
    # Equal to the product of operands rounded as named (up to fp32 summation), clearly
    # farther from the exact one.
    exact_error = np.abs(out - oracle.pca_apply(xc, 0.0, proj.numpy(), False)).max()
    assert min(errors) < 1e-5 < exact_error


def test_top_eigh_takes_the_subspace_path():
    # The contract suite checks the eigenpairs; here, that a large matrix with a decaying
    # spectrum converges by subspace iteration instead of falling back to a dense eigh.
    g = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(200, 200, dtype=torch.float64, generator=g))[0]
    cov = ((q / torch.arange(1, 201, dtype=torch.float64)) @ q.T).to(DEV)
    assert pca_ops._subspace_eigh(cov, 10, 36, 64, pca_ops.EIGH_TOL)


def test_availability():
    assert unavailable_reason("triton", DEV) == ""
    assert "does not run on meta" in unavailable_reason("triton", torch.device("meta"))


def test_launch_falls_back_to_a_config_that_fits():
    from triton.runtime.errors import OutOfResources

    from dc_kernels.ops._common import launch

    tried = []

    class Kernel:  # stands in for a JIT function whose first config overflows shared memory
        def __getitem__(self, grid):
            def run(*args, **config):
                tried.append((grid(config), config["BLOCK"]))
                if config["BLOCK"] > 32:
                    raise OutOfResources(300_000, 232_448, "shared memory")
            return run

    kernel = Kernel()
    configs = [dict(BLOCK=128), dict(BLOCK=64), dict(BLOCK=32)]
    launch(kernel, lambda meta: (1024 // meta["BLOCK"],), (), configs, key=("k",))
    assert tried == [((8,), 128), ((16,), 64), ((32,), 32)]
    launch(kernel, lambda meta: (1024 // meta["BLOCK"],), (), configs, key=("k",))
    assert tried[-1] == ((32,), 32) and len(tried) == 4  # the fitting config is remembered
    with pytest.raises(OutOfResources):
        launch(kernel, lambda meta: (1,), (), configs[:2], key=("other",))


# ---------------------------------------------------------------------------------- Hopper build
# Each kernel's first (preferred) config compiled for sm_90 with Triton's bundled ptxas, as a
# launch on aligned tensors with d and K multiples of 16 would compile it: it must build, fit
# the 227 KiB of shared memory a Hopper block may use, and not spill registers (beyond a few
# bytes). This guards the GPU path on machines without a GPU. It runs in a subprocess without
# TRITON_INTERPRET, since interpreted kernels cannot be compiled.
HOPPER_SHARED = 232448


def _hopper_build(fn, pointers: dict, consts: dict, scalars: dict | None) -> str:
    """'' when ``fn`` builds for sm_90 within the limits, else what went wrong."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    consts = dict(consts)
    options = {"num_warps": consts.pop("num_warps"), "num_stages": consts.pop("num_stages", 3)}
    signature = {name: "constexpr" if name in consts
                 else pointers.get(name) or (scalars or {}).get(name, "i32")
                 for name in fn.arg_names}
    aligned = {"D", "K", "DIN", "DOUT", "stride_xb", "stride_xn", "stride_cb", "stride_ck"}
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]]
             for a, t in signature.items() if t.startswith("*") or a in aligned}
    try:
        kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=consts,
                                          attrs=attrs),
                                target=GPUTarget("cuda", 90, 32), options=options)
    except Exception as exc:  # report every case, not only the first failure
        return f"does not build: {type(exc).__name__}: {str(exc)[:300]}"
    if kernel.metadata.shared > HOPPER_SHARED:
        return f"needs {kernel.metadata.shared} B of shared memory"
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if cuobjdump.exists():
        with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
            cubin.write(kernel.asm["cubin"])
            cubin.flush()
            usage = subprocess.run([str(cuobjdump), "-res-usage", cubin.name],
                                   capture_output=True, text=True, check=True).stdout
        stack = [int(m) for m in re.findall(r"STACK:(\d+)", usage)]
        if not stack or max(stack) > 64:
            return f"spills registers: {usage.strip()[-200:]}"
    return ""


def _hopper_cases():
    from dc_kernels.ops import assign as assign_ops
    from dc_kernels.ops import pca as pca_mod
    from dc_kernels.ops import split as split_ops
    from dc_kernels.ops import update as update_ops

    x_ptrs = {"x_ptr": "*fp32", "c_ptr": "*fp32", "csq_ptr": "*fp32", "dist_ptr": "*fp32",
              "label_ptr": "*i64", "list_ptr": "*i64", "count_ptr": "*i64",
              "second_ptr": "*fp32"}
    for precision, code in (("fp32", 0), ("tf32", 1), ("bf16", 2), ("fp16", 3)):
        op = {"bf16": "*bf16", "fp16": "*fp16"}.get(precision, "*fp32")
        # The point tile on chip (largest d it is used for) and d streamed in slices.
        for d in ((128, 256) if code < 2 else (256, 1000)):
            cfg = assign_ops.assign_configs(d, precision, False)[0]
            for mode in ("SWEEP", "GATHER", "LABELLED"):
                config = cfg
                if mode == "LABELLED" and code >= 2:  # as _launch runs it: d in slices
                    config = [c for c in assign_ops.assign_configs(d, precision, False)
                              if not c["SINGLE_D"]][0]
                yield (f"assign-{precision}-d{d}-{mode}", assign_ops._assign_kernel,
                       {**x_ptrs, "xop_ptr": op, "cop_ptr": op},
                       {**config, "PRECISION": code, "EMULATE": False,
                        "MODE": getattr(assign_ops, mode)}, None)
    sums = {"x_ptr": "*fp32", "label_ptr": "*i64", "sums_ptr": "*fp32", "counts_ptr": "*i64"}
    yield ("sums-onehot", update_ops._sums_onehot_kernel, sums,
           update_ops.onehot_config(100, 128), None)
    yield ("sums-atomic", update_ops._sums_atomic_kernel, sums, update_ops.atomic_config(256),
           None)
    yield ("split", split_ops._split_kernel,
           {"c_ptr": "*fp32", "counts_ptr": "*i64", "bsum_ptr": "*i64", "nsplit_ptr": "*i64",
            "iter_ptr": "*i64"},
           {"ITER_ON_DEVICE": True, "BLOCK": 1024, "NB": 128, "BLOCK_D": 256, "num_warps": 4},
           {"seed_key": "u64", "eps": "fp32"})
    yield ("pca-gram", pca_mod._gram_kernel,
           {"x_ptr": "*fp32", "shift_ptr": "*fp32", "gram_ptr": "*fp64", "pairs_ptr": "*i32"},
           pca_mod.gram_configs(4096, False)[0], None)
    for code in (0, 1):
        yield (f"pca-apply-{code}", pca_mod._apply_kernel,
               {"x_ptr": "*fp32", "mean_ptr": "*fp32", "proj_ptr": "*fp32", "out_ptr": "*fp32"},
               {**pca_mod.apply_configs(256, False)[0], "NORMALIZE": True, "PRECISION": code,
                "EMULATE": False}, None)


def hopper_report() -> None:
    """Print one line per kernel case: its name, then 'ok' or the problem."""
    for name, fn, pointers, consts, scalars in _hopper_cases():
        problem = _hopper_build(fn, pointers, consts, scalars)
        print(name, problem or "ok", flush=True)


def _bundled_ptxas() -> bool:
    import importlib.util

    spec = importlib.util.find_spec("triton")
    return spec is not None and (Path(spec.origin).parent / "backends" / "nvidia" / "bin"
                                 / "ptxas").exists()


@pytest.mark.slow  # about 15 s with a cold Triton cache
@pytest.mark.skipif(not _bundled_ptxas(), reason="needs Triton's bundled ptxas")
def test_kernels_build_for_hopper():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-c", "from tests.test_triton import hopper_report; "
                          "hopper_report()"], cwd=root, env=env, capture_output=True, text=True,
                         timeout=300)
    lines = run.stdout.strip().splitlines()
    assert run.returncode == 0 and lines, run.stderr[-2000:]
    problems = [line for line in lines if not line.endswith(" ok")]
    assert not problems, "\n".join(problems)
