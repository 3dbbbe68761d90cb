"""The bench harness on a tiny CPU shape: rows, notes and JSON content (never the timings)."""

import argparse
import json
import sys

import pytest
import torch

from bench import harness, kmeans_bench
from bench.harness import Bench, Column, Measured, Provider, Shape


def make_args(tmp_path, **overrides) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    harness.add_arguments(parser, repeat=2, warmup=1)
    args = parser.parse_args(["--device", "cpu", "--json", str(tmp_path / "rows.json")])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def test_measure_calls_and_quantiles():
    calls = []
    timing = harness.measure(lambda: calls.append(1), torch.device("cpu"), repeat=4, warmup=2)
    assert len(calls) == 6
    assert 0 <= timing.low <= timing.median <= timing.high
    per = timing.per(4)
    assert per.median == pytest.approx(timing.median / 4)


@pytest.mark.parametrize("text, shape", [("100000x256:1000", Shape(1, 100000, 256, 1000)),
                                         ("8x131072x128:100", Shape(8, 131072, 128, 100))])
def test_shape_round_trip(text, shape):
    assert Shape.parse(text) == shape
    assert str(shape) == text
    assert shape.assign_flops == 2.0 * shape.batch * shape.n * shape.d * shape.k


@pytest.mark.parametrize("text", ["100x20", "100x:5", "0x4:2", "2x3x4x5:6", "axb:c", "10x4:0"])
def test_shape_rejects_bad_text(text):
    with pytest.raises(ValueError, match="N x d : K"):
        Shape.parse(text)


def test_run_writes_one_row_per_provider(tmp_path):
    bench = Bench(make_args(tmp_path, skip=["skipped:fp16"]), "ms", [Column("score", "8.3f")])
    x = torch.randn(64, 32)
    flops = 2.0 * 64 * 32 * 32

    def measure(provider: Provider, data: torch.Tensor) -> Measured:
        if provider.name == "missing-peer":
            import a_package_that_is_not_installed  # noqa: F401
        if provider.name == "broken":
            raise RuntimeError("CUDA error: device-side assert triggered")
        return Measured(bench.time(lambda: data @ data.T), {"score": 1.5}, provider.run)

    providers = [Provider("ours", "fp32", run="a note"),
                 Provider("skipped", "fp16"),
                 Provider("missing-peer", "fp32"),
                 Provider("elsewhere", "fp32", absent="runs on CUDA devices only"),
                 Provider("broken", "fp32"),
                 Provider("after-broken", "fp32")]
    bench.run("64x32", providers, setup=lambda: x, measure_one=measure, flops=flops,
              ceiling=lambda prec: bench.ceiling(1, 64, 32, 64, prec))
    bench.finish()

    doc = json.loads((tmp_path / "rows.json").read_text())
    assert doc["meta"]["device"] == "cpu"
    rows = {row["provider"]: row for row in doc["rows"]}
    assert list(rows) == ["ours", "missing-peer", "elsewhere", "broken", "after-broken"]
    ours = rows["ours"]
    assert ours["shape"] == "64x32" and ours["precision"] == "fp32" and ours["note"] == "a note"
    assert ours["score"] == 1.5
    assert 0 < ours["ms_low"] <= ours["ms"] <= ours["ms_high"]
    assert ours["tflops"] == pytest.approx(flops / ours["ms"] / 1e9)
    ceiling = bench.ceiling(1, 64, 32, 64, "fp32")  # cached: the value the row used
    assert ours["pct_ceiling"] == pytest.approx(100 * ours["tflops"] / ceiling)
    for name in ("missing-peer", "elsewhere", "broken", "after-broken"):
        row = rows[name]
        assert all(row[key] is None for key in ("ms", "tflops", "pct_ceiling", "score")), row
    assert "a_package_that_is_not_installed" in rows["missing-peer"]["note"]
    assert rows["elsewhere"]["note"] == "runs on CUDA devices only"
    assert "device-side assert" in rows["broken"]["note"]
    assert rows["after-broken"]["note"] == "not run: CUDA context lost to broken"


def test_time_limit_marks_rows_without_setup(tmp_path):
    bench = Bench(make_args(tmp_path, time_limit=1e-9), "ms")

    def setup():
        raise AssertionError("setup must not run after the time limit")

    bench.run("1x1:1", [Provider("a", "fp32"), Provider("b", "bf16")], setup=setup,
              measure_one=lambda p, data: None, flops=1.0)
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert [(r["provider"], r["note"]) for r in rows] == [("a", "not run: time limit"),
                                                          ("b", "not run: time limit")]


def test_kmeans_bench_end_to_end(tmp_path, monkeypatch):
    out = tmp_path / "kmeans.json"
    monkeypatch.setattr(sys, "argv", ["kmeans_bench", "--shapes", "2x600x8:5", "--iters", "3",
                                      "--json", str(out), "--device", "cpu",
                                      "--skip", "dc_kernels.triton"])
    kmeans_bench.main()
    rows = {row["provider"]: row for row in json.loads(out.read_text())["rows"]}
    assert "dc_kernels.triton" not in rows
    for name in ("dc_kernels.torch", "dc_kernels.cpu", "torch-loop"):
        row = rows[name]
        assert row["shape"] == "2x600x8:5" and row["ms"] > 0
        # Every exact fp32 Lloyd from the same init ends at float64 Lloyd's inertia.
        assert abs(row["rel_inert"]) < 1e-5, row
        assert row["empty"] == 0
    assert rows["dc_kernels.cuda"]["ms"] is None and rows["dc_kernels.cuda"]["note"]
    for peer in ("faiss-cpu", "fast-pytorch-kmeans", "scikit-learn"):
        row = rows[peer]  # measured when installed, a null row with the reason otherwise
        if row["ms"] is None:
            assert row["note"]
        else:
            assert abs(row["rel_inert"]) < 1e-5, row


def test_gpu_summary_verdicts(tmp_path, capsys):
    from bench import gpu_summary

    def write(name, rows):
        doc = {"meta": {}, "rows": [row.as_json() for row in rows]}
        (tmp_path / name).write_text(json.dumps(doc))

    shape = "1281167x256:10000"
    write("kmeans_a.json", [
        harness.Row(shape, "dc_kernels.triton", "fp16", ms=10.0,
                    metrics={"empty": 0.0, "rel_inert": 1e-4}),
        harness.Row(shape, "dc_kernels.triton", "tf32", ms=40.0,
                    metrics={"empty": 3.0, "rel_inert": 1e-2}),
        harness.Row(shape, "flash-kmeans", "fp16", ms=20.0),
        harness.Row(shape, "flash-kmeans", "fp32", note="ModuleNotFoundError"),
    ])
    write("pca.json", [harness.Row("n", "torch-pipeline", "fp32", ms=100.0,
                                   metrics={"apply_ms": 50.0}),
                       harness.Row("n", "dc_kernels.triton", "fp32", ms=40.0,
                                   metrics={"apply_ms": 30.0})])
    gpu_summary.main(tmp_path)
    lines = capsys.readouterr().out.splitlines()

    def line(start):
        return next(text for text in lines if text.startswith(start)).split()

    assert line(f"{shape} dc_kernels.triton fp16 vs flash-kmeans fp16")[-2:] == ["0.8", "ok"]
    assert line(f"{shape} dc_kernels.triton fp16 vs flash-kmeans fp16")[-3] == "0.50"
    assert line(f"{shape} dc_kernels.triton tf32 vs flash-kmeans fp32")[-1] == "n/a"
    assert any("3 empty clusters" in text for text in lines)
    assert any("tf32: inertia +1.0e-02" in text for text in lines)
    assert not any("fp16: inertia" in text for text in lines)
    assert line("PCA fit+apply dc_kernels.triton")[-3:] == ["0.40", "0.5", "ok"]
    assert line("PCA apply dc_kernels.triton")[-3:] == ["0.60", "0.4", "MISSED"]


def test_make_image_folder_writes_the_drawn_images_under_their_classes(tmp_path):
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    from bench.make_image_folder import make_image_folder
    from deepcluster.data import load_images

    digits = load_digits()
    drawn = np.sort(np.random.default_rng(4).choice(len(digits.target), 30, replace=False))
    assert make_image_folder("digits", tmp_path / "d", count=30, seed=4, size=12) == 30
    files = sorted((tmp_path / "d").rglob("*.png"))
    assert [int(f.stem) for f in sorted(files, key=lambda f: f.stem)] == drawn.tolist()
    for f in files:
        index = int(f.stem)
        assert len(f.stem) == 4 and f.parent.name == str(digits.target[index])
        # Independent reference: scikit-learn's 0..16 counts on 0..255, bicubic to 12 px.
        grey = Image.fromarray(np.round(digits.images[index] * 255 / 16).astype(np.uint8))
        image = Image.open(f)
        assert image.mode == "L"
        np.testing.assert_array_equal(np.asarray(image),
                                      np.asarray(grey.resize((12, 12), Image.BICUBIC)))
    # The trainer reads it back as a folder: the classes from the folder names, grey, 12 px.
    images = load_images(str(tmp_path / "d"))
    assert len(images) == 30 and images.grey and images.native_size == 12
    assert sorted(images.class_names[y] for y in images.labels) == \
        sorted(str(digits.target[i]) for i in drawn)
    # --colour: the same draw and size, each image in its own two colours, read back as colour.
    assert make_image_folder("digits", tmp_path / "c", count=30, seed=4, size=12,
                             colour=True) == 30
    colours = np.random.default_rng([4, 1])
    inks = []
    for index in drawn.tolist():
        ink, background = colours.integers(128, 256, 3), colours.integers(0, 128, 3)
        inks.append(ink)
        f = tmp_path / "c" / str(digits.target[index]) / f"{index:04d}.png"
        g = np.asarray(Image.open(tmp_path / "d" / f.parent.name / f.name), dtype=np.float64)
        want = np.stack([np.rint(b + (i - b) * g / 255)
                         for i, b in zip(ink, background, strict=True)], -1)
        image = Image.open(f)
        assert image.mode == "RGB"
        np.testing.assert_allclose(np.asarray(image), want, atol=1)  # rounding of i*g + b*(1-g)
    assert len({tuple(i) for i in inks}) == 30
    assert not load_images(str(tmp_path / "c")).grey
    with pytest.raises(ValueError, match="not empty"):
        make_image_folder("digits", tmp_path / "d", count=3)
    with pytest.raises(ValueError, match="fewer than --count 2000"):
        make_image_folder("digits", tmp_path / "e", count=2000)
    with pytest.raises(ValueError, match="data must be one of"):
        make_image_folder("mnist", tmp_path / "e")
