"""Checkpoints: one plain dict of tensors and plain values, written atomically, loaded with
`weights_only=True` (so a checkpoint can never run code).

A training checkpoint holds everything a resumed run needs to continue exactly: model, EMA, optimizer,
scheduler, scaler, epoch, position within the epoch, best score, history, and every RNG state. The
data order and augmentation are functions of (seed, epoch, position) (comp.dataset), so the position is
all that is saved of the loader.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from comp.errors import UserError

FORMAT_VERSION = 1  # bump when the dict's layout changes; older files are refused with a message


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same folder, fsync it, then rename over `path`: a kill at any
    moment leaves either the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # disk full, permission: the old file stays as it was
        tmp.unlink(missing_ok=True)
        raise UserError(f"could not write checkpoint {path}: {e.strerror or e}; the previous one is intact") from None
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def load(path: Path) -> dict[str, Any]:
    """Load a checkpoint dict with weights_only=True.

    Raises:
        UserError: missing, truncated, not a kit checkpoint, or carrying pickled code.
    """
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            why = "it holds pickled code or objects, refused (weights_only=True)"
        raise UserError(f"cannot load checkpoint {path}: {why}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise UserError(f"{path} is not a kit checkpoint (no 'model' state dict)")
    version = ckpt.get("format_version", 0)
    if version > FORMAT_VERSION:
        raise UserError(f"{path} was written by a newer kit (format {version} > {FORMAT_VERSION}); update the kit")
    return ckpt


def rng_state() -> dict[str, Any]:
    """Every RNG the training step can draw from, as tensors and plain values."""
    state = {
        "python": _plain(random.getstate()),
        "numpy": _plain(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    np.random.set_state(_tuples(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(x: Any) -> Any:
    """RNG states as lists/ints/str/tensors, which the weights_only unpickler accepts."""
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x.astype(np.int64))
    if isinstance(x, tuple):
        return [_plain(v) for v in x]
    return x


def _tuples(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.numpy().astype(np.uint32)
    if isinstance(x, list):
        return tuple(_tuples(v) for v in x)
    return x


def newest(paths: list[Path]) -> tuple[Path, dict[str, Any]] | None:
    """The most advanced loadable checkpoint among `paths` by (epoch, step); unreadable ones skipped."""
    best = None
    for p in paths:
        if not p.is_file():
            continue
        try:
            ckpt = load(p)
        except UserError:
            continue
        if "epoch" not in ckpt:
            continue
        key = (ckpt["epoch"], ckpt.get("step", 0))
        if best is None or key > best[0]:
            best = (key, p, ckpt)
    return None if best is None else (best[1], best[2])
