"""PCA-whitening: dc_kernels backends against the plain torch pipeline, same data.

The torch pipeline is what a user writes (ANCHORS.md): mean, X^T X in fp32 (and TF32 on a GPU)
minus the mean's outer product, a float64 eigh of the d x d matrix, and an apply that is one
addmm ((X @ P) - mean @ P) followed by a row L2-normalisation. Each dc_kernels backend runs
``PCAWhitening(d_in, d_out, backend=...).train(x)`` and ``.apply(x)``. One row per provider:
ms = fit + apply (medians of each, timed apart), TFLOP/s = 2 N d_in^2 (the covariance as a full
product) + 2 N d_in d_out (the apply) over that, %ceil against a torch matmul of the
covariance's shape (d_in x rows @ rows x d_in) in the row's precision; then

  fit_ms    mean + covariance + top eigenpairs (+ the whitening matrix for dc_kernels)
  apply_ms  centre, project, whiten, L2-normalise over all rows
  eig_err   max relative error of the d_out eigenvalues against a float64 eigh of the
            float64 covariance (skipped with --no-reference)
  out_err   max abs difference of the applied rows from the first provider's, each component's
            sign matched to theirs (eigenvectors have no sign)

  python -m bench.pca_bench                     # 1,281,167 x 4096 -> 256 (on a GPU)
  python -m bench.pca_bench --quick             # 8,000 x 128 -> 16, seconds on a CPU
"""

import argparse
import math

import torch

import dc_kernels
from dc_kernels.backends import available_backends

from .harness import Bench, Column, Measured, Provider, add_arguments

SEED = 1234
CEILING_ROWS = 65536  # rows of the ceiling's product: enough to fill the device
COLUMNS = (Column("fit_ms", "9.1f"), Column("apply_ms", "9.1f"), Column("eig_err", "9.1e"),
           Column("out_err", "9.1e"))


class Data:
    """Rows with a non-zero mean and variances decaying over four decades (a spread spectrum,
    like convnet features), generated on the device in place to stay within memory; the
    float64 reference eigenvalues; the first provider's output, once measured."""

    def __init__(self, n: int, d_in: int, d_out: int, device: torch.device, reference: bool):
        gen = torch.Generator(device=device).manual_seed(SEED)
        self.x = torch.randn(n, d_in, device=device, generator=gen)
        self.x.mul_(torch.logspace(0, -2, d_in, device=device))
        self.x.add_(torch.randn(d_in, device=device, generator=gen))
        self.d_out = d_out
        self.eigenvalues = reference_eigenvalues(self.x, d_out) if reference else None
        self.baseline: torch.Tensor | None = None


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


class TorchPipeline:
    """fit() -> (mean, proj, eigenvalues); apply(state) -> whitened, L2-normalised rows."""

    def __init__(self, x: torch.Tensor, d_out: int, tf32: bool):
        self.x, self.d_out, self.tf32 = x, d_out, tf32

    def _matmul_mode(self) -> bool:
        saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.tf32
        return saved

    def fit(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, saved = self.x, self._matmul_mode()
        try:
            mean = x.mean(0)
            cov = (x.T @ x) / x.shape[0] - torch.outer(mean, mean)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved
        values, vectors = torch.linalg.eigh(cov.double())
        values, vectors = values.flip(0)[:self.d_out], vectors.flip(1)[:, :self.d_out]
        # dc_kernels' sign convention (largest component positive), so outputs compare.
        pivot = vectors.abs().argmax(0)
        vectors = vectors * vectors[pivot, torch.arange(self.d_out, device=x.device)].sign()
        proj = (vectors * values.clamp_min(1e-12).pow(-0.5)).float()
        return mean, proj, values

    def apply(self, state: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        mean, proj, _ = state
        saved = self._matmul_mode()
        try:
            y = torch.addmm(-(mean @ proj), self.x, proj)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved
        return y.div_(y.norm(dim=1, keepdim=True).clamp_min(1e-12))


class DcKernelsPipeline:
    """dc_kernels.PCAWhitening on one backend, with the same fit / apply / state shape."""

    def __init__(self, x: torch.Tensor, d_out: int, backend: str):
        self.x, self.d_out, self.backend = x, d_out, backend

    def fit(self) -> dc_kernels.PCAWhitening:
        return dc_kernels.PCAWhitening(self.x.shape[1], self.d_out,
                                       backend=self.backend).train(self.x)

    def apply(self, state: dc_kernels.PCAWhitening) -> torch.Tensor:
        return state.apply(self.x)


def providers(device: torch.device) -> list[Provider]:
    rows = [Provider("torch-pipeline", "fp32", lambda x, d: TorchPipeline(x, d, tf32=False))]
    if device.type == "cuda":
        rows.append(Provider("torch-pipeline", "tf32", lambda x, d: TorchPipeline(x, d, True)))
    for name, info in available_backends().items():
        if device.type not in info["devices"]:
            rows.append(Provider(f"dc_kernels.{name}", "fp32", absent=info["reason"]))
        else:
            rows.append(Provider(f"dc_kernels.{name}", "fp32",
                                 lambda x, d, name=name: DcKernelsPipeline(x, d, name)))
    return rows


def measure(bench: Bench, provider: Provider, data: Data) -> Measured:
    pipeline = provider.run(data.x, data.d_out)
    state = pipeline.fit()  # the state that the apply timings use, and the outputs compared
    fit = bench.time(pipeline.fit)
    apply = bench.time(lambda: pipeline.apply(state))
    out = pipeline.apply(state)
    values = state[2] if isinstance(state, tuple) else state.eigenvalues
    eig_err = math.nan
    if data.eigenvalues is not None:
        reference = data.eigenvalues
        eig_err = float(((values.to(reference) - reference).abs() / reference.abs()).max())
    if data.baseline is None:
        data.baseline = out
    out = out.to(data.baseline)
    # An eigenvector's sign is arbitrary: match each component's sign to the first provider's.
    out = out * torch.where((out * data.baseline).sum(0) < 0, -1.0, 1.0).to(out)
    out_err = float((out - data.baseline).abs().max())
    return Measured(fit + apply, {"fit_ms": fit.median, "apply_ms": apply.median,
                                  "eig_err": eig_err, "out_err": out_err})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_281_167)
    parser.add_argument("--d-in", type=int, default=4096)
    parser.add_argument("--d-out", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="8,000 x 128 -> 16")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the float64 eigenvalue reference")
    add_arguments(parser, repeat=3, warmup=1)
    args = parser.parse_args()
    n, d_in, d_out = (8_000, 128, 16) if args.quick else (args.n, args.d_in, args.d_out)
    bench = Bench(args, "ms", COLUMNS)
    bench.print_header(n=n, d_in=d_in, d_out=d_out)
    bench.run(f"{n}x{d_in}->{d_out}", providers(bench.device),
              setup=lambda: Data(n, d_in, d_out, bench.device, not args.no_reference),
              measure_one=lambda p, data: measure(bench, p, data),
              flops=2.0 * n * d_in * (d_in + d_out),
              ceiling=lambda prec: bench.ceiling(1, d_in, min(n, CEILING_ROWS), d_in, prec))
    bench.finish()


if __name__ == "__main__":
    main()
