"""Checkpoints: written atomically, read without executing code, rebuilt into models.

A checkpoint is a dict of tensors and plain Python values only (no pickled classes), so
``torch.load(weights_only=True)`` reads it and a file from elsewhere cannot run code:

    format       "deepcluster/1"
    config       the run's Config as a dict
    model_spec   build_model's arguments (arch, num_clusters, sobel, in_channels, image_size,
                 width, dropout, head, pool2; older files lack dropout: 0.5, head: the FC
                 head of alexnet / vgg16, and pool2: on)
    model        the network's state_dict (top layer included)
    optimizer, top_optimizer, scaler   state_dicts (scaler: {} without AMP on CUDA)
    epoch        number of finished epochs (the next epoch to run)
    rng          torch / CUDA / NumPy / Python global RNG states
    assignments  (N, levels) int64 pseudo-labels of the last clustering, one column per
                 clustering level (k first; older files: (N,), one level)
    num_images   the dataset size the run used

For evaluation: ``model, config = model_from_checkpoint(path)`` and
``deepcluster.data.eval_transform(model_spec["image_size"])`` then ``data.normalize`` rebuild the
feature extractor (``model.embed``) and its input pipeline.
"""

import dataclasses
import pickle
import random
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import RESUMABLE, Config
from .models import DeepClusterNet, build_model, default_head
from .rundir import write_atomic

FORMAT = "deepcluster/1"
# Every key of a checkpoint and the type of its value.
KEYS = {"config": dict, "model_spec": dict, "model": dict, "optimizer": dict,
        "top_optimizer": dict, "scaler": dict, "epoch": int, "rng": dict,
        "assignments": torch.Tensor, "num_images": int}
# What evaluation reads: the network and the last clustering (no training state).
MODEL_KEYS = ("config", "model_spec", "model", "epoch", "assignments")
MODEL_SPEC_KEYS = {"arch", "num_clusters", "sobel", "in_channels", "image_size", "width"}
# Settings added with a default other than the behaviour before them: a checkpoint that does not
# name one ran with this value.
EARLIER_BEHAVIOUR = {"dropout": 0.5, "flip": True, "jitter": 0.0, "k_levels": 1}


def earlier_behaviour(saved: dict[str, Any]) -> dict[str, Any]:
    """``EARLIER_BEHAVIOUR`` for the run whose config is ``saved``, with its head: before --head,
    alexnet and vgg16 had the FC head and the ResNets none."""
    return {**EARLIER_BEHAVIOUR, "head": default_head(str(saved.get("arch", "")))}


def level_assignments(assignments: torch.Tensor) -> torch.Tensor:
    """A checkpoint's ``assignments`` as (N, levels), the k clustering in column 0."""
    return assignments.reshape(assignments.shape[0], -1)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not belong to this run."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` via a temporary file and an atomic rename, so that a kill at
    any moment leaves either the previous checkpoint or the new one, never a broken file; a
    failed write (a full disk) raises ``rundir.OutputError`` and leaves no temporary file."""
    write_atomic(Path(path), lambda f: torch.save({"format": FORMAT, **state}, f))


def _unreadable(path: Path, exc: Exception) -> CheckpointError:
    """What is wrong with a file ``torch.load`` refused, in one line."""
    unsafe = ("cannot be loaded safely (weights_only): it holds objects other than tensors and "
              "plain values, so it is no deepcluster checkpoint")
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            names = None
        if names is None:
            why = "is truncated or damaged (an incomplete zip archive): not a whole checkpoint"
        elif not any(name.endswith("data.pkl") for name in names):
            why = "is a zip archive but not a PyTorch file: another program's file"
        elif isinstance(exc, pickle.UnpicklingError):
            why = unsafe
        else:
            why = f"is damaged: {(str(exc).strip() or type(exc).__name__).splitlines()[0]}"
    elif head.startswith(b"\x80") and isinstance(exc, pickle.UnpicklingError):
        why = unsafe  # a pickle (torch's legacy format) holding more than tensors and values
    else:
        why = "is not a PyTorch file: another program's file, or damaged"
    return CheckpointError(f"checkpoint {path} {why}")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    keys: Iterable[str] = tuple(KEYS)) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no code from the file runs).

    Returns the dict described in the module docstring; raises ``CheckpointError`` with a
    one-line reason when the file is missing, empty, truncated, another program's, holds
    anything but tensors and plain values, or lacks one of ``keys`` (default: all, as resuming
    needs; ``MODEL_KEYS`` for the network alone).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        if path.stat().st_size == 0:
            raise CheckpointError(f"checkpoint {path} is empty (0 bytes): not a checkpoint")
        state = torch.load(path, map_location=map_location, weights_only=True)
    except CheckpointError:
        raise
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: "
                              f"{(exc.strerror or str(exc)).lower()}") from exc
    except Exception as exc:  # torch raises many unrelated types for bad files
        raise _unreadable(path, exc) from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a deepcluster checkpoint (format {FORMAT!r})")
    problems = [f"{key} missing" if key not in state else f"{key} is not a {KEYS[key].__name__}"
                for key in keys if not isinstance(state.get(key), KEYS[key])]
    if not problems and "config" in keys:
        fields = {f.name for f in dataclasses.fields(Config)}
        problems += [f"unknown setting {name!r} in its config"
                     for name in sorted(set(state["config"]) - fields)]
    if not problems and "model_spec" in keys:
        problems += [f"model_spec lacks {name!r}"
                     for name in sorted(MODEL_SPEC_KEYS - set(state["model_spec"]))]
    if problems:
        raise CheckpointError(f"checkpoint {path} is incomplete or not of this version: "
                              f"{'; '.join(problems)}")
    return state


def check_compatible(saved: dict[str, Any], config: Config, path: str | Path) -> None:
    """Raise ``CheckpointError`` listing every setting (outside ``RESUMABLE``) on which the
    checkpoint's config differs from ``config``. A setting the checkpoint does not name came
    after it was written, and the run behaved as its default (or as ``earlier_behaviour``).
    An automatic ``sobel`` against a checkpoint that named it (written before it was automatic)
    is left to ``check_sobel``, once the images say what the automatic choice is."""
    current = config.to_dict()
    if config.sobel is None and isinstance(saved.get("sobel"), bool):
        current["sobel"] = saved["sobel"]
    defaults = {**Config().to_dict(), **earlier_behaviour(saved)}
    diffs = [f"{name}: checkpoint {saved.get(name, defaults[name])!r}, now {value!r}"
             for name, value in current.items()
             if name not in RESUMABLE and saved.get(name, defaults[name]) != value]
    if diffs:
        raise CheckpointError(f"checkpoint {path} comes from another configuration; resume with "
                              "the same settings (or use another --out):\n  " + "\n  ".join(diffs))


def check_sobel(spec: dict[str, Any], sobel: bool, path: str | Path) -> None:
    """Raise ``CheckpointError`` when the checkpoint's network (``spec``) and this run differ on
    Sobel: the automatic --sobel chose otherwise for these images than the run did."""
    if spec["sobel"] != sobel:
        flag = "--sobel" if spec["sobel"] else "--no-sobel"
        raise CheckpointError(f"checkpoint {path} ran with sobel {spec['sobel']}, the automatic "
                              f"--sobel chooses {sobel} for these images: resume with {flag}")


def model_from_checkpoint(source: str | Path | dict[str, Any],
                          device: str | torch.device = "cpu") -> tuple[DeepClusterNet, Config]:
    """The trained network (eval mode, on ``device``) and the Config of the run that made it.

    ``source`` is a checkpoint path or a dict from ``load_checkpoint``. The feature extractor is
    ``model.embed``; its input pipeline is ``data.eval_transform(model_spec["image_size"])``
    (uint8) then ``data.normalize``.
    """
    state = source if isinstance(source, dict) else load_checkpoint(source, keys=MODEL_KEYS)
    spec = state["model_spec"]
    try:
        model = build_model(spec["arch"], spec["num_clusters"], sobel=spec["sobel"],
                            in_channels=spec["in_channels"], image_size=spec["image_size"],
                            width=spec["width"],
                            dropout=spec.get("dropout", EARLIER_BEHAVIOUR["dropout"]),
                            head=spec.get("head"), pool2=spec.get("pool2", True))
        model.load_state_dict(state["model"])
    except (ValueError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"the checkpoint's weights do not fit its model_spec {spec}: "
                              f"{(str(exc).strip() or type(exc).__name__).splitlines()[0]}"
                              ) from exc
    return model.to(device).eval(), Config(**{**earlier_behaviour(state["config"]),
                                              **state["config"]})


def rng_state() -> dict[str, Any]:
    """The process-wide RNG states (torch, CUDA, NumPy legacy, Python) as tensors and numbers."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` saved (CUDA states only when CUDA is there)."""
    torch.set_rng_state(state["torch"].cpu())
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
