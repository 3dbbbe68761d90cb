"""The bench harness: one timer, one row per shape and provider, one JSON.

A script declares its shapes and providers and calls ``Bench.run`` once per shape with two
functions: ``setup()`` (the shape's data, built once) and ``measure(provider, data)`` (the
provider timed with ``Bench.time``, plus its quality metrics). The harness prints each row as
soon as it is final and rewrites the JSON after every row, so a run stopped from outside keeps
what it measured. A provider that is absent (ImportError) or fails gets a row of ``nan`` with
the reason; after a CUDA context is lost (a device-side assert poisons the process) and after
``--time-limit``, the providers still to run are marked, not dropped.

Timer: on a GPU ``triton.testing.do_bench`` (CUDA events, L2 flushed before each call, its own
warm-up; at least 8 calls, more while they fit in ``--rep-ms``); on a CPU ``--warmup`` untimed
calls, then ``--repeat`` calls timed with ``time.perf_counter``. Either way a row keeps the
median and the 20th and 80th percentiles in ms.
"""

import argparse
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import torch

QUANTILES = (0.2, 0.5, 0.8)
CONTEXT_LOST_MARKS = ("device-side assert", "illegal memory access")


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call: median and the 20th / 80th percentiles."""

    median: float
    low: float
    high: float

    def per(self, units: float) -> "Timing":
        """The same timing per unit of work (e.g. per Lloyd iteration of a whole run)."""
        return Timing(self.median / units, self.low / units, self.high / units)

    def __add__(self, other: "Timing") -> "Timing":
        return Timing(self.median + other.median, self.low + other.low, self.high + other.high)


def measure(fn: Callable[[], object], device: torch.device, repeat: int = 5, warmup: int = 1,
            rep_ms: float = 100.0) -> Timing:
    """Time ``fn()`` (see the module docstring): do_bench on a GPU, perf_counter on a CPU."""
    if device.type == "cuda":
        from triton.testing import do_bench

        with torch.cuda.device(device):
            low, median, high = do_bench(fn, warmup=1, rep=rep_ms, quantiles=list(QUANTILES))
        return Timing(median, low, high)
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    # torch.quantile interpolates linearly, as do_bench does.
    low, median, high = torch.tensor(times, dtype=torch.float64).quantile(
        torch.tensor(QUANTILES, dtype=torch.float64)).tolist()
    return Timing(median, low, high)


@dataclass(frozen=True)
class Shape:
    """A k-means problem: B independent problems of N points in d dimensions, K clusters."""

    batch: int
    n: int
    d: int
    k: int

    @classmethod
    def parse(cls, text: str) -> "Shape":
        """'[B x] N x d : K', e.g. '100000x256:1000' or '8x131072x128:100'."""
        try:
            dims, k = text.split(":")
            parts = [int(p) for p in dims.lower().split("x")]
            if len(parts) == 2:
                parts = [1, *parts]
            shape = cls(parts[0], parts[1], parts[2], int(k))
        except (ValueError, IndexError):
            raise ValueError(f"shape {text!r} is not [B x] N x d : K") from None
        if len(parts) != 3 or min(parts) < 1 or shape.k < 1:
            raise ValueError(f"shape {text!r} is not [B x] N x d : K with positive sizes")
        return shape

    def __str__(self) -> str:
        lead = f"{self.batch}x" if self.batch > 1 else ""
        return f"{lead}{self.n}x{self.d}:{self.k}"

    @property
    def assign_flops(self) -> float:
        """Multiply-adds of one exact assignment, counted as 2 flops: 2 B N d K."""
        return 2.0 * self.batch * self.n * self.d * self.k


@dataclass
class Provider:
    """One row of a shape: ``name`` at ``precision``; ``run`` is the script's own payload;
    ``absent`` says why it cannot run here (its row then reads nan with that reason)."""

    name: str
    precision: str
    run: Any = None
    absent: str = ""

    def matches(self, token: str) -> bool:
        """--skip tokens: a provider's name, or name:precision."""
        return token in (self.name, f"{self.name}:{self.precision}")


@dataclass
class Measured:
    """What a script's ``measure`` returns for one provider."""

    timing: Timing
    metrics: dict[str, float] = field(default_factory=dict)
    note: str = ""


@dataclass
class Row:
    """One shape and provider: ms (the script's unit, e.g. per Lloyd iteration), TFLOP/s of
    ``flops`` per unit, % of the matmul ceiling measured in the same run, script metrics."""

    shape: str
    provider: str
    precision: str
    ms: float = math.nan
    ms_low: float = math.nan
    ms_high: float = math.nan
    tflops: float = math.nan
    pct_ceiling: float = math.nan
    metrics: dict[str, float] = field(default_factory=dict)
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        """A flat dict; nan (absent) becomes null, so the file is strict JSON."""
        flat = {"shape": self.shape, "provider": self.provider, "precision": self.precision,
                "ms": self.ms, "ms_low": self.ms_low, "ms_high": self.ms_high,
                "tflops": self.tflops, "pct_ceiling": self.pct_ceiling, **self.metrics,
                "note": self.note}
        return {key: None if isinstance(value, float) and math.isnan(value) else value
                for key, value in flat.items()}


@dataclass(frozen=True)
class Column:
    """A script metric printed after the harness's columns: its key and a format spec."""

    key: str
    spec: str  # e.g. "14.6g": the width leads

    @property
    def width(self) -> int:
        return int(self.spec.split(".")[0])


def add_arguments(parser: argparse.ArgumentParser, repeat: int = 5, warmup: int = 1) -> None:
    """The options every script shares."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="write the rows here (rewritten per row)")
    parser.add_argument("--skip", nargs="*", default=[], metavar="PROVIDER[:PRECISION]",
                        help="providers to leave out, e.g. dc_kernels.torch fastkmeans "
                        "torch-loop:fp32")
    parser.add_argument("--repeat", type=int, default=repeat,
                        help=f"CPU: timed calls per provider, median kept (default {repeat})")
    parser.add_argument("--warmup", type=int, default=warmup,
                        help=f"CPU: untimed calls first (default {warmup})")
    parser.add_argument("--rep-ms", type=float, default=100.0,
                        help="GPU: do_bench's time for the timed calls (default 100)")
    parser.add_argument("--time-limit", type=float, default=0.0, metavar="SECONDS",
                        help="mark the providers not started by then as not run (0: none)")


def load_average() -> str:
    """The 1-minute load average: on a shared machine it says how far to trust the timings."""
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "?"


def environment(device: torch.device) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv, "device": str(device), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "load": load_average(),
    }
    if device.type == "cuda":
        meta["device_name"] = torch.cuda.get_device_name(device)
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        pass
    return meta


def matmul_ceiling(batch: int, rows: int, inner: int, cols: int, precision: str,
                   device: torch.device, timer: Callable[[Callable[[], object]], Timing]) -> float:
    """TFLOP/s of a torch matmul (batch, rows, inner) @ (batch, inner, cols) in ``precision``."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    a = torch.randn(batch, rows, inner, device=device).to(dtype)
    b = torch.randn(batch, inner, cols, device=device).to(dtype)
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        ms = timer(lambda: a @ b).median
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return 2.0 * batch * rows * inner * cols / ms / 1e9


class Bench:
    """One run of one script: the device, the timer settings, the rows and the JSON."""

    def __init__(self, args: argparse.Namespace, unit: str, columns: Sequence[Column] = ()):
        self.device = torch.device(args.device)
        self.json_path: Path | None = args.json
        self.skip = tuple(args.skip)
        self.repeat, self.warmup, self.rep_ms = args.repeat, args.warmup, args.rep_ms
        self.deadline = time.monotonic() + args.time_limit if args.time_limit > 0 else math.inf
        self.unit, self.columns = unit, tuple(columns)
        self.meta = environment(self.device)
        self.rows: list[Row] = []
        self.lost = ""  # why nothing more can run on the device, once a provider broke it
        self._ceilings: dict[tuple[int, int, int, int, str], float] = {}

    def time(self, fn: Callable[[], object]) -> Timing:
        return measure(fn, self.device, self.repeat, self.warmup, self.rep_ms)

    def ceiling(self, batch: int, rows: int, inner: int, cols: int, precision: str) -> float:
        """The matmul ceiling at that shape, measured once per run (on a CPU from at least one
        warm-up and five timed calls, whatever the providers' settings: it is cheap)."""
        key = (batch, rows, inner, cols, precision)
        if key not in self._ceilings:
            timer = partial(measure, device=self.device, repeat=max(5, self.repeat),
                            warmup=max(1, self.warmup), rep_ms=self.rep_ms)
            self._ceilings[key] = matmul_ceiling(*key, self.device, timer)
        return self._ceilings[key]

    def stop_reason(self) -> str:
        if self.lost:
            return self.lost
        if time.monotonic() > self.deadline:
            return "not run: time limit"
        return ""

    def print_header(self, **settings: Any) -> None:
        self.meta.update(settings)
        print(" ".join(f"{key}={value}" for key, value in self.meta.items() if key != "argv"))
        timer = ("do_bench" if self.device.type == "cuda" else
                 f"perf_counter, {self.warmup} warm-up + {self.repeat} timed calls")
        print(f"{self.unit} = median ({timer}); nan = not run or failed (reason after the row)")
        print(f"{'shape':<22} {'provider':<24} {'prec':<5} {self.unit:>9} {'spread':>7} "
              f"{'TFLOP/s':>8} {'%ceil':>6} "
              + " ".join(f"{c.key:>{c.width}}" for c in self.columns), flush=True)

    def print_row(self, row: Row) -> None:
        spread = 100.0 * (row.ms_high - row.ms_low) / row.ms if row.ms else math.nan
        metrics = " ".join(f"{row.metrics.get(c.key, math.nan):>{c.spec}}" for c in self.columns)
        print(f"{row.shape:<22} {row.provider:<24} {row.precision:<5} {row.ms:>9.2f} "
              f"{spread:>6.0f}% {row.tflops:>8.3f} {row.pct_ceiling:>6.1f} {metrics}"
              + (f"  ({row.note})" if row.note else ""), flush=True)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        self.print_row(row)
        self.write_json()

    def write_json(self) -> None:
        if self.json_path is not None:
            doc = {"meta": {**self.meta, "load_now": load_average()},
                   "rows": [row.as_json() for row in self.rows]}
            self.json_path.write_text(json.dumps(doc, indent=1))

    def run(self, shape: str, providers: Sequence[Provider], setup: Callable[[], Any],
            measure_one: Callable[[Provider, Any], Measured], flops: float,
            ceiling: Callable[[str], float] | None = None) -> list[Row]:
        """One row per provider not skipped, in order; ``flops`` per unit of ``ms``."""
        chosen = [p for p in providers if not any(p.matches(t) for t in self.skip)]
        blank = dict.fromkeys((c.key for c in self.columns), math.nan)  # same keys in every row
        rows = [Row(shape, p.name, p.precision, metrics=dict(blank)) for p in chosen]
        data, failure = None, self.stop_reason()
        if not failure:
            try:
                data = setup()
            except Exception as exc:  # the shape's data: every row says why it is empty
                failure = self._failure("setup", exc)
        ceilings: dict[str, float] = {}
        for row, provider in zip(rows, chosen, strict=True):
            if provider.absent:
                row.note = provider.absent
                self.add(row)
                continue
            if ceiling is not None and not (failure or self.stop_reason()) \
                    and provider.precision not in ceilings:
                ceilings[provider.precision] = self._ceiling(ceiling, provider.precision)
            why = failure or self.stop_reason()  # the ceiling may be what broke the device
            if why:
                row.note = why
                self.add(row)
                continue
            try:
                result = measure_one(provider, data)
                row.ms, row.ms_low, row.ms_high = (result.timing.median, result.timing.low,
                                                   result.timing.high)
                row.metrics.update(result.metrics)
                row.note = result.note
                row.tflops = flops / row.ms / 1e9
                row.pct_ceiling = 100.0 * row.tflops / ceilings.get(provider.precision, math.nan)
            except Exception as exc:  # one absent or failing provider must not stop the table
                row.note = self._failure(provider.name, exc)
            self.add(row)
        return rows

    def _ceiling(self, ceiling: Callable[[str], float], precision: str) -> float:
        try:
            return ceiling(precision)
        except Exception as exc:  # without a ceiling the rows keep their times; %ceil is nan
            print(f"  (no {precision} ceiling: {self._failure('the ceiling matmul', exc)})")
            return math.nan

    def _failure(self, who: str, exc: Exception) -> str:
        text = f"{type(exc).__name__}: {exc}".splitlines()[0][:120]
        if not isinstance(exc, ImportError):
            traceback.print_exc(limit=2)
        if any(mark in str(exc) for mark in CONTEXT_LOST_MARKS):
            self.lost = f"not run: CUDA context lost to {who}"
        return text

    def finish(self) -> None:
        print(f"load average at the end: {load_average()}")
        if self.json_path is not None:
            self.write_json()
            print(f"wrote {len(self.rows)} rows to {self.json_path}")
