"""The triton backend's pruned assignment (``TritonBackend.pruner``, run here in the Triton
interpreter): the Lloyd driver with it against the same driver with the plain ``assign`` gives
identical labels, centroids, objectives and splits in every precision (on a GPU, centroids and
objectives up to the order of atomic additions, see ``assert_identical``), at shapes that straddle
the interpreter's 64-wide tiles; the kernels it adds agree bit for bit with ``assign``; the
error bound its margin rests on holds against float64; and it does skip rows (a counter)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dc_kernels
from dc_kernels import testing
from dc_kernels.backends import get_backend, unavailable_reason
from dc_kernels.backends.cpu import CpuBackend
from dc_kernels.backends.triton import TritonBackend

# On the GPU when there is one (bench/gpu_check.sh runs these there), else in the interpreter.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(bool(unavailable_reason("triton", DEVICE)),
                                reason="triton does not run here")
# The GPU-marked share (bench/gpu_check.sh selects -m gpu): fp32 identity and the kernel modes.
on_gpu = pytest.mark.gpu if DEVICE.type == "cuda" else (lambda test: test)


def run(x: torch.Tensor, init: torch.Tensor, niter: int, pruned: bool, precision: str,
        monkeypatch: pytest.MonkeyPatch, spherical: bool = False) -> dc_kernels.KmeansResult:
    """One k-means run on the triton backend, with pruning forced on (any size) or off."""
    with monkeypatch.context() as patch:
        patch.setattr(TritonBackend, "prune_min_work", 0 if pruned else 1 << 62)
        patch.setattr(TritonBackend, "prune_min_k", 2)
        result = dc_kernels.kmeans(x.to(DEVICE), init.shape[-2], niter=niter,
                                   init_centroids=init.to(DEVICE), backend="triton", seed=11,
                                   precision=precision, spherical=spherical)
    result.labels, result.centroids = result.labels.cpu(), result.centroids.cpu()
    return result


def assert_identical(pruned: dc_kernels.KmeansResult, plain: dc_kernels.KmeansResult,
                     skips: bool = True, obj_rtol: float = 0.0) -> None:
    """Labels and splits identical; centroids and objectives too in the interpreter (objectives
    within obj_rtol: 16-bit modes may sum a kept row's distance in another order, see
    ops/assign.py: _launch). On a GPU the cluster sums are atomic additions in no fixed order,
    so two runs of the same unpruned loop already differ in the last bits: there centroids and
    objectives agree to that order's rounding (seen on an H200: 5e-10 relative objectives)."""
    exact = DEVICE.type == "cpu"
    assert torch.equal(pruned.labels, plain.labels)
    if exact:
        assert torch.equal(pruned.centroids, plain.centroids)
    else:  # each of the 5 iterations rounds sums of a few hundred fp32 rows in another order
        torch.testing.assert_close(pruned.centroids, plain.centroids, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(pruned.history, plain.history, strict=True):
        for key in ("nsplit", "imbalance_factor"):
            np.testing.assert_array_equal(mine[key], theirs[key], err_msg=key)
        np.testing.assert_allclose(mine["obj"], theirs["obj"],
                                   rtol=obj_rtol if exact else max(obj_rtol, 1e-6), atol=0)
        assert "reassigned" in mine and "reassigned" not in theirs
    # Not vacuous: the pruned run did skip rows (ties everywhere forbid it).
    assert not skips or min(h["reassigned"].min() for h in pruned.history) < 1.0


def blobs(batch: int, n: int, k: int, d: int, spread: float,
          seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = testing.blobs(n, d, k, seed=seed, spread=spread, batch=batch)
    return x, testing.random_rows(x, k, seed=seed)


# (batch, n, k, d, spread): N and K off the 64-wide tiles, d one tile (20) or three slices (130),
# batched, clusters separated or overlapping.
CASES = [(2, 150, 70, 20, 0.3), (1, 130, 67, 130, 0.8)]


@on_gpu
@pytest.mark.parametrize("batch,n,k,d,spread", CASES)
def test_pruned_equals_unpruned_fp32(monkeypatch, batch, n, k, d, spread):
    x, init = blobs(batch, n, k, d, spread, seed=n + k + d)
    assert_identical(run(x, init, 5, True, "fp32", monkeypatch),
                     run(x, init, 5, False, "fp32", monkeypatch))


@pytest.mark.parametrize("precision", ["tf32", "bf16", "fp16"])
def test_pruned_equals_unpruned_low_precision(monkeypatch, precision):
    # The margin covers the precision's rounding, so the plain kernel provably picks the label
    # a skipped row keeps: identical labels and centroids here too, not merely close ones.
    x, init = blobs(2, 140, 66, 24, 0.5, seed=4)
    x, init = x + 3.0, init + 3.0  # off the origin: cancellation widens the score errors
    assert_identical(run(x, init, 5, True, precision, monkeypatch),
                     run(x, init, 5, False, precision, monkeypatch),
                     obj_rtol=1e-6 if precision in ("bf16", "fp16") else 0.0)


@on_gpu
def test_pruned_equals_unpruned_with_splits(monkeypatch):
    # Half the initial centroids copy the other half: the copies lose every tie, empty and are
    # split (a centroid jumps to a donor's): the drifts must carry the bounds across the jump.
    x, init = blobs(2, 150, 68, 12, 0.4, seed=3)
    init[:, 34:] = init[:, :34]
    pruned, plain = run(x, init, 5, True, "fp32", monkeypatch), run(x, init, 5, False, "fp32",
                                                                      monkeypatch)
    assert (plain.history[0]["nsplit"] > 20).all()
    assert_identical(pruned, plain)


def test_pruned_equals_unpruned_on_exact_ties_and_spherical(monkeypatch):
    # Integer points, most of them exactly equidistant from two centroids: no bound may prune
    # a tie, and the rest must still agree.
    x, init = testing.exact_ties(150, 6, 66, batch=2, seed=5, high=1)
    assert_identical(run(x, init, 4, True, "fp32", monkeypatch),
                     run(x, init, 4, False, "fp32", monkeypatch), skips=False)
    x, init = blobs(1, 150, 66, 16, 0.3, seed=13)
    assert_identical(run(x, init, 4, True, "fp32", monkeypatch, spherical=True),
                     run(x, init, 4, False, "fp32", monkeypatch, spherical=True))


@on_gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_assign_rows_and_distances_match_assign(precision):
    from dc_kernels.ops.assign import assign, assign_rows, labelled_distances, operand_copy

    x, c = (t.to(DEVICE) for t in blobs(2, 150, 70, 40, 0.5, seed=8))
    dist, labels = assign(x, c, precision)
    # A subset per problem, in scrambled order, with junk past each count.
    gen = torch.Generator().manual_seed(0)
    row_list = torch.stack([torch.randperm(150, generator=gen) for _ in range(2)]).to(DEVICE)
    count = torch.tensor([97, 0], device=DEVICE)  # a problem with nothing to sweep
    sub_dist = torch.full((2, 150), -1.0, device=DEVICE)
    sub_labels = torch.full((2, 150), -1, dtype=torch.int64, device=DEVICE)
    second = torch.full((2, 150), -1.0, device=DEVICE)
    assign_rows(x, operand_copy(x, precision), c, precision, row_list, count, sub_dist,
                sub_labels, second)
    for b in range(2):
        picked, left = row_list[b, :count[b]], row_list[b, count[b]:]
        assert torch.equal(sub_labels[b, picked], labels[b, picked])
        assert torch.equal(sub_dist[b, picked], dist[b, picked])
        assert (sub_labels[b, left] == -1).all() and (second[b, left] == -1).all()
    assert torch.equal(labelled_distances(x, operand_copy(x, precision), c, labels, precision),
                       dist)


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16", "fp16"])
@pytest.mark.parametrize("offset", [0.0, 30.0])
def test_score_error_bound_holds(precision, offset):
    """The best and second-best scores the kernel reports are within the bound the margin
    uses of their float64 values, at the origin and far from it (cancellation)."""
    from dc_kernels.ops.assign import assign_rows, operand_copy, score_error_bound

    batch, n, k, d = 2, 130, 70, 100
    gen = torch.Generator().manual_seed(int(offset) + len(precision))
    x = torch.randn(batch, n, d, generator=gen) * torch.rand(batch, n, 1, generator=gen) + offset
    c = torch.randn(batch, k, d, generator=gen) * 0.3 + offset
    dist = torch.empty(batch, n, device=DEVICE)
    labels = torch.empty(batch, n, dtype=torch.int64, device=DEVICE)
    second = torch.empty(batch, n, device=DEVICE)
    every_row = torch.arange(n, device=DEVICE).repeat(batch, 1)
    xd, cd = x.to(DEVICE), c.to(DEVICE)
    assign_rows(xd, operand_copy(xd, precision), cd, precision, every_row,
                torch.full((batch,), n, device=DEVICE), dist, labels, second)
    labels, second = labels.cpu(), second.cpu()
    x64, c64 = x.double(), c.double()
    exact = c64.square().sum(-1).unsqueeze(1) - 2.0 * x64 @ c64.transpose(1, 2)  # (B, N, K)
    best_exact = exact.gather(2, labels.unsqueeze(-1)).squeeze(-1)
    second_exact = exact.scatter(2, labels.unsqueeze(-1), float("inf")).amin(-1)
    rel, lin, tiny = score_error_bound(precision, d)
    m = x64.norm(dim=-1) + c64.norm(dim=-1).amax(-1, keepdim=True)
    bound = rel * m * m + lin * m + tiny
    error = (second.double() - second_exact).abs()
    assert (error <= bound).all(), float((error / bound).max())
    # The kernel's label is a minimiser within twice the bound.
    assert (best_exact <= exact.amin(-1) + 2 * bound).all()
    if precision != "fp32":  # the interpreter runs fp32 as IEEE, not the GPU's 3xTF32
        # Not vacuous: the observed errors reach a visible fraction of the bound.
        assert float((error / bound).max()) > 1e-2


def test_pruning_skips_rows_on_clustered_data(monkeypatch):
    x, init = blobs(1, 200, 66, 8, 0.05, seed=21)
    result = run(x, init, 6, True, "fp32", monkeypatch)
    reassigned = np.array([h["reassigned"][0] for h in result.history])
    assert reassigned[0] == 1.0  # the first assignment has no bounds yet
    # Once the clusters have formed, nearly every row keeps its centroid provably.
    assert reassigned[-1] < 0.2, reassigned.tolist()


def test_cpu_pruning_reports_reassigned(monkeypatch):
    monkeypatch.setattr(CpuBackend, "prune_min_work", 0)
    monkeypatch.setattr(CpuBackend, "prune_min_k", 2)
    x, init = blobs(1, 2000, 40, 8, 0.05, seed=2)
    result = dc_kernels.kmeans(x, 40, niter=5, init_centroids=init, backend="cpu", seed=1)
    skipped = torch.stack(get_backend("cpu", torch.device("cpu")).last_skipped)[:, 0]
    np.testing.assert_array_equal([h["reassigned"][0] for h in result.history],
                                  ((2000 - skipped).double() / 2000).numpy())


def test_pruning_is_off_by_default_and_thresholds_apply_when_set(monkeypatch):
    x, _ = blobs(1, 500, 40, 8, 0.3, seed=1)
    assert TritonBackend().pruner(x, 4000) is None  # off until measured on a GPU
    monkeypatch.setattr(TritonBackend, "prune_min_k", 2048)
    assert TritonBackend().pruner(x, 4000) is None  # too little work
    monkeypatch.setattr(TritonBackend, "prune_min_work", 0)
    assert TritonBackend().pruner(x, 1000) is None  # too few centroids
    assert TritonBackend().pruner(x, 4000) is not None


# ------------------------------------------------------------- the GPU build of the three modes
def epilogue_layouts() -> None:
    """Print, per precision, d and kernel mode, the register layout in which the sm_90 build
    of the assign kernel sums each row's squared differences (its last reduction)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    from dc_kernels.ops import assign as ops

    pointers = {"x_ptr": "*fp32", "c_ptr": "*fp32", "csq_ptr": "*fp32", "dist_ptr": "*fp32",
                "label_ptr": "*i64", "list_ptr": "*i64", "count_ptr": "*i64",
                "second_ptr": "*fp32", "xop_ptr": "*fp32", "cop_ptr": "*fp32"}
    for precision, code in (("fp32", 0), ("tf32", 1)):
        for d in (128, 256):
            for mode in (ops.SWEEP, ops.GATHER, ops.LABELLED):
                config = dict(ops.assign_configs(d, precision, False)[0])
                options = {"num_warps": config.pop("num_warps"),
                           "num_stages": config.pop("num_stages")}
                consts = {**config, "PRECISION": code, "EMULATE": False, "MODE": mode}
                fn = ops._assign_kernel
                signature = {a: "constexpr" if a in consts else pointers.get(a, "i32")
                             for a in fn.arg_names}
                attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]]
                         for a, t in signature.items()
                         if t.startswith("*") or a in ("D", "K") or a.startswith("stride")}
                ir = compile(ASTSource(fn=fn, signature=signature, constexprs=consts,
                                       attrs=attrs), target=GPUTarget("cuda", 90, 32),
                             options=options).asm["ttgir"]
                layouts = dict(re.findall(r"^(#\w+) = (.*)$", ir, re.M))
                operand = re.findall(r"\}\) : \(tensor<([^>]*)>\)", ir)[-1]
                name = operand.split(", ")[-1]
                print(precision, d, mode, operand, layouts.get(name, name))


def test_epilogue_sums_in_the_same_layout_in_every_mode():
    """On a GPU, a row's distance is bit for bit the same in the three modes only if they sum
    its squared differences in the same order, which the register layout of the reduction
    fixes: checked on the sm_90 build for fp32 and tf32 (16-bit modes may differ: _launch)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-c", "from tests.test_triton_pruning import "
                          "epilogue_layouts; epilogue_layouts()"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=300)
    lines = run.stdout.strip().splitlines()
    assert run.returncode == 0 and len(lines) == 12, run.stderr[-2000:]
    by_case: dict[tuple, set] = {}
    for line in lines:
        precision, d, _mode, layout = line.split(" ", 3)
        by_case.setdefault((precision, d), set()).add(layout)
    assert all(len(layouts) == 1 for layouts in by_case.values()), by_case
