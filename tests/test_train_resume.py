"""A run SIGKILLed during an epoch and resumed matches an uninterrupted run exactly (CPU)."""

import json
import os
import signal
import subprocess
import sys

import torch

from deepcluster.checkpoint import load_checkpoint

ARGS = ["--data", "digits", "--max-images", "96", "--image-size", "16", "--width", "0.125",
        "--k", "4", "--pca-dim", "8", "--kmeans-iters", "5", "--batch-size", "16",
        "--epochs", "2", "--workers", "0", "--seed", "5", "--device", "cpu", "--log-every", "0"]
TIMINGS = {"time_features", "time_pca", "time_kmeans", "time_train"}


def _command(out, *extra):
    return [sys.executable, "-m", "deepcluster.train", *ARGS, "--out", str(out), *extra]


def _records(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in rows]


def test_kill_during_epoch_then_resume_matches(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same kernels in every process
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(_command(reference), check=True, env=env, capture_output=True, timeout=300)

    proc = subprocess.Popen(_command(killed), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.startswith("epoch 1 step 2/6"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # Killed during epoch 1: the checkpoint holds epoch 0 only.
    assert load_checkpoint(killed / "checkpoint.pt")["epoch"] == 1
    assert [r["epoch"] for r in _records(killed)] == [0]

    subprocess.run(_command(killed, "--resume"), check=True, env=env, capture_output=True,
                   timeout=300)
    expected, got = _records(reference), _records(killed)
    assert [r["epoch"] for r in got] == [0, 1]
    assert got == expected
    final_ref = load_checkpoint(reference / "checkpoint.pt")
    final = load_checkpoint(killed / "checkpoint.pt")
    for name, tensor in final_ref["model"].items():
        assert torch.equal(final["model"][name], tensor), name
    assert torch.equal(final["assignments"], final_ref["assignments"])
