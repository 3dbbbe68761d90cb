"""k-means: every dc_kernels backend against the peers, same data, init and iterations.

Providers, for each shape (B x N x d : K): every dc_kernels backend that runs on the device
(each of its precisions on a GPU; the Triton interpreter on a CPU only for tiny shapes), and on
a GPU triton-pruned / triton-unpruned (fp32, fp16: the triton backend with its bound-based
pruning forced on / off, whatever its work threshold picks for dc_kernels.triton); the
plain chunked torch loop a user would write (addmm + argmin + index_add; fp32, and tf32 on a
GPU); fast-pytorch-kmeans; on a CPU scikit-learn KMeans (lloyd) and faiss-cpu; on a GPU
flash-kmeans and fastkmeans. A peer that is not installed reads ``nan``.

One call = ``--iters`` Lloyd iterations from the shared init, as the provider's user calls it
(dc_kernels: ``Kmeans.train`` on every point, without early stop); ms/iter = the call's time
over the iterations it ran (the whole run, so a pruned loop's cheaper later iterations count
as they are). scikit-learn's fit labels the data once more after its last iteration: that
assignment is counted as one more iteration (it costs a little less than one). flash-kmeans
and scikit-learn may stop early: they are timed over the iterations they ran. fastkmeans draws
its own init.

Columns after the harness's: inertia (float64 sum of squared distances to the nearest final
centroid, one shared evaluation), rel_inert (against float64 Lloyd from the same init with the
shared split, where affordable), empty (clusters with no point at exit). Data: K Gaussian
centres + unit noise (dc_kernels.testing.blobs, spread 1: Lloyd keeps moving), init K distinct
points (dc_kernels.testing.random_rows).

  python -m bench.kmeans_bench --quick                 # small shapes, seconds on 2 cores
  python -m bench.kmeans_bench --shapes 100000x256:1000 --iters 10 --json out.json
"""

import argparse
import math

import numpy as np
import torch

import dc_kernels
from dc_kernels.backends import available_backends, get_backend
from dc_kernels.testing import blobs, random_rows

from .harness import Bench, Column, Measured, Provider, Row, Shape, add_arguments

QUICK_SHAPES = "20000x64:100,4x5000x32:64"
CPU_SHAPES = "100000x256:1000,20000x64:100,4x10000x32:64"
GPU_SHAPES = "1281167x256:10000,50000x256:1000,50000x256:100,32x131072x128:1024,8x131072x128:100"
SEED = 1234
# float64 Lloyd is run as the quality reference only below this many multiply-adds in total.
REFERENCE_BUDGET = {"cpu": 4e11, "cuda": 5e13}
# Multiply-adds up to which the Triton interpreter (CPU) is worth running at all.
INTERPRETER_BUDGET = 2e8
CHUNK_ENTRIES = 1 << 24  # rows per chunk of a torch loop: chunk x K distances at most
COLUMNS = (Column("inertia", "14.6g"), Column("rel_inert", "10.2e"), Column("empty", "6.0f"))


class Data:
    """A shape's points (B, N, d) and init (B, K, d) on the device, and the quality reference."""

    def __init__(self, shape: Shape, device: torch.device, iters: int, reference: bool = True):
        x = blobs(shape.n, shape.d, shape.k, seed=SEED, spread=1.0, batch=shape.batch)
        self.init = random_rows(x, shape.k, seed=SEED).to(device)
        self.x = x.to(device)
        self.iters = iters
        self.reference = math.nan
        if reference and shape.assign_flops / 2 * iters <= REFERENCE_BUDGET[device.type]:
            self.reference = evaluate(self.x, lloyd64(self.x, self.init, iters))[0]


def ceiling(bench: Bench, shape: Shape, precision: str) -> float:
    """The matmul ceiling of a shape: B problems' (rows x d) @ (d x K), rows a chunk of the
    torch loop's size (the whole N x K would not fit at K = 100,000)."""
    rows = min(shape.n, max(4096, CHUNK_ENTRIES // shape.k))
    return bench.ceiling(shape.batch, rows, shape.d, shape.k, precision)


def chunked_labels(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Nearest centroid of each row of x (N, d) by addmm + argmin, CHUNK_ENTRIES at a time."""
    c_sq = (c * c).sum(1)
    rows = max(1, CHUNK_ENTRIES // c.shape[0])
    return torch.cat([torch.addmm(c_sq, x[s:s + rows], c.T, alpha=-2.0).argmin(1)
                      for s in range(0, x.shape[0], rows)])


def evaluate(x: torch.Tensor, centroids: torch.Tensor) -> tuple[float, int]:
    """Inertia (float64 sum of direct squared distances to the fp32-nearest centroid) and the
    number of empty clusters, computed the same way for every provider's final centroids."""
    centroids = centroids.to(device=x.device, dtype=torch.float32).reshape(
        x.shape[0], -1, x.shape[2])
    total, empty = 0.0, 0
    for xb, c in zip(x, centroids, strict=True):
        labels = chunked_labels(xb, c)
        total += float(((xb.double() - c[labels].double()) ** 2).sum())
        empty += int((torch.bincount(labels, minlength=c.shape[0]) == 0).sum())
    return total, empty


def lloyd64(x: torch.Tensor, init: torch.Tensor, iters: int) -> torch.Tensor:
    """Exact Lloyd in float64 with the shared empty-cluster split: the quality reference."""
    split = get_backend("torch", x.device).split
    x64, c = x.double(), init.double().clone()
    counts = torch.zeros(c.shape[:2], dtype=torch.int64, device=x.device)
    for it in range(iters):
        for b in range(x.shape[0]):
            labels = chunked_labels(x64[b], c[b])
            sums = torch.zeros_like(c[b]).index_add_(0, labels, x64[b])
            counts[b] = torch.bincount(labels, minlength=c.shape[1])
            c[b] = torch.where((counts[b] > 0)[:, None],
                               sums / counts[b].clamp_min(1)[:, None], c[b])
        split(c, counts, SEED, it)
    return c


# ---------------------------------------------------------------------------- providers
# A provider's ``run`` is make(x (B, N, d), init (B, K, d), iters), which imports its package
# and converts the inputs outside the timed calls, and returns the call to time: call() ->
# (final centroids, iterations to divide its time by).

def run_dc_kernels(backend: str, precision: str):
    def make(x, init, iters):
        def call():
            km = dc_kernels.Kmeans(x.shape[2], init.shape[1], niter=iters, seed=SEED,
                                   backend=backend, precision=precision,
                                   max_points_per_centroid=None, min_points_per_centroid=None,
                                   early_stop_threshold=None)  # every point, every iteration
            km.train(x, init_centroids=init)
            return km.centroids, iters

        return call

    return make


def run_triton_pruning(precision: str, pruned: bool):
    """dc_kernels.triton with its pruned assignment forced on (any size) or off, whatever its
    work threshold says: the side-by-side measure of what pruning saves at each shape."""
    from dc_kernels.backends.triton import TritonBackend

    def make(x, init, iters):
        inner = run_dc_kernels("triton", precision)(x, init, iters)

        def call():
            saved = TritonBackend.prune_min_work, TritonBackend.prune_min_k
            TritonBackend.prune_min_work, TritonBackend.prune_min_k = (
                (0, 0) if pruned else (math.inf, math.inf))
            try:
                return inner()
            finally:
                TritonBackend.prune_min_work, TritonBackend.prune_min_k = saved

        return call

    return make


def run_torch_loop(precision: str):
    """addmm + argmin, index_add + bincount; empty clusters keep their centroid."""

    def make(x, init, iters):
        def call():
            saved = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
            try:
                out = []
                for xb, c in zip(x, init, strict=True):
                    for _ in range(iters):
                        labels = chunked_labels(xb, c)
                        sums = torch.zeros_like(c).index_add_(0, labels, xb)
                        counts = torch.bincount(labels, minlength=c.shape[0])
                        c = torch.where((counts > 0)[:, None],
                                        sums / counts.clamp_min(1)[:, None], c)
                    out.append(c)
            finally:
                torch.backends.cuda.matmul.allow_tf32 = saved
            return torch.stack(out), iters

        return call

    return make


def run_sklearn(x, init, iters):
    from sklearn.cluster import KMeans

    xs, inits = x.cpu().numpy(), init.cpu().numpy()

    def call():
        out, ran = [], 0
        for xb, cb in zip(xs, inits, strict=True):
            km = KMeans(cb.shape[0], init=cb, n_init=1, max_iter=iters, tol=0.0,
                        algorithm="lloyd", random_state=SEED).fit(xb)
            out.append(torch.from_numpy(km.cluster_centers_.astype(np.float32)))
            ran += km.n_iter_ + 1  # + its final labelling (module docstring)
        return torch.stack(out), ran / len(xs)

    return call


def run_faiss(x, init, iters):
    import faiss

    xs, inits = x.cpu().numpy(), init.cpu().numpy()

    def call():
        out = []
        for xb, cb in zip(xs, inits, strict=True):
            km = faiss.Kmeans(xb.shape[1], cb.shape[0], niter=iters, seed=SEED,
                              max_points_per_centroid=xb.shape[0], min_points_per_centroid=1)
            km.train(xb, init_centroids=cb)
            out.append(torch.from_numpy(km.centroids.copy()))
        return torch.stack(out), iters

    return call


def run_fast_pytorch_kmeans(x, init, iters):
    from fast_pytorch_kmeans import KMeans

    def call():
        out = []
        for xb, cb in zip(x, init, strict=True):
            km = KMeans(cb.shape[0], max_iter=iters, tol=-1.0)  # tol < 0: never stops early
            km.fit_predict(xb, centroids=cb.clone())
            out.append(km.centroids.float())
        return torch.stack(out), iters

    return call


# GPU peers. Their APIs move between releases: adjust these calls on the GPU machine.
def run_flash_kmeans(dtype: torch.dtype):
    """batch_kmeans_Euclid(x, n_clusters, max_iters, tol, init_centroids): batched natively;
    the data is cast to ``dtype`` once, outside the timed calls."""

    def make(x, init, iters):
        from flash_kmeans import batch_kmeans_Euclid

        xd, cd = x.to(dtype).contiguous(), init.to(dtype).contiguous()

        def call():
            _, centroids, ran = batch_kmeans_Euclid(xd, init.shape[1], max_iters=iters, tol=0.0,
                                                    init_centroids=cd.clone())
            return centroids.float(), ran if isinstance(ran, int) and ran > 0 else iters

        return call

    return make


def run_fastkmeans(x, init, iters):
    """FastKMeans(d, k, niter).train(numpy): no init argument, so it starts elsewhere."""
    from fastkmeans import FastKMeans

    xs = x.float().cpu().numpy()

    def call():
        out = []
        for xb in xs:
            km = FastKMeans(xb.shape[1], init.shape[1], niter=iters, tol=-1.0, device="cuda",
                            seed=SEED, max_points_per_centroid=None, verbose=False)
            km.train(xb)
            out.append(torch.as_tensor(km.centroids, dtype=torch.float32))
        return torch.stack(out), iters

    return call


def providers(device: torch.device, shape: Shape) -> list[Provider]:
    """Every candidate on ``device``, dc_kernels backends first; absent peers read nan."""
    rows = []
    for name, info in available_backends().items():
        if device.type not in info["devices"]:
            rows.append(Provider(f"dc_kernels.{name}", "fp32", absent=info["reason"]))
            continue
        if device.type == "cpu" and name == "triton" \
                and shape.assign_flops / 2 > INTERPRETER_BUDGET:
            rows.append(Provider("dc_kernels.triton", "fp32",
                                 absent="not run: the Triton interpreter is for tiny shapes"))
            continue
        precisions = get_backend(name, device).precisions if device.type == "cuda" else ("fp32",)
        rows += [Provider(f"dc_kernels.{name}", p, run_dc_kernels(name, p)) for p in precisions]
        if name == "triton" and device.type == "cuda":
            rows += [Provider(f"triton-{kind}", p, run_triton_pruning(p, kind == "pruned"))
                     for kind in ("pruned", "unpruned") for p in ("fp32", "fp16")]
    rows.append(Provider("torch-loop", "fp32", run_torch_loop("fp32")))
    if device.type == "cuda":
        rows += [Provider("torch-loop", "tf32", run_torch_loop("tf32")),
                 Provider("flash-kmeans", "fp32", run_flash_kmeans(torch.float32)),
                 Provider("flash-kmeans", "fp16", run_flash_kmeans(torch.float16)),
                 Provider("fast-pytorch-kmeans", "fp32", run_fast_pytorch_kmeans),
                 Provider("fastkmeans", "fp32", run_fastkmeans)]
    else:
        rows += [Provider("scikit-learn", "fp32", run_sklearn),
                 Provider("faiss-cpu", "fp32", run_faiss),
                 Provider("fast-pytorch-kmeans", "fp32", run_fast_pytorch_kmeans)]
    return rows


def measure(bench: Bench, provider: Provider, data: Data) -> Measured:
    call, last = provider.run(data.x, data.init, data.iters), [None]

    def keep_last() -> None:  # do_bench may call hundreds of times: hold one result only
        last[0] = call()

    timing = bench.time(keep_last)
    centroids, ran = last[0]
    inertia, empty = evaluate(data.x, torch.as_tensor(centroids))
    note = f"timed over {ran:g} iterations" if ran != data.iters else ""
    return Measured(timing.per(ran), {"inertia": inertia, "empty": empty,
                                      "rel_inert": (inertia - data.reference) / data.reference},
                    note)


def summary(rows: list[Row]) -> None:
    """The CPU backend's ratios to the peers (ANCHORS.md bars), per shape where it ran."""
    for shape in dict.fromkeys(r.shape for r in rows):
        mine = {r.provider: r for r in rows if r.shape == shape and r.precision == "fp32"}
        ours = mine.get("dc_kernels.cpu")
        if ours is None or math.isnan(ours.ms):
            continue
        parts = []
        for peer, bar in (("torch-loop", 1.0), ("faiss-cpu", 0.35), ("scikit-learn", 0.7)):
            ratio = ours.ms / mine[peer].ms if peer in mine else math.nan
            verdict = "n/a" if math.isnan(ratio) else "ok" if ratio <= bar else "MISSED"
            parts.append(f"{ratio:.2f}x {peer} (bar {bar}: {verdict})")
        rel = ours.metrics.get("rel_inert", math.nan)
        verdict = "n/a" if math.isnan(rel) else "ok" if abs(rel) <= 1e-3 else "MISSED"
        parts.append(f"inertia {rel:+.1e} vs float64 Lloyd (bar 1e-3: {verdict})")
        print(f"{shape}: dc_kernels.cpu = " + ", ".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", help="comma-separated [B x] N x d : K (default: the "
                        "device's table)")
    parser.add_argument("--quick", action="store_true", help="small shapes only (CPU smoke run)")
    parser.add_argument("--iters", type=int, default=10, help="Lloyd iterations per call")
    add_arguments(parser, repeat=1, warmup=0)
    args = parser.parse_args()
    bench = Bench(args, "ms/iter", COLUMNS)
    default = GPU_SHAPES if bench.device.type == "cuda" else CPU_SHAPES
    spec = args.shapes or (QUICK_SHAPES if args.quick else default)
    shapes = [Shape.parse(s) for s in spec.split(",") if s]
    bench.print_header(iters=args.iters)
    for shape in shapes:
        bench.run(str(shape), providers(bench.device, shape),
                  setup=lambda shape=shape: Data(shape, bench.device, args.iters),
                  measure_one=lambda p, data: measure(bench, p, data),
                  flops=shape.assign_flops,
                  ceiling=lambda prec, s=shape: ceiling(bench, s, prec))
    summary(bench.rows)
    bench.finish()


if __name__ == "__main__":
    main()
