"""The acceptance table of a gpu_check.sh run: our rows against the peers' and the ANCHORS.md bars.

Reads the harness's JSON in one folder (kmeans_*.json, pca.json) and prints, per dc_kernels
GPU backend and target, our ms, the peer's ms, the ratio and the verdict (``n/a`` when either
side is missing); then every row that leaves empty clusters where N >= 2K or whose inertia is
off float64 Lloyd by more than the precision allows; then the PCA ratios.

  python -m bench.gpu_summary LOGDIR
"""

import json
import math
import sys
from pathlib import Path

TARGETS = [  # shape, our precision, peer, peer precision, bar (ANCHORS.md)
    ("1281167x256:10000", "bf16", "flash-kmeans", "fp16", 0.8),
    ("1281167x256:10000", "fp16", "flash-kmeans", "fp16", 0.8),
    ("1281167x256:10000", "tf32", "flash-kmeans", "fp32", 0.8),
    ("1281167x256:10000", "fp32", "torch-loop", "fp32", 0.6),
    ("1281167x256:100000", "fp16", "flash-kmeans", "fp16", 0.8),
    ("1281167x256:100000", "bf16", "flash-kmeans", "fp16", 0.8),
    ("50000x256:1000", "tf32", "flash-kmeans", "fp32", 0.25),  # flash runs fp32 input as TF32
    ("50000x256:1000", "fp32", "flash-kmeans", "fp32", 0.25),
    ("50000x256:1000", "fp16", "flash-kmeans", "fp16", 0.25),
    ("32x131072x128:1024", "fp16", "flash-kmeans", "fp16", 0.8),
    ("8x131072x128:100", "fp16", "flash-kmeans", "fp16", 0.25),
]
PCA_BARS = {"ms": 0.5, "apply_ms": 0.4}  # fit + apply, and the apply alone, against torch fp32
INERTIA_BARS = {"fp32": 1e-3, "tf32": 5e-3, "bf16": 5e-3}


def load(path: Path) -> list[dict]:
    """The rows of one harness JSON, with null (absent) read as nan."""
    rows = json.loads(path.read_text())["rows"]
    return [{key: math.nan if value is None else value for key, value in row.items()}
            for row in rows]


def verdict(ratio: float, bar: float) -> str:
    return "n/a" if math.isnan(ratio) else "ok" if ratio <= bar else "MISSED"


def kmeans_table(rows: list[dict]) -> list[str]:
    ms = {(r["shape"], r["provider"], r["precision"]): r["ms"] for r in rows}
    ours = sorted({r["provider"] for r in rows if r["provider"].startswith("dc_kernels.")
                   and r["provider"] not in ("dc_kernels.torch", "dc_kernels.cpu")})
    lines = [f"{'target':<62} {'ours ms':>9} {'peer ms':>9} {'ratio':>7} {'bar':>5}  verdict"]
    for provider in ours:
        for shape, prec, peer, peer_prec, bar in TARGETS:
            mine = ms.get((shape, provider, prec), math.nan)
            theirs = ms.get((shape, peer, peer_prec), math.nan)
            ratio = mine / theirs if theirs else math.nan
            label = f"{shape} {provider} {prec} vs {peer} {peer_prec}"
            lines.append(f"{label:<62} {mine:>9.2f} {theirs:>9.2f} {ratio:>7.2f} {bar:>5}  "
                         f"{verdict(ratio, bar)}")
        for r in rows:
            if r["provider"] != provider:
                continue
            dims, k = r["shape"].split(":")
            n = int(dims.split("x")[-2])
            if n >= 2 * int(k) and r["empty"] > 0:  # nan compares False: not measured
                lines.append(f"  MISSED: {r['shape']} {provider} {r['precision']}: "
                             f"{r['empty']:.0f} empty clusters at exit (target 0)")
            bar = INERTIA_BARS.get(r["precision"])
            if bar is not None and abs(r["rel_inert"]) > bar:
                lines.append(f"  MISSED: {r['shape']} {provider} {r['precision']}: inertia "
                             f"{r['rel_inert']:+.1e} vs float64 Lloyd (bar {bar:g})")
    return lines


def pca_table(rows: list[dict]) -> list[str]:
    by_key = {(r["provider"], r["precision"]): r for r in rows}
    base = by_key.get(("torch-pipeline", "fp32"))
    if base is None:
        return ["PCA: no torch-pipeline fp32 row"]
    lines = []
    for (name, _), r in by_key.items():
        if not name.startswith("dc_kernels.") or math.isnan(r["ms"]):
            continue
        for key, bar in PCA_BARS.items():
            what = "fit+apply" if key == "ms" else "apply"
            ratio = r[key] / base[key]
            lines.append(f"{f'PCA {what} {name} vs torch fp32':<62} {r[key]:>9.1f} "
                         f"{base[key]:>9.1f} {ratio:>7.2f} {bar:>5}  {verdict(ratio, bar)}")
    return lines


def main(folder: Path) -> None:
    kmeans_rows = [r for path in sorted(folder.glob("kmeans_*.json")) for r in load(path)]
    lines = kmeans_table(kmeans_rows)
    pca = folder / "pca.json"
    lines += pca_table(load(pca)) if pca.exists() else ["PCA: no result"]
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
