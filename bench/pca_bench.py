"""PCA-whitening benchmark: dc_kernels backends against the plain torch pipeline, same data.

The torch pipeline is what a user writes (ANCHORS.md): mean, X^T X in fp32 (and TF32) minus the
mean's outer product, a float64 eigh of the d x d matrix, and an apply that is one addmm
((X @ P) - mean @ P) followed by a row L2-normalisation. Each dc_kernels backend runs
PCAWhitening(d_in, d_out).train(x) and .apply(x). Times are medians of ``--repeats`` runs after
one warm-up, with a device sync around each step. One row per provider and step:

  fit_ms    mean + covariance + top eigenpairs (+ the whitening matrix for dc_kernels)
  apply_ms  centre, project, whiten, L2-normalise over all rows
  total_ms  fit + apply
  eig_err   max relative error of the d_out eigenvalues against a float64 eigh of the
            float64 covariance (the quality reference; skipped with --no-reference)
  out_err   max abs difference of the applied rows from the torch pipeline's

  python bench/pca_bench.py                              # 1,281,167 x 4096 -> 256 on the GPU
  python bench/pca_bench.py --n 20000 --d-in 512 --d-out 64 --device cpu --backends torch,cpu
"""

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dc_kernels  # noqa: E402
from dc_kernels.backends import available_backends  # noqa: E402

SEED = 1234


@dataclass
class Row:
    provider: str
    fit_ms: float = float("nan")
    apply_ms: float = float("nan")
    total_ms: float = float("nan")
    eig_err: float = float("nan")
    out_err: float = float("nan")
    note: str = ""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return (time.perf_counter() - t0) * 1e3, out


def make_data(n: int, d: int, device: torch.device) -> torch.Tensor:
    """Rows with a non-zero mean and variances decaying over four decades (a spread spectrum,
    like convnet features), generated on the device in place to stay within memory."""
    gen = torch.Generator(device=device).manual_seed(SEED)
    x = torch.randn(n, d, device=device, generator=gen)
    scale = torch.logspace(0, -2, d, device=device)
    x.mul_(scale).add_(torch.randn(d, device=device, generator=gen))
    return x


def torch_pipeline(x: torch.Tensor, d_out: int, tf32: bool):
    """(fit, apply) callables of the plain torch pipeline."""

    def fit():
        saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            mean = x.mean(0)
            cov = (x.T @ x) / x.shape[0] - torch.outer(mean, mean)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved
        values, vectors = torch.linalg.eigh(cov.double())
        values, vectors = values.flip(0)[:d_out], vectors.flip(1)[:, :d_out]
        # dc_kernels' sign convention (largest component positive), so outputs compare.
        pivot = vectors.abs().argmax(0)
        vectors = vectors * vectors[pivot, torch.arange(d_out, device=x.device)].sign()
        proj = (vectors * values.clamp_min(1e-12).pow(-0.5)).float()
        return mean, proj, values

    def apply(state):
        mean, proj, _ = state
        saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            y = torch.addmm(-(mean @ proj), x, proj)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved
        return y.div_(y.norm(dim=1, keepdim=True).clamp_min(1e-12))

    return fit, apply


def reference_eigenvalues(x: torch.Tensor, d_out: int) -> torch.Tensor:
    """Top d_out eigenvalues of the float64 covariance, accumulated in row chunks."""
    d = x.shape[1]
    gram = torch.zeros(d, d, dtype=torch.float64, device=x.device)
    total = torch.zeros(d, dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], 65536):
        xs = x[start:start + 65536].double()
        total += xs.sum(0)
        gram.addmm_(xs.T, xs)
    mean = total / x.shape[0]
    cov = gram / x.shape[0] - torch.outer(mean, mean)
    return torch.linalg.eigvalsh(cov).flip(0)[:d_out]


def bench(x: torch.Tensor, d_out: int, backends: list[str], repeats: int,
          reference: torch.Tensor | None) -> list[Row]:
    device = x.device
    rows: list[Row] = []
    baseline_out = None
    providers: list[tuple[str, Callable, Callable]] = []
    for tf32 in ((False, True) if device.type == "cuda" else (False,)):
        fit, apply = torch_pipeline(x, d_out, tf32)
        providers.append((f"torch-pipeline-{'tf32' if tf32 else 'fp32'}", fit, apply))
    for name in backends:
        def fit(name=name):
            pca = dc_kernels.PCAWhitening(x.shape[1], d_out, backend=name).train(x)
            return pca

        providers.append((f"dc_kernels.{name}", fit, lambda pca: pca.apply(x)))
    for provider, fit, apply in providers:
        row = Row(provider)
        try:
            fits, applies = [], []
            for rep in range(repeats + 1):  # the first run warms up (compilation, allocator)
                fit_ms, state = timed(fit, device)
                apply_ms, out = timed(lambda state=state, apply=apply: apply(state), device)
                if rep:
                    fits.append(fit_ms)
                    applies.append(apply_ms)
        except Exception as exc:  # one failing provider must not stop the table
            row.note = f"{type(exc).__name__}: {exc}".splitlines()[0][:120]
            rows.append(row)
            print_row(row)
            continue
        row.fit_ms, row.apply_ms = statistics.median(fits), statistics.median(applies)
        row.total_ms = row.fit_ms + row.apply_ms
        values = state[2] if isinstance(state, tuple) else state.eigenvalues
        if reference is not None:
            row.eig_err = float(((values.to(reference) - reference).abs()
                                 / reference.abs()).max())
        if baseline_out is None:
            baseline_out = out
        row.out_err = float((out.to(baseline_out) - baseline_out).abs().max())
        del out
        rows.append(row)
        print_row(row)
    return rows


HEADER = (f"{'provider':<24} {'fit_ms':>9} {'apply_ms':>9} {'total_ms':>9} {'eig_err':>9} "
          f"{'out_err':>9}")


def print_row(row: Row) -> None:
    print(f"{row.provider:<24} {row.fit_ms:>9.1f} {row.apply_ms:>9.1f} {row.total_ms:>9.1f} "
          f"{row.eig_err:>9.1e} {row.out_err:>9.1e}" + (f"  ({row.note})" if row.note else ""),
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_281_167)
    parser.add_argument("--d-in", type=int, default=4096)
    parser.add_argument("--d-out", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backends", help="comma-separated dc_kernels backends (default: all "
                        "that run on the device)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the float64 eigenvalue reference")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.backends:
        backends = args.backends.split(",")
    else:
        backends = [name for name, info in available_backends().items()
                    if device.type in info["devices"]]
    print(f"device={device} n={args.n} d_in={args.d_in} d_out={args.d_out} "
          f"backends={backends} torch={torch.__version__}", flush=True)
    x = make_data(args.n, args.d_in, device)
    reference = None if args.no_reference else reference_eigenvalues(x, args.d_out)
    print(HEADER)
    rows = bench(x, args.d_out, backends, args.repeats, reference)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
        print(f"wrote {len(rows)} rows to {args.json}")


if __name__ == "__main__":
    main()
