"""Image directories at scale: the file index, decoding of every Pillow mode, replacement of
unreadable files, the input size from headers, progress lines, the loader defaults."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepcluster import data
from deepcluster.config import Config
from deepcluster.models import build_model
from deepcluster.progress import Progress
from deepcluster.train import _loader, _PassItems, extract_features, main

RNG = np.random.default_rng(11)
RGB = RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8)


def _rgb(x: torch.Tensor) -> np.ndarray:
    assert x.dtype == torch.uint8 and x.shape[0] == 3
    return x.permute(1, 2, 0).numpy()


def _gray3(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


# ---- decoding: one case per mode Pillow can write, each against a NumPy reference

def _palette_image(mode: str) -> tuple[Image.Image, np.ndarray]:
    palette = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
    index = RNG.integers(0, 256, RGB.shape[:2], dtype=np.uint8)
    img = Image.fromarray(index, "L").convert("P")
    img.putpalette(palette.reshape(-1).tolist())
    if mode == "PA":
        img = img.convert("PA")
    return img, palette[index]


def test_every_8bit_mode_decodes_to_its_rgb(tmp_path):
    gray = RGB[..., 0]
    alpha = RGB[..., 1]
    cmyk = RNG.integers(0, 256, (6, 8, 4), dtype=np.uint8)
    cases = {
        "1.png": (Image.fromarray(gray > 127).convert("1"), _gray3((gray > 127) * 255)),
        "L.png": (Image.fromarray(gray, "L"), _gray3(gray)),
        "LA.png": (Image.fromarray(np.dstack([gray, alpha]), "LA"), _gray3(gray)),
        "RGB.png": (Image.fromarray(RGB), RGB),
        "RGBA.png": (Image.fromarray(np.dstack([RGB, alpha]), "RGBA"), RGB),
        "RGB.bmp": (Image.fromarray(RGB), RGB),
        "RGB.ppm": (Image.fromarray(RGB), RGB),
        "L.pgm": (Image.fromarray(gray, "L"), _gray3(gray)),
        "RGB.tiff": (Image.fromarray(RGB), RGB),
        "RGB.webp": (Image.fromarray(RGB), RGB),
        # CMYK -> RGB: each channel (255 - C)(255 - K) / 255.
        "CMYK.tiff": (Image.fromarray(cmyk, "CMYK"),
                      np.rint((255.0 - cmyk[..., :3]) * (255.0 - cmyk[..., 3:]) / 255)),
    }
    for mode in ("P", "PA"):
        cases[f"{mode}.png" if mode == "P" else "PA.tiff"] = _palette_image(mode)
        cases["P.gif"] = _palette_image("P")
    for name, (img, want) in cases.items():
        path = tmp_path / name
        img.save(path, **({"lossless": True} if name.endswith(".webp") else {}))
        got = _rgb(data.decode_file(str(path)))
        np.testing.assert_array_equal(got, want.astype(np.uint8), err_msg=name)
    # An animated GIF: its first frame.
    frames = [Image.fromarray(RGB).convert("P"), Image.fromarray(255 - RGB).convert("P")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with Image.open(tmp_path / "anim.gif") as img:
        first = np.asarray(img.convert("RGB"))
    np.testing.assert_array_equal(_rgb(data.decode_file(str(tmp_path / "anim.gif"))), first)


def test_ycbcr_and_jpeg_match_the_full_range_conversion(tmp_path):
    ycc = RNG.integers(40, 216, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(ycc, "YCbCr").save(tmp_path / "ycc.tiff")
    y, cb, cr = (ycc[..., i].astype(float) for i in range(3))
    want = np.dstack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                      y + 1.772 * (cb - 128)]).clip(0, 255)
    got = _rgb(data.decode_file(str(tmp_path / "ycc.tiff"))).astype(float)
    assert np.abs(got - want).max() <= 2
    # JPEG (libjpeg in torchvision) against Pillow's decoder of the same file: both are JPEG
    # decoders of one stream, they may differ by the rounding of their inverse DCTs.
    smooth = np.linspace(0, 255, 64 * 48 * 3).reshape(48, 64, 3).astype(np.uint8)
    for mode in ("RGB", "L", "CMYK"):
        path = tmp_path / f"{mode}.jpg"
        Image.fromarray(smooth).convert(mode).save(path, quality=95)
        with Image.open(path) as img:
            want = np.asarray(img.convert("RGB")).astype(int)
        got = _rgb(data.decode_file(str(path))).astype(int)
        assert np.abs(got - want).max() <= 3, mode


def test_16bit_and_float_images_keep_their_range(tmp_path):
    ramp16 = np.linspace(0, 65535, 48).round().astype(np.uint16).reshape(6, 8)
    Image.fromarray(ramp16).save(tmp_path / "a.png")      # I;16 PNG: torchvision's path
    Image.fromarray(ramp16).save(tmp_path / "a.tiff")     # I;16 TIFF: Pillow's path
    for name in ("a.png", "a.tiff"):
        got = _rgb(data.decode_file(str(tmp_path / name)))
        np.testing.assert_array_equal(got, _gray3(np.rint(ramp16 / 257.0)), err_msg=name)
    # 32-bit integers (mode I) and floats (mode F): the smallest standard range holding the
    # values (F: 0..1 first), else their own min..max.
    cases = [
        ("I", np.arange(48, dtype=np.int32).reshape(6, 8) * 5, 255.0, 0.0),
        ("I", np.arange(48, dtype=np.int32).reshape(6, 8) * 1000, 65535.0, 0.0),
        ("I", np.arange(48, dtype=np.int32).reshape(6, 8) * 10**6 - 7, None, None),
        ("F", np.linspace(0, 1, 48, dtype=np.float32).reshape(6, 8), 1.0, 0.0),
        ("F", np.linspace(0, 200, 48, dtype=np.float32).reshape(6, 8), 255.0, 0.0),
        ("F", np.linspace(-3, 5, 48, dtype=np.float32).reshape(6, 8), None, None),
    ]
    for i, (mode, values, hi, lo) in enumerate(cases):
        path = tmp_path / f"{mode}{i}.tiff"
        Image.fromarray(values, mode).save(path)
        a = values.astype(np.float64)
        if hi is None:
            lo, hi = a.min(), a.max()
        want = np.rint((a - lo) * 255.0 / (hi - lo))
        np.testing.assert_array_equal(_rgb(data.decode_file(str(path))), _gray3(want),
                                      err_msg=f"{mode} {i}")
    bad = np.ones((6, 8), np.float32)
    bad[2, 3] = np.nan
    Image.fromarray(bad, "F").save(tmp_path / "nan.tiff")
    with pytest.raises(data.UnreadableImage, match=r"nan\.tiff: mode F .*NaN"):
        data.decode_file(str(tmp_path / "nan.tiff"))


def test_unconvertible_and_broken_files_are_named(tmp_path):
    Image.fromarray(RGB).convert("LAB").save(tmp_path / "lab.tiff")
    try:
        got = data.decode_file(str(tmp_path / "lab.tiff"))
        assert got.shape == (3, 6, 8) and got.dtype == torch.uint8
    except data.UnreadableImage as exc:
        assert "lab.tiff" in str(exc) and "LAB" in str(exc)
    Image.fromarray(RGB).save(tmp_path / "ok.jpg")
    whole = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "text.png").write_bytes(b"not an image at all")
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("cut.jpg", "text.png", "empty.png", "missing.jpg"):
        with pytest.raises(data.UnreadableImage, match=name):
            data.decode_file(str(tmp_path / name))


# ---- the index

def _folder(root, sizes=((20, 30),) * 3, classes=("b", "a")):
    for c in classes:
        (root / c / "deep").mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            pixels = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
            where = root / c / ("deep" if i == 0 else "") / f"{i}.png"
            Image.fromarray(pixels).save(where)
        (root / c / "notes.txt").write_text("not an image")
    return root


def test_index_lists_sorts_labels_and_round_trips(tmp_path):
    root = _folder(tmp_path / "d")
    os.symlink(root / "a", root / "a" / "deep" / "loop")  # a cycle the walk must not follow
    images = data.load_images(str(root), show=False)
    rel = [os.path.relpath(images.path(i), root) for i in range(len(images))]
    assert rel == ["a/1.png", "a/2.png", "a/deep/0.png", "b/1.png", "b/2.png", "b/deep/0.png"]
    assert images.class_names == ["a", "b"] and images.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert images.native_size == 30 and data.default_image_size(images) == 32
    index = images.images
    assert index.nbytes == index.blob.nbytes + 16 * len(index)
    assert index.blob.nbytes == sum(len(r) for r in rel)
    # Saved and read back: the same set; another directory's index is not taken for this one.
    saved = tmp_path / "index.npz"
    data.save_index(images, saved)
    back = data.read_index(saved, root)
    assert [back.path(i) for i in range(len(back))] == [images.path(i) for i in range(6)]
    assert np.array_equal(back.labels, images.labels) and back.native_size == 30
    assert not images.grey and not back.grey  # colour PNGs
    assert data.read_index(saved, tmp_path) is None
    assert data.read_index(tmp_path / "nothing.npz") is None
    # load_images with the index file reads it instead of listing again.
    Image.fromarray(RGB).save(root / "a" / "new.png")
    assert len(data.load_images(str(root), index_file=saved, show=False)) == 6
    assert len(data.load_images(str(root), show=False)) == 7
    # A subset shares the path bytes.
    sub = images.subset(np.array([4, 1]))
    assert sub.path(0) == images.path(4) and sub.images.blob is index.blob


def test_grey_images_are_told_from_colour_ones(tmp_path):
    # In memory: one channel, or three equal planes, is grey; one differing pixel is colour.
    grey = RNG.integers(0, 256, (5, 8, 8), dtype=np.uint8)
    coloured = np.repeat(grey[..., None], 3, axis=-1)
    coloured[2, 3, 4, 1] ^= 1
    for x, want in ((grey, True), (np.repeat(grey[..., None], 3, axis=-1), True),
                    (coloured, False)):
        np.savez(tmp_path / "x.npz", x_train=x)
        assert data.load_images(str(tmp_path / "x.npz")).grey is want
    assert data.load_images("digits").grey
    # A folder: grey when every sampled file has a grey mode (L, LA, 16-bit, float), kept in
    # the index and in subsets; one RGB file among them makes it colour.
    root = tmp_path / "d"
    (root / "a").mkdir(parents=True)
    for i, mode in enumerate(("L", "LA", "I;16", "F")):
        Image.new(mode, (9, 7)).save(root / "a" / f"{i}.{'tiff' if mode == 'F' else 'png'}")
    images = data.load_images(str(root), show=False)
    assert images.grey and images.channels == 3 and images.subset(np.array([1, 0])).grey
    data.save_index(images, tmp_path / "index.npz")
    assert data.read_index(tmp_path / "index.npz", root).grey
    # Grey images saved as RGB (PNG, and JPEG, whose flat chroma decodes to equal planes) are
    # grey too; one file with colour among them makes the folder colour.
    plane = RNG.integers(0, 256, (7, 9), dtype=np.uint8)
    Image.fromarray(plane).convert("RGB").save(root / "a" / "4.png")
    Image.fromarray(plane).convert("RGB").save(root / "a" / "5.jpg", quality=80)
    assert Image.open(root / "a" / "5.jpg").mode == "RGB"
    assert data.load_images(str(root), show=False).grey
    Image.fromarray(RGB).save(root / "a" / "6.png")
    assert not data.load_images(str(root), show=False).grey


def test_input_size_from_headers_and_unlabelled_folders(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    for i in range(5):
        Image.fromarray(RNG.integers(0, 256, (28, 28), dtype=np.uint8)).save(small / f"{i}.png")
    images = data.load_images(str(small), show=False)
    assert images.labels is None and images.native_size == 28
    assert data.default_image_size(images) == 32
    big = _folder(tmp_path / "big", sizes=((60, 50), (300, 200), (400, 500)))
    assert data.default_image_size(data.load_images(str(big), show=False)) == 224
    for sides, network in (((64, 64, 40), 64), ((96, 80, 96), 96), ((97, 97, 90), 224)):
        folder = _folder(tmp_path / f"median{sides[0]}", sizes=[(s, s) for s in sides])
        assert data.default_image_size(data.load_images(str(folder), show=False)) == network


def test_folders_without_usable_images(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataError, match="no images in"):
        data.load_images(str(tmp_path / "empty"), show=False)
    junk = tmp_path / "junk"
    junk.mkdir()
    for i in range(3):
        (junk / f"{i}.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.warns(UserWarning, match="0.jpg"), \
            pytest.raises(data.DataError, match="none of the 3 image files sampled"):
        data.load_images(str(junk), show=False)


def test_check_images_in_parallel_leaves_out_the_unreadable(tmp_path):
    root = _folder(tmp_path / "d")
    (root / "b" / "2.png").write_bytes((root / "b" / "1.png").read_bytes()[:60])
    with pytest.warns(UserWarning, match="2.png"):
        images = data.load_images(str(root), check=True, workers=2, show=False)
    assert len(images) == 5 and [p for p, _ in images.skipped] == [str(root / "b" / "2.png")]
    assert images.labels.tolist() == [0, 0, 0, 1, 1]
    serial = data.check_files(data.load_images(str(root), show=False).images, workers=1,
                              show=False)
    assert [i for i, _ in serial] == [4]


# ---- replacement of unreadable files

def test_unreadable_files_are_replaced_by_the_next_readable_one(tmp_path):
    root = _folder(tmp_path / "d")
    images = data.load_images(str(root), show=False)
    dataset = data.ImageDataset(images, 16)
    first = dataset[1][0]
    for broken in (1, 2, 5):
        with open(images.path(broken), "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n broken")
    x1, i1, r1 = dataset[1]
    x2, i2, r2 = dataset[2]
    x3, i3, r3 = dataset[3]
    assert (i1, r1, i2, r2, r3) == (1, True, 2, True, False)
    assert torch.equal(x1, x3) and torch.equal(x2, x3) and not torch.equal(x1, first)
    # The last file wraps around to the first; training items are replaced the same way.
    assert torch.equal(dataset[5][0], dataset[0][0])
    assert torch.equal(dataset[(5, 7)][0], dataset[(0, 7)][0]) and dataset[(5, 7)][2]
    for i in range(6):
        with open(images.path(i), "wb") as f:
            f.write(b"")
    with pytest.raises(data.DataError, match="consecutive image files"):
        dataset[0]


def test_training_counts_and_lists_unreadable_files_and_resume_reuses_the_index(tmp_path,
                                                                                 capsys):
    root = _folder(tmp_path / "d")
    (root / "a" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "run"
    args = ["--data", str(root), "--out", str(out), "--image-size", "16", "--width", "0.125",
            "--k", "2", "--pca-dim", "4", "--kmeans-iters", "3", "--batch-size", "4",
            "--workers", "0", "--device", "cpu"]
    with pytest.warns(UserWarning, match="2.png"):
        assert main([*args, "--epochs", "1"]) == 0
    printed = capsys.readouterr().out
    assert "1 unreadable image file(s) replaced" in printed
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["unreadable_images"] for r in records] == [1]
    listed = (out / "unreadable.txt").read_text().splitlines()
    assert len(listed) == 1 and listed[0].startswith(str(root / "a" / "2.png") + "\t")
    # The resumed run lists nothing again: a file added meanwhile is not in its index.
    assert (out / "index.npz").exists()
    Image.fromarray(RGB).save(root / "a" / "3.png")
    assert main([*args, "--epochs", "2", "--resume"]) == 0  # known: no second warning
    assert "listing" not in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["unreadable_images"] for r in records] == [1, 1]
    assert len((out / "unreadable.txt").read_text().splitlines()) == 1  # listed once


def test_two_ranks_share_rank_0s_index_and_count_unreadable_files_once(tmp_path):
    root = _folder(tmp_path / "d")
    (root / "a" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (root / "b" / "deep" / "0.png").write_bytes(b"")
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", "-m", "deepcluster.train", "--data", str(root), "--out",
               str(out), "--image-size", "16", "--width", "0.125", "--k", "2", "--pca-dim", "4",
               "--kmeans-iters", "3", "--batch-size", "2", "--workers", "0", "--device", "cpu",
               "--epochs", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("listing ") >= 1 and "data " in done.stdout
    # Rank 0's file 2.png sits in rank 0's feature shard, b/deep/0.png in rank 1's: both count.
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["unreadable_images"] == 2
    listed = sorted(line.split("\t")[0] for line in
                    (out / "unreadable.txt").read_text().splitlines())
    assert listed == [str(root / "a" / "2.png"), str(root / "b" / "deep" / "0.png")]
    back = data.read_index(out / "index.npz", root)
    assert back is not None and len(back) == 6


def test_features_on_the_host_are_the_device_features_in_float16():
    torch.manual_seed(0)
    model = build_model("alexnet", 3, image_size=16, width=0.125, in_channels=1)
    images = data.load_images("digits").subset(np.arange(40))
    items = _PassItems()
    loader = _loader(data.ImageDataset(images, 16), Config(batch_size=16), 0,
                     torch.device("cpu"), items)
    items.items = range(10, 40)  # a shard: rows are images 10..39
    cpu = torch.device("cpu")
    kept = {where: extract_features(model, loader, 10, cpu, False, Progress("f", show=False),
                                    where)[0] for where in ("device", "host")}
    assert kept["device"].dtype == torch.float32 and kept["host"].dtype == torch.float16
    assert kept["device"].shape == (30, model.feature_dim)
    assert torch.equal(kept["host"], kept["device"].half())
    with torch.no_grad():
        x = torch.stack([data.eval_transform(16)(images.load(i)) for i in range(10, 40)])
        torch.testing.assert_close(kept["device"], model.embed(data.normalize(x)))


# ---- normalisation, progress, loader defaults

def test_normalize_matches_float64():
    x = torch.randint(0, 256, (2, 3, 5, 4), dtype=torch.uint8)
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(3, 1, 1)
    want = (x.double() / 255 - mean) / std
    torch.testing.assert_close(data.normalize(x).double(), want, atol=1e-5, rtol=0)
    gray = x[:, :1]
    want = (gray.double() / 255 - mean.mean()) / std.mean()
    torch.testing.assert_close(data.normalize(gray).double(), want, atol=1e-5, rtol=0)


def test_progress_lines_and_lazy_text(capsys, monkeypatch):
    calls = []

    def text():
        calls.append(1)
        return "loss 1.0000"

    p = Progress("epoch 3", total=4, every=0)
    for _ in range(4):
        p.step(8, text)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" |")[0] for line in lines] == [
        f"epoch 3 step {i}/4 loss 1.0000" for i in range(1, 5)]
    assert len(calls) == 4 and "img/s" in lines[0]
    calls.clear()
    p = Progress("epoch 3", total=1000, every=3600)  # a line after the first step, then none
    for _ in range(1000):
        p.step(8, text)
    assert len(capsys.readouterr().out.splitlines()) == 1 and len(calls) == 1
    listing = Progress("listing d:", every=3600, unit="files")  # the first line waits for an item
    for found in (0, 0, 5, 7):
        listing.step(found)
    assert capsys.readouterr().out.splitlines()[0].startswith("listing d: 5 files |")
    quiet = Progress("x", total=3, every=0, show=False)
    quiet.step(1, text)
    assert capsys.readouterr().out == "" and len(calls) == 1


def test_default_workers_share_the_allowed_cpus(monkeypatch, tmp_path):
    images = data.load_images(str(_folder(tmp_path / "d")), show=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert data.default_workers(images) == 16
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert data.default_workers(images) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert data.default_workers(images) == 1
    assert data.default_workers(data.load_images("digits")) == 0
