"""k-means benchmark: every dc_kernels backend against the peers, same data, init and iterations.

For each shape (B x N x d, K) it runs every dc_kernels backend available on the device (and, on
a GPU, each of its precisions), a plain chunked torch loop written here (addmm + argmin +
index_add; fp32, plus tf32 on a GPU), and every installed peer: scikit-learn KMeans (lloyd) and
faiss-cpu on the CPU; flash-kmeans and fastkmeans on a GPU. One row per shape and provider:

  ms/iter     wall time of the whole run divided by its iterations (see each runner for what
              it includes): not a per-iteration median, which would hide that later iterations
              of a pruned loop (dc_kernels.cpu) cost less than the first ones
  TFLOP/s     2*B*N*d*K per iteration over ms/iter (effective: a pruned loop skips part of
              that work, so its %ceil can exceed 100)
  %ceil       that over a torch matmul of the same shape timed in the same run
  inertia     sum of squared distances to the nearest final centroid, one shared evaluation
  rel_inert   (inertia - float64 Lloyd's) / float64 Lloyd's, where that reference is affordable
  empty       clusters with no point under the final centroids

Data: K Gaussian centres + noise, both N(0, 1) (ANCHORS.md); init: K distinct random points,
the same for every provider. ``nan`` marks a provider that is not installed or failed (the
reason follows the row). Peers that converge early are timed over the iterations they ran.
Timings on a shared machine are noisy: compare rows of one run, and use ``--repeat``.

  python bench/kmeans_bench.py            # acceptance shape 100,000 x 256, K=1,000 + more
  python bench/kmeans_bench.py --quick    # < 2 min on 2 cores, includes the acceptance shape
  python bench/kmeans_bench.py --shapes 8x20000x64:100,50000x256:1000 --iters 5 --json out.json
"""

import argparse
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dc_kernels  # noqa: E402
from dc_kernels.backends import available_backends, get_backend  # noqa: E402
from dc_kernels.backends.reference import TorchBackend  # noqa: E402

QUICK_SHAPES = "100000x256:1000,20000x64:100,4x10000x32:64"
FULL_SHAPES = "100000x256:1000,20000x64:100,4x10000x32:64,200000x128:4000"
GPU_SHAPES = "1281167x256:10000,50000x256:1000,50000x256:100,32x131072x128:1024,8x131072x128:100"
SEED = 1234
# float64 Lloyd is run as the quality reference only below this many multiply-adds in total.
REFERENCE_BUDGET = {"cpu": 4e11, "cuda": 5e13}
CHUNK_ENTRIES = 1 << 24  # rows per chunk of the torch loop: chunk x K distances at most


@dataclass
class Shape:
    batch: int
    n: int
    d: int
    k: int

    @classmethod
    def parse(cls, text: str) -> "Shape":
        dims, k = text.split(":")
        parts = [int(p) for p in dims.lower().split("x")]
        if len(parts) == 2:
            parts = [1, *parts]
        if len(parts) != 3:
            raise ValueError(f"shape {text!r} is not [B x] N x d : K")
        return cls(parts[0], parts[1], parts[2], int(k))

    def __str__(self) -> str:
        lead = f"{self.batch}x" if self.batch > 1 else ""
        return f"{lead}{self.n}x{self.d}:{self.k}"

    @property
    def flops(self) -> float:
        return 2.0 * self.batch * self.n * self.d * self.k


@dataclass
class Row:
    shape: str
    provider: str
    precision: str
    ms_per_iter: float = math.nan
    tflops: float = math.nan
    pct_ceiling: float = math.nan
    inertia: float = math.nan
    rel_inertia: float = math.nan
    empty: float = math.nan
    note: str = ""


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_data(shape: Shape, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, d) points around K Gaussian centres with unit noise, and K distinct points as init."""
    gen = torch.Generator().manual_seed(SEED)
    xs, inits = [], []
    for _ in range(shape.batch):
        # Unit centres and unit noise: clusters overlap enough that Lloyd keeps moving for the
        # whole run (with well-separated blobs peers stop early and time fewer iterations).
        centres = torch.randn(shape.k, shape.d, generator=gen)
        owner = torch.randint(0, shape.k, (shape.n,), generator=gen)
        x = centres[owner] + torch.randn(shape.n, shape.d, generator=gen)
        xs.append(x)
        inits.append(x[torch.randperm(shape.n, generator=gen)[:shape.k]])
    return torch.stack(xs).to(device), torch.stack(inits).to(device)


def evaluate(x: torch.Tensor, centroids: torch.Tensor) -> tuple[float, int]:
    """Inertia (float64 sum of direct squared distances to the fp32-nearest centroid) and the
    number of empty clusters, computed the same way for every provider's final centroids."""
    centroids = centroids.to(device=x.device, dtype=torch.float32)
    total, empty = 0.0, 0
    for b in range(x.shape[0]):
        c = centroids[b]
        c_sq = (c * c).sum(1)
        rows = max(1, CHUNK_ENTRIES // c.shape[0])
        counts = torch.zeros(c.shape[0], dtype=torch.int64, device=x.device)
        for start in range(0, x.shape[1], rows):
            xs = x[b, start:start + rows]
            label = torch.addmm(c_sq, xs, c.T, alpha=-2.0).argmin(1)
            total += float(((xs.double() - c[label].double()) ** 2).sum())
            counts += torch.bincount(label, minlength=c.shape[0])
        empty += int((counts == 0).sum())
    return total, empty


def matmul_ceiling(shape: Shape, device: torch.device, precision: str) -> float:
    """TFLOP/s of one torch matmul (N x d) @ (d x K) in ``precision``: the best of a few runs,
    since a ceiling is what the hardware can do when nothing else gets in the way."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    rows = min(shape.n, max(4096, CHUNK_ENTRIES // shape.k))
    a = torch.randn(rows, shape.d, device=device, dtype=dtype)
    b = torch.randn(shape.d, shape.k, device=device, dtype=dtype)
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        times = []
        for _ in range(5):
            synchronize(device)
            t0 = time.perf_counter()
            a @ b
            synchronize(device)
            times.append(time.perf_counter() - t0)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return 2.0 * rows * shape.d * shape.k / min(times) / 1e12


# ---------------------------------------------------------------------------- runners
# Each runner takes (x (B,N,d), init (B,K,d), iters) and returns (per-iteration seconds, final
# centroids (B,K,d)).
Runner = Callable[[torch.Tensor, torch.Tensor, int], tuple[list[float], torch.Tensor]]


def run_dc_kernels(backend: str, precision: str) -> Runner:
    """dc_kernels.kmeans; per-iteration times come from its own history (the Lloyd loop only:
    assign, objective, update, split; not input checks or the final labelling)."""

    def run(x, init, iters):
        if x.device.type == "cuda":  # warm-up: kernel compilation, caching allocator
            dc_kernels.kmeans(x, init.shape[1], niter=1, init_centroids=init, backend=backend,
                              precision=precision)
        res = dc_kernels.kmeans(x, init.shape[1], niter=iters, init_centroids=init,
                                backend=backend, precision=precision)
        stamps = [0.0] + [h["time"] for h in res.history]
        return [b - a for a, b in zip(stamps, stamps[1:], strict=False)], res.centroids

    return run


def run_torch_loop(precision: str) -> Runner:
    """The plain chunked torch loop a user would write: addmm + argmin, index_add + bincount;
    empty clusters keep their centroid. Timed per iteration with a device sync."""

    def run(x, init, iters):
        saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        try:
            times, out = [0.0] * iters, []
            for b in range(x.shape[0]):
                xb, c = x[b], init[b].clone()
                k = c.shape[0]
                rows = max(1, CHUNK_ENTRIES // k)
                for it in range(iters + 1):  # the first iteration is a warm-up
                    synchronize(x.device)
                    t0 = time.perf_counter()
                    c_sq = (c * c).sum(1)
                    labels = torch.cat([torch.addmm(c_sq, xb[s:s + rows], c.T, alpha=-2.0).argmin(1)
                                        for s in range(0, xb.shape[0], rows)])
                    sums = torch.zeros_like(c).index_add_(0, labels, xb)
                    counts = torch.bincount(labels, minlength=k)
                    c = torch.where((counts > 0)[:, None], sums / counts.clamp_min(1)[:, None], c)
                    synchronize(x.device)
                    if it:
                        times[it - 1] += time.perf_counter() - t0
                    else:  # the warm-up's result is dropped: every provider runs iters steps
                        c = init[b].clone()
                out.append(c)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved
        return times, torch.stack(out)

    return run


def run_reference64(x: torch.Tensor, init: torch.Tensor, iters: int) -> torch.Tensor:
    """Exact Lloyd in float64 with the shared empty-cluster split: the quality reference."""
    ref = TorchBackend()
    x64, c = x.double(), init.double().clone()
    batch, _, d = x.shape
    k = c.shape[1]
    rows = max(1, CHUNK_ENTRIES // k)
    for it in range(iters):
        counts = torch.zeros(batch, k, dtype=torch.int64, device=x.device)
        for b in range(batch):
            c_sq = (c[b] * c[b]).sum(1)
            labels = torch.cat([torch.addmm(c_sq, x64[b, s:s + rows], c[b].T, alpha=-2.0).argmin(1)
                                for s in range(0, x.shape[1], rows)])
            sums = torch.zeros(k, d, dtype=torch.float64, device=x.device).index_add_(
                0, labels, x64[b])
            counts[b] = torch.bincount(labels, minlength=k)
            c[b] = torch.where((counts[b] > 0)[:, None], sums / counts[b].clamp_min(1)[:, None],
                               c[b])
        ref.split(c, counts, SEED, it)
    return c


def run_sklearn(x, init, iters):
    """scikit-learn KMeans(lloyd). Its fit also validates the input and labels the data once
    more at the end, so the time per iteration is (fit(iters) - fit(1)) / (iters - 1)."""
    from sklearn.cluster import KMeans

    def fit(xb, cb, n_iter):
        km = KMeans(cb.shape[0], init=cb, n_init=1, max_iter=n_iter, tol=0.0,
                    algorithm="lloyd", random_state=SEED)
        t0 = time.perf_counter()
        km.fit(xb)
        return time.perf_counter() - t0, km

    out, per_iter = [], 0.0
    for b in range(x.shape[0]):
        xb, cb = x[b].cpu().numpy(), init[b].cpu().numpy()
        t_full, km = fit(xb, cb, iters)
        if km.n_iter_ < iters:
            print(f"    scikit-learn stopped after {km.n_iter_} iterations (labels unchanged)")
        marginal = math.nan
        if km.n_iter_ > 1:
            marginal = (t_full - fit(xb, cb, 1)[0]) / (km.n_iter_ - 1)
        # Load bursts can make the difference meaningless; then charge the whole fit.
        per_iter += marginal if marginal > 0 else t_full / km.n_iter_
        out.append(torch.from_numpy(km.cluster_centers_.astype(np.float32)))
    return [per_iter], torch.stack(out)


def run_faiss(x, init, iters):
    """faiss.Kmeans with the same init; times from its per-iteration statistics."""
    import faiss

    out, times = [], None
    for b in range(x.shape[0]):
        xb, cb = x[b].cpu().numpy(), init[b].cpu().numpy()
        km = faiss.Kmeans(xb.shape[1], cb.shape[0], niter=iters, seed=SEED,
                          max_points_per_centroid=xb.shape[0], min_points_per_centroid=1)
        km.train(xb, init_centroids=cb)
        stamps = [0.0] + [s["time"] for s in km.iteration_stats]
        per = [t1 - t0 for t0, t1 in zip(stamps, stamps[1:], strict=False)]
        times = per if times is None else [a + p for a, p in zip(times, per, strict=False)]
        out.append(torch.from_numpy(km.centroids.copy()))
    return times, torch.stack(out)


# ---- GPU peers. Their APIs move between releases: adjust these two calls on the GPU machine.
def run_flash_kmeans(dtype: torch.dtype) -> Runner:
    """flash-kmeans batch_kmeans_Euclid(x, n_clusters, max_iters, tol, init_centroids);
    the whole call over iters, timed with a sync, after a one-iteration warm-up."""

    def run(x, init, iters):
        from flash_kmeans import batch_kmeans_Euclid

        xd, cd = x.to(dtype).contiguous(), init.to(dtype).contiguous()
        batch_kmeans_Euclid(xd, init.shape[1], max_iters=1, tol=0.0, init_centroids=cd.clone())
        synchronize(x.device)
        t0 = time.perf_counter()
        _, centroids, _ = batch_kmeans_Euclid(xd, init.shape[1], max_iters=iters, tol=0.0,
                                              init_centroids=cd.clone())
        synchronize(x.device)
        return [(time.perf_counter() - t0) / iters], centroids.float()

    return run


def run_fastkmeans(x, init, iters):
    """fastkmeans FastKMeans(d, k, niter).train(numpy): it draws its own init (no init argument),
    so its inertia is not from the same start; whole call timed, per iteration."""
    from fastkmeans import FastKMeans

    out, total = [], 0.0
    for b in range(x.shape[0]):
        xb = x[b].float().cpu().numpy()
        km = FastKMeans(xb.shape[1], init.shape[1], niter=iters, tol=-1.0, device="cuda",
                        seed=SEED, max_points_per_centroid=None, verbose=False)
        t0 = time.perf_counter()
        km.train(xb)
        total += time.perf_counter() - t0
        out.append(torch.as_tensor(km.centroids, dtype=torch.float32))
    return [total / iters], torch.stack(out)


def providers(device: torch.device) -> list[tuple[str, str, Runner]]:
    """(provider, precision, runner) for every candidate on ``device``; absent ones fail later."""
    table = available_backends()
    rows = []
    for name, info in table.items():
        if device.type not in info["devices"]:
            continue
        impl = get_backend(name, device)
        wanted = impl.precisions if device.type == "cuda" else ("fp32",)
        rows += [(f"dc_kernels.{name}", p, run_dc_kernels(name, p))
                 for p in wanted if p in impl.precisions]
    rows.append(("torch-loop", "fp32", run_torch_loop("fp32")))
    if device.type == "cuda":
        rows.append(("torch-loop", "tf32", run_torch_loop("tf32")))
        rows.append(("flash-kmeans", "fp32", run_flash_kmeans(torch.float32)))
        rows.append(("flash-kmeans", "fp16", run_flash_kmeans(torch.float16)))
        rows.append(("fastkmeans", "fp32", run_fastkmeans))
    else:
        rows.append(("scikit-learn", "fp32", run_sklearn))
        rows.append(("faiss-cpu", "fp32", run_faiss))
    return rows


def skipped_backends(device: torch.device) -> list[tuple[str, str]]:
    return [(name, info["reason"]) for name, info in available_backends().items()
            if device.type not in info["devices"]]


def bench_shape(shape: Shape, iters: int, device: torch.device, repeat: int,
                skip: tuple[str, ...] = (),
                on_row: Callable[[Row], None] = lambda row: None) -> list[Row]:
    """Run every provider ``repeat`` times (round robin, so that a burst of load on a shared
    machine hits them alike) and keep each provider's fastest run.

    Each row is evaluated, printed and handed to ``on_row`` as soon as it is final, so that a
    run stopped by a time limit keeps what it measured; a peer that trips a device-side assert
    poisons the CUDA context, and then the providers still to run are marked, not lost."""
    x, init = make_data(shape, device)
    reference = None
    if shape.flops / 2 * iters <= REFERENCE_BUDGET[device.type]:
        reference, _ = evaluate(x, run_reference64(x, init, iters))
    candidates = [c for c in providers(device) if c[0] not in skip]
    ceilings = {p: matmul_ceiling(shape, device, p)
                for p in dict.fromkeys(p for _, p, _ in candidates)}
    rows = {(provider, precision): Row(str(shape), provider, precision)
            for provider, precision, _ in candidates}
    done: set[tuple[str, str]] = set()

    def finish(key: tuple[str, str]) -> None:
        row = rows[key]
        if not math.isnan(row.ms_per_iter):
            row.tflops = shape.flops / row.ms_per_iter / 1e9
            row.pct_ceiling = 100.0 * row.tflops / ceilings[row.precision]
            if reference is not None:
                row.rel_inertia = (row.inertia - reference) / reference
        done.add(key)
        print_row(row)
        on_row(row)

    context_lost = ""
    for round_ in range(repeat):
        for provider, precision, runner in candidates:
            key = (provider, precision)
            row = rows[key]
            if key in done:
                continue
            if context_lost:
                row.note = context_lost
                finish(key)
                continue
            try:
                times, centroids = runner(x, init, iters)
                seconds = sum(times) / len(times)  # whole run / iterations (module docstring)
                if math.isnan(row.ms_per_iter) or seconds * 1e3 < row.ms_per_iter:
                    row.inertia, row.empty = evaluate(x, centroids)
                    row.ms_per_iter = seconds * 1e3
            except Exception as exc:  # a peer that is absent or fails must not stop the table
                row.note = f"{type(exc).__name__}: {exc}".splitlines()[0][:120]
                if not isinstance(exc, ImportError):
                    traceback.print_exc(limit=2)
                if "device-side assert" in str(exc) or "illegal memory access" in str(exc):
                    context_lost = f"not run: CUDA context lost to {provider}"
            if row.note or round_ == repeat - 1:
                finish(key)
    return [rows[key] for key in rows]


HEADER = (f"{'shape':<22} {'provider':<20} {'prec':<5} {'ms/iter':>9} {'TFLOP/s':>8} "
          f"{'%ceil':>6} {'inertia':>14} {'rel_inert':>10} {'empty':>6}")


def print_row(row: Row) -> None:
    print(f"{row.shape:<22} {row.provider:<20} {row.precision:<5} {row.ms_per_iter:>9.2f} "
          f"{row.tflops:>8.3f} {row.pct_ceiling:>6.1f} {row.inertia:>14.6g} "
          f"{row.rel_inertia:>10.2e} {row.empty:>6.0f}" + (f"  ({row.note})" if row.note else ""),
          flush=True)


def summary(rows: list[Row]) -> None:
    """The CPU acceptance ratios (issue 2) for every shape where the cpu backend ran."""
    for shape in dict.fromkeys(r.shape for r in rows):
        mine = {r.provider: r for r in rows if r.shape == shape and r.precision == "fp32"}
        ours = mine.get("dc_kernels.cpu")
        if ours is None or math.isnan(ours.ms_per_iter):
            continue
        parts = []
        for peer, bar in (("torch-loop", 1.0), ("faiss-cpu", 0.35), ("scikit-learn", 0.7)):
            other = mine.get(peer)
            ratio = ours.ms_per_iter / other.ms_per_iter if other else math.nan
            ok = "ok" if ratio <= bar else "MISSED"
            parts.append(f"{ratio:.2f}x {peer} (bar {bar}: {ok})")
        rel = ours.rel_inertia
        parts.append(f"inertia {rel:+.1e} vs float64 (bar 1e-3: "
                     f"{'ok' if abs(rel) <= 1e-3 else 'MISSED'})")
        print(f"{shape}: dc_kernels.cpu = " + ", ".join(parts))


def load() -> str:
    """The 1-minute load average: on a shared machine it says how far to trust the timings."""
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shapes that finish in < 2 min "
                        "on 2 CPU cores (the acceptance shape included)")
    parser.add_argument("--shapes", help="comma-separated [B x] N x d : K, e.g. 100000x256:1000")
    parser.add_argument("--iters", type=int, default=10, help="Lloyd iterations (default 10)")
    parser.add_argument("--repeat", type=int, default=1, help="run every provider this many "
                        "times and keep its fastest (for a noisy shared machine)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--skip", nargs="*", default=[], metavar="PROVIDER",
                        help="providers to leave out, e.g. dc_kernels.torch fastkmeans")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.shapes:
        spec = args.shapes
    elif device.type == "cuda":
        spec = GPU_SHAPES
    else:
        spec = QUICK_SHAPES if args.quick else FULL_SHAPES
    shapes = [Shape.parse(s) for s in spec.split(",") if s]
    print(f"device={device} threads={torch.get_num_threads()} iters={args.iters} "
          f"repeat={args.repeat} torch={torch.__version__} load={load()}")
    print("ms/iter = whole run / iterations (fastest of the repeats)")
    for name, why in skipped_backends(device):
        print(f"  (dc_kernels.{name} not run: {why})")
    print(HEADER)
    rows: list[Row] = []

    def keep(row: Row) -> None:  # the JSON is rewritten per row: a killed run keeps its rows
        rows.append(row)
        if args.json:
            args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))

    for shape in shapes:
        bench_shape(shape, args.iters, device, args.repeat, tuple(args.skip), keep)
    summary(rows)
    print(f"load average at the end: {load()}")
    if args.json:
        print(f"wrote {len(rows)} rows to {args.json}")


if __name__ == "__main__":
    main()
