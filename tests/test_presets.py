"""configs/paper-*.toml: the paper's settings, loadable and runnable."""

import json
from pathlib import Path

import pytest

from deepcluster.config import parse_config
from deepcluster.train import main

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# Caron et al. 2018 (section 4 and the original main.sh): what every paper preset must hold.
PAPER = {"k": 10000, "pca_dim": 256, "pca_power": -0.5, "batch_size": 256, "lr": 0.05,
         "wd": 1e-5, "momentum": 0.9, "epochs": 500, "sobel": True, "width": 1.0,
         "image_size": 224, "min_crop_scale": 0.08, "kmeans_iters": 20, "reassign": 1,
         "dropout": 0.5, "flip": True, "jitter": 0.0, "k_levels": 1, "head": "fc"}


@pytest.mark.parametrize("arch", ["alexnet", "vgg16"])
def test_paper_preset_holds_the_papers_values(arch):
    config = parse_config(["--config", str(CONFIGS / f"paper-{arch}.toml"), "--data", "X"])
    assert config.arch == arch
    assert {name: getattr(config, name) for name in PAPER} == PAPER
    if arch == "alexnet":
        assert config.pool2  # the max-pool after conv2 (vgg16 keeps its own pools)


@pytest.mark.parametrize("arch", ["alexnet", "vgg16"])
def test_paper_preset_runs_one_tiny_epoch(arch, tmp_path):
    # The preset with the sizes shrunk to a CPU test: everything else comes from the file.
    out = tmp_path / "run"
    assert main(["--config", str(CONFIGS / f"paper-{arch}.toml"), "--data", "digits",
                 "--max-images", "48", "--image-size", "32", "--width", "0.0625", "--k", "4",
                 "--pca-dim", "8", "--kmeans-iters", "3", "--batch-size", "16", "--epochs", "1",
                 "--workers", "0", "--out", str(out)]) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert record["epoch"] == 0 and record["loss"] > 0
