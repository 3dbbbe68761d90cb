r"""Where a Lloyd iteration spends its time: assign, update and split timed one by one.

For each shape and each dc_kernels backend (and precision, on a GPU), the three steps run from
the same state as a real iteration (the benchmark's data and init, labels from that assign),
each timed over ``--repeat`` calls with a device sync around every call; one row per shape,
backend and precision with the median milliseconds of each step, their sum, and the
whole-iteration time of ``dc_kernels.kmeans`` for comparison (what the loop adds: objective,
statistics, launches). ``nan`` marks a backend that failed.

    python bench/step_bench.py --shapes 8x131072x128:100,32x131072x128:1024 --json steps.json
"""

import argparse
import json
import math
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kmeans_bench import Shape, make_data, synchronize  # noqa: E402

import dc_kernels  # noqa: E402
from dc_kernels.backends import available_backends, get_backend  # noqa: E402


@dataclass
class StepRow:
    shape: str
    backend: str
    precision: str
    assign_ms: float = math.nan
    update_ms: float = math.nan
    split_ms: float = math.nan
    steps_ms: float = math.nan
    iteration_ms: float = math.nan
    note: str = ""


def median_ms(call, device: torch.device, repeat: int) -> float:
    """Median wall time of ``call()`` in ms, synchronised before and after each call."""
    call()  # warm-up: compilation, caching allocator
    times = []
    for _ in range(repeat):
        synchronize(device)
        start = time.perf_counter()
        call()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def time_steps(shape: Shape, name: str, precision: str, device: torch.device,
               repeat: int) -> StepRow:
    row = StepRow(str(shape), name, precision)
    x, init = make_data(shape, device)
    backend = get_backend(name, device)
    _, labels = backend.assign(x, init, precision)
    row.assign_ms = median_ms(lambda: backend.assign(x, init, precision), device, repeat)
    row.update_ms = median_ms(lambda: backend.update(x, labels, init.clone()), device, repeat)
    counts = backend.update(x, labels, init.clone())
    row.split_ms = median_ms(lambda: backend.split(init.clone(), counts.clone(), 0, 0), device,
                             repeat)
    row.steps_ms = row.assign_ms + row.update_ms + row.split_ms
    iters = 5
    dc_kernels.kmeans(x, shape.k, niter=1, init_centroids=init, backend=name, precision=precision)
    res = dc_kernels.kmeans(x, shape.k, niter=iters, init_centroids=init, backend=name,
                            precision=precision)
    row.iteration_ms = res.history[-1]["time"] / iters * 1e3
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="20000x64:100,4x10000x32:64",
                        help="comma-separated [B x] N x d : K")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} "
          f"repeat={args.repeat} (ms: median of single calls)")
    print(f"{'shape':<22} {'backend':<8} {'prec':<5} {'assign':>9} {'update':>9} {'split':>9} "
          f"{'sum':>9} {'iteration':>10}")
    rows = []
    for spec in args.shapes.split(","):
        shape = Shape.parse(spec)
        for name, info in available_backends().items():
            if device.type not in info["devices"]:
                continue
            precisions = get_backend(name, device).precisions if device.type == "cuda" \
                else ("fp32",)
            for precision in precisions:
                try:
                    row = time_steps(shape, name, precision, device, args.repeat)
                except Exception as exc:  # one failing backend must not stop the table
                    traceback.print_exc(limit=2)
                    row = StepRow(str(shape), name, precision,
                                  note=f"{type(exc).__name__}: {exc}".splitlines()[0][:120])
                rows.append(row)
                print(f"{row.shape:<22} {row.backend:<8} {row.precision:<5} "
                      f"{row.assign_ms:>9.3f} {row.update_ms:>9.3f} {row.split_ms:>9.3f} "
                      f"{row.steps_ms:>9.3f} {row.iteration_ms:>10.3f}"
                      + (f"  ({row.note})" if row.note else ""), flush=True)
                if args.json:
                    args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))


if __name__ == "__main__":
    main()
