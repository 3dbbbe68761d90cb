"""deepcluster-train end to end on tiny data: outputs, config precedence, bad inputs."""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from deepcluster import metrics
from deepcluster.checkpoint import load_checkpoint, model_from_checkpoint
from deepcluster.config import Config, ConfigError, parse_config
from deepcluster.train import main

# A network and a clustering small enough for a CPU test.
TINY = ["--image-size", "16", "--width", "0.125", "--k", "3", "--pca-dim", "8",
        "--kmeans-iters", "5", "--batch-size", "8", "--workers", "0", "--reassign", "1"]
KEYS = {"epoch", "lr", "loss", "time_features", "time_pca", "time_kmeans", "time_train",
        "kmeans_obj", "empty_clusters", "nsplit", "size_min", "size_median", "size_max",
        "nmi_prev", "nmi_labels", "acc_labels", "knn_labels", "kmeans_seed", "kmeans_backend"}


def _image_folder(root):
    """Two classes of colour/grayscale PNG and JPEG files of mixed sizes, one corrupt file."""
    rng = np.random.default_rng(0)
    shapes = [(20, 24), (31, 17), (12, 12), (40, 33), (16, 28), (25, 25)]
    for cls, tint in (("cats", (200, 60, 60)), ("dogs", (40, 90, 220))):
        (root / cls).mkdir(parents=True)
        for i, (h, w) in enumerate(shapes):
            pixels = (rng.integers(0, 60, (h, w, 3)) + np.array(tint)).clip(0, 255)
            img = Image.fromarray(pixels.astype(np.uint8))
            if i % 3 == 1:
                img = img.convert("L")
            elif i % 3 == 2:
                img = img.convert("RGBA")
            img.save(root / cls / f"{i}.{'png' if i % 3 == 2 or i % 2 else 'jpg'}")
    good = (root / "cats" / "0.jpg").read_bytes()
    (root / "dogs" / "broken.jpg").write_bytes(good[: len(good) // 2])
    return root


def test_two_epochs_on_an_image_folder(tmp_path, capsys):
    data = _image_folder(tmp_path / "data")
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="broken.jpg"):
        assert main(["--data", str(data), "--epochs", "2", "--out", str(out), "--check-images",
                     "--log-every", "0", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "skipped 1 unreadable image" in printed
    assert "epoch 0 step 2/2 loss" in printed and "epoch 1 step 2/2 loss" in printed
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    assert all(KEYS <= set(r) for r in records)
    assert records[0]["nmi_prev"] is None and 0 <= records[1]["nmi_prev"] <= 1
    assert all(0 <= r["knn_labels"] <= 100 for r in records)  # the folders are labels
    assert all(r["size_min"] <= r["size_median"] <= r["size_max"] for r in records)
    assert records[0]["kmeans_seed"] != records[1]["kmeans_seed"]
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    assert checkpoint["epoch"] == 2 and checkpoint["num_images"] == 12
    # Colour images: the automatic --sobel is on (the paper's), and the header says so.
    assert checkpoint["config"]["sobel"] is None and checkpoint["model_spec"]["sobel"] is True
    assert "3 channel(s)" in printed and "sobel True)" in printed
    assert checkpoint["config"]["data"] == str(data)
    # The logged scores are those of the checkpoint's assignments against the folder labels.
    labels = np.repeat([0, 1], 6)
    assert checkpoint["assignments"].shape == (12, 1)  # k 3: no coarser level of 2 or more
    assigned = checkpoint["assignments"][:, 0]
    assert records[1]["nmi_labels"] == pytest.approx(metrics.nmi(labels, assigned))
    assert np.bincount(assigned, minlength=3).max() == records[1]["size_max"]
    assert yaml.safe_load((out / "config.yaml").read_text()) == checkpoint["config"]
    for name in ("nmi.png", "cluster_sizes.png", "conv1_filters.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model, config = model_from_checkpoint(out / "checkpoint.pt")
    assert config.epochs == 2 and not model.training
    assert torch.equal(model.state_dict()["top_layer.weight"],
                       checkpoint["model"]["top_layer.weight"])
    # The top optimizer has no momentum; the body's has a buffer for every trained parameter.
    assert all(not s for s in checkpoint["top_optimizer"]["state"].values())
    body_state = checkpoint["optimizer"]["state"]
    assert body_state and all("momentum_buffer" in s for s in body_state.values())


def test_coarser_levels_train_one_top_layer_of_every_levels_outputs(tmp_path):
    out = tmp_path / "run"
    args = [a for a in TINY if a not in ("--k", "3")]
    assert main(["--data", "digits", "--max-images", "60", "--epochs", "1", "--out", str(out),
                 "--k", "8", "--k-levels", "2", *args]) == 0
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    assert checkpoint["model_spec"]["num_clusters"] == 8 + 2
    # Grey digits: the automatic --sobel is off; the network reads the one channel itself.
    spec = checkpoint["model_spec"]
    assert spec["sobel"] is False and spec["in_channels"] == 1
    assert model_from_checkpoint(checkpoint)[0].sobel is None
    assert checkpoint["model"]["top_layer.weight"].shape[0] == 10
    levels = checkpoint["assignments"]
    assert levels.shape == (60, 2) and int(levels[:, 0].max()) < 8 and int(levels[:, 1].max()) < 2
    record = json.loads((out / "metrics.jsonl").read_text())
    # The epoch's statistics are those of the k clustering (column 0).
    assert record["size_max"] == int(np.bincount(levels[:, 0], minlength=8).max())
    model, config = model_from_checkpoint(out / "checkpoint.pt")
    assert config.cluster_ks() == [8, 2] and model.top_layer.out_features == 10


def test_reassign_2_clusters_every_second_epoch(tmp_path, capsys):
    args = ["--data", "digits", "--max-images", "60", *TINY, "--reassign", "2"]
    assert main([*args, "--epochs", "1", "--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    assert main([*args, "--epochs", "3", "--out", str(tmp_path / "three")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith("epoch ") and " | loss " in line]
    assert len(lines) == 3 and "no clustering" in lines[1]
    assert "kmeans" in lines[0] and "kmeans" in lines[2] and "kmeans" not in lines[1]
    records = [json.loads(line)
               for line in (tmp_path / "three" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    # Epochs 0 and 2 cluster (and read the kNN monitor); epoch 1 trains on epoch 0's labels.
    assert KEYS <= set(records[0]) and KEYS <= set(records[2])
    assert {"loss", "time_train"} <= set(records[1])
    assert not {"time_features", "kmeans_seed", "nmi_labels", "knn_labels"} & set(records[1])
    first = load_checkpoint(tmp_path / "one" / "checkpoint.pt")["assignments"]
    assert first.shape[0] == 60
    # The same run stopped after epoch 1 (no clustering in it) holds epoch 0's assignments.
    assert main([*args, "--epochs", "2", "--out", str(tmp_path / "two")]) == 0
    torch.testing.assert_close(load_checkpoint(tmp_path / "two" / "checkpoint.pt")["assignments"],
                               first)


def test_cosine_schedule_sets_the_body_learning_rate_of_each_epoch(tmp_path, capsys):
    import math
    args = ["--data", "digits", "--max-images", "40", *TINY, "--lr", "0.04", "--out",
            str(tmp_path / "run")]
    assert main([*args, "--epochs", "2", "--lr-schedule", "cosine"]) == 0
    # Resumed with more epochs: the rest of the run follows the cosine of the new length.
    assert main([*args, "--epochs", "4", "--lr-schedule", "cosine", "--resume"]) == 0
    records = [json.loads(line)
               for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # Epochs 0 and 1 of the 2-epoch run, then epochs 2 and 3 of the 4-epoch one.
    expected = [0.04 * (1 + math.cos(math.pi * e / n)) / 2 for e, n in ((0, 2), (1, 2), (2, 4),
                                                                        (3, 4))]
    assert [r["lr"] for r in records] == pytest.approx(expected, rel=1e-12)
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert checkpoint["optimizer"]["param_groups"][0]["lr"] == pytest.approx(expected[-1])
    # Each fresh top layer keeps --lr.
    assert checkpoint["top_optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.04)
    assert "| lr 0.00586 |" in capsys.readouterr().out
    assert [Config(lr=0.1, epochs=5).body_lr(e) for e in range(5)] == [0.1] * 5
    with pytest.raises(ConfigError, match="lr_schedule must be one of"):
        Config(lr_schedule="step").validate()


def test_config_file_and_overrides(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('k = 7\nlr = 1\nmin-crop-scale = 0.3\nsobel = false\narch = "resnet18"\n'
                    'pca_power = 0\n')
    config = parse_config(["--config", str(toml), "--k", "9", "--arch", "alexnet"])
    assert (config.k, config.lr, config.min_crop_scale, config.sobel, config.arch) == \
        (9, 1.0, 0.3, False, "alexnet")
    assert config.pca_power == 0.0 and isinstance(config.pca_power, float)
    assert config.epochs == Config().epochs
    yml = tmp_path / "run.yaml"
    yml.write_text("k: 7\nbatch_size: 32\nsobel: true\n")
    config = parse_config(["--config", str(yml), "--no-sobel"])
    assert (config.k, config.batch_size, config.sobel) == (7, 32, False)
    assert (Config().dropout, Config().flip, Config().head, Config().pool2, Config().sobel) == \
        (0.0, False, "none", True, None)
    # sobel: automatic unless given, on the command line or in a file (YAML null: automatic).
    assert parse_config(["--sobel"]).sobel is True and parse_config([]).sobel is None
    assert [Config().sobel_for(grey=g) for g in (True, False)] == [False, True]
    assert [Config(sobel=True).sobel_for(grey=True),
            Config(sobel=False).sobel_for(grey=False)] == [True, False]
    yml.write_text("sobel: null\n")
    assert parse_config(["--config", str(yml)]).sobel is None
    assert not parse_config(["--no-pool2"]).pool2
    config = parse_config(["--dropout", "0.5", "--head", "fc", "--flip"])
    assert (config.dropout, config.head, config.flip) == (0.5, "fc", True)
    for text, message in (("kk: 3\n", "unknown setting 'kk'"), ("k: three\n", "k must be int"),
                          ("dropout: 1.0\n", "dropout must be in"),
                          ("dropout: 0.5\n", "needs the FC head"),
                          ("head: mlp\n", "head must be one of"),
                          ("arch: resnet18\nhead: fc\n", "resnet18 has no FC head"),
                          ("arch: vgg16\npool2: false\n", "no-pool2 is for alexnet; vgg16"),
                          ("jitter: -0.1\n", "jitter must be in"),
                          ("kmeans_backend: faiss\n", "kmeans_backend must be one of"),
                          ("kmeans_redo: 0\n", "kmeans_redo must be positive"),
                          ("sobel: 1\n", "sobel must be bool, got 1"),
                          ("- 1\n", "table of settings"), ("k: [\n", "not valid yaml")):
        yml.write_text(text)
        with pytest.raises(ConfigError, match=message):
            parse_config(["--config", str(yml)])
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(ConfigError, match="must end in"):
        parse_config(["--config", str(tmp_path / "run.json")])
    with pytest.raises(ConfigError, match="cannot read config file"):
        parse_config(["--config", str(tmp_path / "missing.toml")])


def _error(args, capsys):
    assert main(args) == 2
    return capsys.readouterr().err


def test_bad_inputs_get_clear_messages(tmp_path, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    assert "no images in" in _error(["--data", str(tmp_path / "empty")], capsys)
    assert "no such directory" in _error(["--data", str(tmp_path / "nope")], capsys)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="a.png"):
        assert "none of the 1 image files" in _error(["--data", str(tmp_path / "junk")], capsys)
    assert "k=5000 is larger than the number of images (1797)" in \
        _error(["--k", "5000"], capsys)
    monkeypatch.setattr("deepcluster.data.FASHION_MNIST_DIR", tmp_path / "nope")
    assert "apt-get install -y dataset-fashion-mnist" in _error(["--data", "fashion-mnist"],
                                                                  capsys)
    assert "too small for arch 'alexnet'" in _error(["--image-size", "8"], capsys)
    for flag, value in (("--arch", "lenet"), ("--kmeans-backend", "faiss")):
        with pytest.raises(SystemExit) as exc:
            main([flag, value])
        assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert "--resume needs --out" in _error(["--resume"], capsys)


def test_existing_runs_are_never_overwritten(tmp_path, capsys):
    images = np.random.default_rng(0).integers(0, 256, (20, 12, 12), dtype=np.uint8)
    np.savez(tmp_path / "tiny.npz", x_train=images)
    out = tmp_path / "run"
    args = ["--data", str(tmp_path / "tiny.npz"), "--epochs", "1", "--out", str(out), *TINY]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "already holds a run" in _error(args, capsys)
    message = _error([*args, "--resume", "--k", "4"], capsys)
    assert "comes from another configuration" in message and "k: checkpoint 3, now 4" in message
    (tmp_path / "empty_run").mkdir()
    assert "no checkpoint.pt" in _error([*args[:-len(TINY) - 2], "--out",
                                         str(tmp_path / "empty_run"), "--resume"], capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # A different dataset of the same config is refused too.
    np.savez(tmp_path / "tiny.npz", x_train=images[:15])
    assert "resume on the same data" in _error([*args, "--resume", "--epochs", "2"], capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
