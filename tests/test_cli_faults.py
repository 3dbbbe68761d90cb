"""deepcluster-train / deepcluster-eval under faults and bad input (issue 16): one `error:` line
and exit 2 (130 for Ctrl-C), nothing lost, nothing mixed.

Faults are injected: a second trainer on the same --out, SIGKILL / SIGSTOP / SIGINT sent to a
trainer subprocess, a disk that fills (a writer patched to raise ENOSPC), a read-only file
system (fsync raising EROFS), memory that runs out (the free-memory reader patched, or an
allocation raising torch's out-of-memory error).
"""

import errno
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from deepcluster import eval as dc_eval
from deepcluster import memory, rundir
from deepcluster.checkpoint import CheckpointError, load_checkpoint
from deepcluster.config import ConfigError, parse_config
from deepcluster.rundir import OutputError, append_line
from deepcluster.train import main

ROOT = Path(__file__).resolve().parents[1]
# A network, a clustering and a dataset small enough for seconds per epoch on a CPU.
TINY = ["--image-size", "16", "--width", "0.125", "--k", "3", "--pca-dim", "8",
        "--kmeans-iters", "5", "--batch-size", "8", "--workers", "0", "--device", "cpu",
        "--kmeans-backend", "torch"]


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the problems are tiny, and threaded LAPACK (PCA's eigh) on a busy
    2-core machine is much slower than one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def data(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (24, 12, 12), dtype=np.uint8)
    np.savez(tmp_path / "tiny.npz", x_train=images)
    return ["--data", str(tmp_path / "tiny.npz")]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 1-epoch run directory (copy it before changing it)."""
    root = tmp_path_factory.mktemp("finished")
    images = np.random.default_rng(0).integers(0, 256, (24, 12, 12), dtype=np.uint8)
    np.savez(root / "tiny.npz", x_train=images)
    args = ["--data", str(root / "tiny.npz"), *TINY, "--epochs", "1", "--out", str(root / "run")]
    assert main(args) == 0
    return root / "run", args[:-2]


def _copy(run, tmp_path):
    return Path(shutil.copytree(run, tmp_path / "run"))


def _fail(args, capsys, code=2):
    """Run the trainer, expect ``code`` and exactly one line on stderr; return that line."""
    assert main(args) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _wait_for(path, proc, timeout=240):
    """Block until ``path`` exists (the subprocess reached that point), failing if it ends."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"trainer ended early: {proc.communicate()}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


# ---- values checked where they enter, before anything is read or written

@pytest.mark.parametrize("flag,value,message", [
    ("--seed", "-1", "seed must be in [0, 2**32)"),
    ("--seed", str(2**40), "seed must be in [0, 2**32)"),
    ("--dist-timeout", "inf", "dist_timeout must be in (0, 525600]"),
    ("--dist-timeout", "1e15", "dist_timeout must be in (0, 525600]"),
    ("--pca-power", "nan", "pca_power must be in [-1, 1]"),
    ("--lr", "inf", "lr must be a positive number"),
    ("--wd", "inf", "wd must be a number >= 0"),
    ("--width", "nan", "width must be a positive number"),
    ("--log-every", "inf", "log_every must be >= 0"),
])
def test_bad_values_are_refused_before_the_data(flag, value, message, tmp_path, capsys):
    # The data does not exist: the value must be refused before it is looked for.
    line = _fail(["--data", str(tmp_path / "missing"), flag, value, "--out", "none"], capsys)
    assert message in line and "missing" not in line


def test_yaml_numbers_and_duplicate_keys(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("lr: 1e-2\nwd: 5E-4\nk: 7\n")  # YAML 1.1 reads 1e-2 as a string
    config_from_yaml = parse_config(["--config", str(config)])
    assert (config_from_yaml.lr, config_from_yaml.wd, config_from_yaml.k) == (0.01, 0.0005, 7)
    config.write_text("k: 7\nlr: 0.1\nk: 9\n")
    with pytest.raises(ConfigError, match=r"'k' is given twice \(lines 1 and 3\)"):
        parse_config(["--config", str(config)])
    config.write_text("lr: fast\n")
    with pytest.raises(ConfigError, match="lr must be float.*1e-2"):
        parse_config(["--config", str(config)])


def test_out_under_a_file_is_refused_before_the_data(tmp_path, capsys):
    (tmp_path / "file").write_text("not a directory")
    line = _fail(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "file" / "run")],
                 capsys)
    assert f"{tmp_path / 'file'} is a file, not a directory" in line


def test_read_only_out_is_refused_before_the_data(tmp_path, capsys, monkeypatch):
    def read_only(fd):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(os, "fsync", read_only)
    line = _fail(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run")], capsys)
    assert f"cannot write to --out {tmp_path / 'run'}: read-only file system" in line
    assert not (tmp_path / "run").exists()  # created for the probe, removed again


def test_memory_is_checked_before_allocating(data, capsys, monkeypatch):
    # --image-size 200000 is not "too small": it needs far more memory than any machine has.
    line = _fail([*data, *TINY[2:], "--image-size", "200000", "--out", "none"], capsys)
    assert "not enough memory on cpu" in line and "--image-size" in line
    assert "too small" not in line
    # A machine with 64 KiB free refuses even the tiny network.
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**16)
    line = _fail([*data, *TINY, "--out", "none"], capsys)
    assert "not enough memory on cpu" in line and "0.00 GiB free" in line


def test_footprint_counts_parameters_gradients_momentum_and_activations():
    spec = {"arch": "alexnet", "num_clusters": 5, "sobel": False, "in_channels": 3,
            "image_size": 32, "width": 0.125}
    got = memory.footprint(spec, 4)
    torch.manual_seed(0)
    from deepcluster.models import build_model
    model = build_model(**spec)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert got.params == params and got.model_bytes == 4 * (params + 2 * trainable)
    # The activations: every layer's output for a batch of 4 (in-place layers share theirs).
    kept = []
    hooks = [m.register_forward_hook(lambda m, i, o: kept.append(o.numel()))
             for m in model.modules()
             if not list(m.children()) and not getattr(m, "inplace", False)]
    model.train()
    model(torch.zeros(4, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    assert got.batch_bytes == 4 * sum(kept) > 0


def test_out_of_memory_during_the_run_is_one_line(data, tmp_path, capsys, monkeypatch):
    def exhausted(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", exhausted)
    line = _fail([*data, *TINY, "--out", str(tmp_path / "run")], capsys)
    assert "out of memory: lower --batch-size (now 8)" in line


# ---- the output directory

def test_default_out_and_write_nothing(data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*data, *TINY, "--epochs", "1"]) == 0
    printed = capsys.readouterr().out
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("tiny-") and f"output directory: {Path('runs') / run.name}" \
        in printed and f"run written to {Path('runs') / run.name}" in printed
    assert {"config.yaml", "metrics.jsonl", "checkpoint.pt", "nmi.png"} <= \
        {p.name for p in run.iterdir()}
    assert not (run / ".lock").exists()
    assert load_checkpoint(run / "checkpoint.pt")["config"]["out"] == str(Path("runs") / run.name)
    # --out none writes nothing at all; a run refused at set-up leaves no directory behind.
    shutil.rmtree(tmp_path / "runs")
    assert main([*data, *TINY, "--epochs", "1", "--out", "none"]) == 0
    assert _fail([*data, *TINY, "--k", "500"], capsys).endswith("choose --k at most that")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.npz"]


def test_a_second_writer_is_refused_and_a_dead_ones_lock_is_taken_over(data, tmp_path, capsys):
    out = tmp_path / "run"
    args = [*data, *TINY, "--epochs", "50", "--out", str(out)]
    first = subprocess.Popen([sys.executable, "-m", "deepcluster.train", *args], env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(out / "config.yaml", first)
        first.send_signal(signal.SIGSTOP)  # frozen before its first checkpoint, lock held
        assert not (out / "checkpoint.pt").exists()
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        for extra in ([], ["--resume"]):
            line = _fail([*args, *extra], capsys)
            assert f"--out {out} is in use by another deepcluster-train (pid {first.pid}" in line
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    finally:
        first.kill()
        first.wait()
    # Killed before its first checkpoint, with a half-written one: --resume starts it over,
    # its lock file recognised as a dead process's, its metrics set aside.
    (out / "checkpoint.pt.tmp").write_bytes(b"PK\x03\x04 half a checkpoint")
    (out / "metrics.jsonl").write_text('{"epoch": 0, "loss": 1.5}\n')
    assert (out / ".lock").exists()
    assert main([*args[:-4], "--epochs", "1", "--out", str(out), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert f"locked by a process that has ended (pid {first.pid} on host" in printed
    assert "ended before its first checkpoint: starting it over at epoch 0" in printed
    (aside,) = out.glob("unfinished-*")
    assert (aside / "metrics.jsonl").read_text() == '{"epoch": 0, "loss": 1.5}\n'
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    assert not list(out.glob("*.tmp")) and not (out / ".lock").exists()


def test_diverged_first_epoch_restarts_without_deleting(data, tmp_path, capsys):
    out = tmp_path / "run"
    line = _fail([*data, *TINY, "--lr", "1e30", "--out", str(out)], capsys)
    assert "lower --lr or --wd" in line and f"no checkpoint yet in {out}" in line
    # The same --out, without --resume and without deleting anything by hand.
    assert main([*data, *TINY, "--epochs", "1", "--out", str(out)]) == 0
    assert len(list(out.glob("unfinished-*/config.yaml"))) == 1
    assert [r["epoch"] for r in map(json.loads, (out / "metrics.jsonl").open())] == [0]


# ---- checkpoints and metrics files

def test_malformed_checkpoints_are_named_in_one_line(finished_run, tmp_path, capsys):
    run = _copy(finished_run[0], tmp_path)
    good = (run / "checkpoint.pt").read_bytes()
    state = load_checkpoint(run / "checkpoint.pt")
    partial = dict(state)
    del partial["config"], partial["model_spec"]
    torch.save(partial, tmp_path / "nokeys.pt")
    np.savez(tmp_path / "arrays.npz", x=np.zeros(3))
    cases = {
        "empty": (b"", "is empty (0 bytes)"),
        "truncated": (good[: len(good) // 2], "truncated or damaged"),
        "png": (b"\x89PNG\r\n\x1a\n" + bytes(64), "not a PyTorch file"),
        "text": (b"epoch 3\n", "not a PyTorch file"),
        "zip": ((tmp_path / "arrays.npz").read_bytes(), "a zip archive but not a PyTorch file"),
        "keys": ((tmp_path / "nokeys.pt").read_bytes(), "config missing; model_spec missing"),
    }
    args = [*finished_run[1], "--epochs", "2", "--out", str(run), "--resume"]
    for name, (content, message) in cases.items():
        (run / "checkpoint.pt").write_bytes(content)
        with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_checkpoint(run / "checkpoint.pt")
        line = _fail(args, capsys)
        assert message in line, name
        assert (run / "checkpoint.pt").read_bytes() == content  # left as it was


def test_partial_last_metrics_line_is_tolerated_on_resume(finished_run, tmp_path, capsys):
    run = _copy(finished_run[0], tmp_path)
    args = [*finished_run[1], "--epochs", "2", "--out", str(run), "--resume"]
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 1, "loss": 1.0, "time_tr')  # killed while appending
    assert main(args) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    # A malformed line that is not the last one is not ours to drop.
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(["garbage", *lines]) + "\n")
    line = _fail([*finished_run[1], "--epochs", "3", "--out", str(run), "--resume"], capsys)
    assert "metrics.jsonl line 1 is not a per-epoch record" in line


def test_resume_where_the_automatic_sobel_chooses_otherwise_names_the_flag(finished_run,
                                                                          tmp_path, capsys):
    # Sobel on grey images, as every run had before --sobel became automatic (off for grey).
    run = str(tmp_path / "run")
    assert main([*finished_run[1], "--sobel", "--out", run]) == 0
    resume = [*finished_run[1], "--epochs", "2", "--out", run, "--resume"]
    line = _fail(resume, capsys)
    assert ("ran with sobel True, the automatic --sobel chooses False for these images: resume "
            "with --sobel") in line
    assert main([*resume, "--sobel"]) == 0


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_an_append_to_a_full_disk_says_so():
    # /dev/full answers every write with ENOSPC, as a full disk does.
    with pytest.raises(OutputError, match="cannot append to /dev/full: no space left on device"):
        append_line(Path("/dev/full"), '{"epoch": 0}')


def test_ctrl_c_inside_a_writer_that_fails_while_unwinding_stays_ctrl_c(tmp_path):
    # torch.save's zip writer raises a RuntimeError from its __exit__ when a KeyboardInterrupt
    # cut a record short; the interruption, not that consequence, is what happened.
    class ZipWriter:
        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            raise RuntimeError("unexpected pos 1683648 vs 1683536")

    def interrupted(f):
        with ZipWriter():
            f.write(b"new")
            raise KeyboardInterrupt

    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        rundir.write_atomic(path, interrupted)
    assert path.read_bytes() == b"old" and list(tmp_path.iterdir()) == [path]


def test_disk_full_at_the_first_checkpoint(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04" + bytes(1000))  # part of the archive, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", disk_full)
    args = [*data, *TINY, "--epochs", "1", "--out", str(out)]
    line = _fail(args, capsys)
    assert f"cannot write {out / 'checkpoint.pt'}: no space left on device" in line
    assert not (out / "checkpoint.pt").exists() and not list(out.glob("*.tmp"))
    # Space freed: --resume (or the same command) continues from scratch.
    monkeypatch.setattr(torch, "save", real_save)
    assert main([*args, "--resume"]) == 0
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1


def test_disk_full_while_resuming_leaves_config_and_checkpoint(finished_run, tmp_path, capsys,
                                                               monkeypatch):
    run = _copy(finished_run[0], tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    args = [*finished_run[1], "--epochs", "2", "--out", str(run), "--resume"]
    # The disk fills after the start-up probe: the config.yaml rewrite is the first to fail.
    real_probe = rundir._probe

    def probe_then_full(path):
        real_probe(path)
        monkeypatch.setattr(os, "fsync", disk_full)
    monkeypatch.setattr(rundir, "_probe", probe_then_full)
    line = _fail(args, capsys)
    assert f"cannot write {run / 'config.yaml'}: no space left on device" in line
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


# ---- Ctrl-C

def test_ctrl_c_keeps_the_checkpoint_and_prints_the_resume_command(data, tmp_path):
    out = tmp_path / "run"
    args = [*data, *TINY, "--epochs", "50", "--out", str(out)]
    # A shell starts background jobs with SIGINT ignored, and Python keeps an ignored SIGINT:
    # the trainer gets the default disposition back, as in a terminal, whoever runs pytest.
    proc = subprocess.Popen([sys.executable, "-m", "deepcluster.train", *args], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for(out / "checkpoint.pt", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"deepcluster-train: interrupted; {out / 'checkpoint.pt'} is "
                               "intact; resume with: deepcluster-train ")
    command = shlex.split(lines[0].split("resume with: ")[1])
    assert command[1:] == [*args, "--resume"]
    epoch = load_checkpoint(out / "checkpoint.pt")["epoch"]
    assert epoch >= 1 and not list(out.glob("*.tmp")) and not (out / ".lock").exists()
    # The printed command continues the run (here for one more epoch).
    assert main([*command[1:], "--epochs", str(epoch + 1)]) == 0
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == epoch + 1


# ---- deepcluster-eval

def _eval_fail(args, capsys):
    assert dc_eval.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_eval_checks_values_and_out_before_loading(tmp_path, capsys, monkeypatch):
    missing = ["--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "eval")]
    for flag, value, message in (("--batch-size", "0", "--batch-size must be at least 1"),
                                 ("--workers", "-1", "--workers must be at least 0"),
                                 ("--probe-epochs", "0", "--probe-epochs must be at least 1"),
                                 ("--kmeans-redo", "0", "--kmeans-redo must be at least 1"),
                                 ("--seed", "-3", "--seed must be in [0, 2**32)")):
        assert message in _eval_fail([*missing, flag, value], capsys)

    def read_only(fd):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(os, "fsync", read_only)
    line = _eval_fail(missing, capsys)
    assert f"cannot write to --out {tmp_path / 'eval'}: read-only file system" in line


def test_eval_refuses_a_non_zip_npz(finished_run, tmp_path, capsys):
    np.save(tmp_path / "array.npy", np.zeros((4, 8, 8), dtype=np.uint8))
    os.replace(tmp_path / "array.npy", tmp_path / "array.npz")
    (tmp_path / "pickled.npz").write_bytes(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.")
    for name in ("array.npz", "pickled.npz"):
        line = _eval_fail(["--checkpoint", str(finished_run[0] / "checkpoint.pt"), "--data",
                           str(tmp_path / name), "--out", str(tmp_path / "eval")], capsys)
        assert line.endswith(f"{tmp_path / name} is not an .npz archive (not a zip file)")


def test_eval_ctrl_c_is_one_line_and_130(finished_run, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(dc_eval, "load_splits", interrupted)
    assert dc_eval.main(["--checkpoint", str(finished_run[0] / "checkpoint.pt"), "--out",
                         str(tmp_path / "eval")]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("deepcluster-eval: interrupted")
