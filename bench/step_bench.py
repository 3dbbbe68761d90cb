"""Where a Lloyd iteration spends its time: assign, update and split timed one by one.

For each shape and each dc_kernels backend (and precision, on a GPU) the three steps run from
the state of a real first iteration (the k-means benchmark's data and init, labels from that
assign). One row per shape, backend and precision: ms = one whole iteration of
``dc_kernels.Kmeans.train`` (over ``--iters``), TFLOP/s = its 2 B N d K flops; then the
median of each step called alone and their sum (what the driver adds beyond the sum:
objective, statistics, launches).

  python -m bench.step_bench --quick
  python -m bench.step_bench --shapes 8x131072x128:100,32x131072x128:1024 --json steps.json
"""

import argparse

from dc_kernels.backends import get_backend

from .harness import Bench, Column, Measured, Provider, Shape, add_arguments
from .kmeans_bench import Data as KmeansData
from .kmeans_bench import ceiling, providers

QUICK_SHAPES = "2000x32:16,2x1000x16:8"
DEFAULT_SHAPES = "20000x64:100,4x10000x32:64"
COLUMNS = (Column("assign_ms", "9.3f"), Column("update_ms", "9.3f"), Column("split_ms", "9.3f"),
           Column("steps_ms", "9.3f"))


def measure(bench: Bench, provider: Provider, data: KmeansData) -> Measured:
    backend = get_backend(provider.name.removeprefix("dc_kernels."), bench.device)
    x, init, precision = data.x, data.init, provider.precision
    _, labels = backend.assign(x, init, precision)
    counts = backend.update(x, labels, init.clone())
    steps = {
        "assign_ms": bench.time(lambda: backend.assign(x, init, precision)),
        "update_ms": bench.time(lambda: backend.update(x, labels, init.clone())),
        "split_ms": bench.time(lambda: backend.split(init.clone(), counts.clone(), 0, 0)),
    }
    metrics = {key: timing.median for key, timing in steps.items()}
    metrics["steps_ms"] = sum(metrics.values())
    iteration = bench.time(provider.run(x, init, data.iters))
    return Measured(iteration.per(data.iters), metrics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated "
                        f"[B x] N x d : K (default {DEFAULT_SHAPES})")
    parser.add_argument("--quick", action="store_true", help=f"shapes {QUICK_SHAPES}")
    parser.add_argument("--iters", type=int, default=3,
                        help="Lloyd iterations of the whole-iteration call (default 3)")
    add_arguments(parser, repeat=5, warmup=1)
    args = parser.parse_args()
    bench = Bench(args, "iter_ms", COLUMNS)
    bench.print_header(iters=args.iters)
    for spec in (QUICK_SHAPES if args.quick else args.shapes).split(","):
        shape = Shape.parse(spec)
        # No float64 reference: this table has no quality column.
        ours = [p for p in providers(bench.device, shape) if p.name.startswith("dc_kernels.")]
        bench.run(str(shape), ours,
                  setup=lambda shape=shape: KmeansData(shape, bench.device, args.iters,
                                                       reference=False),
                  measure_one=lambda p, data: measure(bench, p, data),
                  flops=shape.assign_flops,
                  ceiling=lambda prec, s=shape: ceiling(bench, s, prec))
    bench.finish()


if __name__ == "__main__":
    main()
