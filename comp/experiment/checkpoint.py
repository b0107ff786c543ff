"""The checkpoint file: one plain dict of tensors and plain values, written atomically, loaded with
`weights_only=True` (so a checkpoint can never run code).

A training checkpoint holds everything a resumed run needs to continue exactly: model, EMA, optimizer,
scaler, epoch, position within the epoch, best score, history, and every RNG state. The
data order and augmentation are functions of (seed, epoch, position) (comp.data.loader), so the position is
all that is saved of the loader. The resolved config rides along, so a resume can say which settings
changed (`check_resume`) and refuse the ones that would change what the weights mean.

Keys: format_version, model, ema, optimizer, scaler, epoch (in progress, or next when step is
0), step (optimizer steps of that epoch done), partial (that epoch's running loss sums), best,
bad_epochs, history (the metrics.csv rows), rng (one state per DDP rank), world_size, config,
config_hash, model_name, num_classes, in_chans, classes, fold, metric, eval_weights ("ema", "model" or "swa"),
inputs and task (what the model sees and predicts: comp.experiment.model).
"""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from comp import io
from comp.config import HASHED_KEYS, config_hash
from comp.errors import UserError

FORMAT_VERSION = 1  # bump when the dict's layout changes; files from a newer kit are refused


def save(obj: dict[str, Any], path: Path) -> None:
    """Write a checkpoint atomically (comp.io: temporary file, fsync, rename): a kill at any moment leaves
    either the old file or the new one, never half of one.

    Raises:
        UserError: the disk is full or the folder not writable; the previous file is intact.
    """
    io.save_torch(path, obj, what="checkpoint")


def load(path: Path) -> dict[str, Any]:
    """Load a checkpoint dict with weights_only=True.

    Raises:
        UserError: missing, empty, truncated, not a kit checkpoint, from a newer kit, or carrying pickled
            code (which the weights_only unpickler refuses without running it).
    """
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"cannot load checkpoint {path}: the file is empty (0 bytes)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        msg = str(e).strip()
        code = re.search(r"Unsupported global: GLOBAL (\S+)", msg)
        if code:  # the unpickler met a function or class to call, and called nothing
            why = f"it holds pickled code ({code.group(1)}), refused (weights_only=True)"
        else:  # torch explains at length; the unpickler's own words, or the first sentence, are the point
            detail = re.search(r"WeightsUnpickler error:\s*(.+)", msg)
            first = detail.group(1).strip() if detail else (msg.splitlines()[0].split(". ")[0] if msg else "")
            why = f"truncated or not a PyTorch checkpoint ({type(e).__name__}{': ' + first if first else ''})"
        raise UserError(f"cannot load checkpoint {path}: {why}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise UserError(f"{path} is not a kit checkpoint (no 'model' state dict)")
    version = ckpt.get("format_version", 0)
    if not isinstance(version, int):
        raise UserError(f"{path} has an unknown checkpoint format_version {version!r}")
    if version > FORMAT_VERSION:
        raise UserError(f"{path} was written by a newer kit (format {version} > {FORMAT_VERSION}); update the kit")
    return ckpt


# What each use of a checkpoint reads from it (a file of an older layout may lack some)
PREDICT_KEYS = ("model", "model_name", "num_classes", "in_chans")
RESUME_KEYS = (*PREDICT_KEYS, "config_hash", "optimizer", "scaler", "epoch", "step", "best", "bad_epochs", "history",
               "rng")


def require(ckpt: dict[str, Any], path: Path, keys: tuple[str, ...], use: str) -> None:
    """Refuse a checkpoint that lacks what `use` reads, naming the first missing key and its format.

    Raises:
        UserError: e.g. a file of an older kit layout, or weights saved by hand.
    """
    missing = [k for k in keys if k not in ckpt]
    if missing:
        raise UserError(f"{path} cannot be used to {use}: it has no {missing[0]!r} (checkpoint format "
                        f"{ckpt.get('format_version', 0)}, this kit writes {FORMAT_VERSION}: an older kit's file or "
                        f"weights saved by hand)")


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, name: str) -> None:
    """`model.load_state_dict(state)` (strict), a mismatch told in one line naming the first bad key.

    Raises:
        UserError: the weights are of another architecture or class count.
    """
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = next((ln for ln in lines[1:] if ln), lines[0] if lines else "")
        raise UserError(f"{path}: the weights do not fit {name}: {detail[:300]}") from None


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


def set_rng_state(state: dict[str, Any]) -> list[str]:
    """Put back the RNG states of `rng_state()`, as far as this machine has them: Python's, NumPy's and
    torch's CPU generator always; the CUDA generators of the GPUs both the checkpoint and this machine
    have (a resume with fewer or more visible GPUs, or on a CPU). Returns what could not be restored, as
    phrases for a log line (empty when everything was)."""
    random.setstate(_tuples(state["python"]))
    np.random.set_state(_tuples(state["numpy"]))
    torch.set_rng_state(state["torch"])
    saved = list(state.get("cuda") or [])
    here = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for i, s in enumerate(saved[:here]):
        torch.cuda.set_rng_state(s, i)
    missed = []
    if len(saved) > here:
        missed.append(f"the CUDA RNG of {len(saved) - here} of the checkpoint's {len(saved)} GPU(s) "
                      f"(this machine has {here})")
    if here > len(saved):
        missed.append(f"the CUDA RNG of {here - len(saved)} GPU(s) the checkpoint did not have (kept as seeded)")
    return missed


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


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """A short sha256 of a state dict's names, dtypes, shapes and bytes: equal digests, equal weights
    bit for bit (how DDP ranks check that they agree)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def settings_changes(ckpt: dict[str, Any], cfg: Any) -> dict[str, tuple[Any, Any]]:
    """The settings that differ between the config a checkpoint was saved with (its `config` key) and
    `cfg`: {dotted key: (checkpoint's value, now)}; empty when the checkpoint carries no config."""
    old = _flat(ckpt["config"]) if isinstance(ckpt.get("config"), dict) else {}
    now = _flat(OmegaConf.to_container(cfg, resolve=True))
    return {k: (old.get(k), now.get(k)) for k in sorted(set(old) | set(now)) if old and old.get(k) != now.get(k)}


def meaning_changes(ckpt: dict[str, Any], cfg: Any, changes: dict[str, tuple[Any, Any]] | None = None
                    ) -> str | None:
    """None when checkpoint `ckpt` was trained with the model, data, image and fold settings of `cfg` (the
    config hash, HASHED_KEYS); otherwise what differs, `key old -> new, ...` (the hashes when the
    checkpoint carries no config). What --resume checks (check_resume); prediction checks only what the
    model sees (comp.experiment.model.check_config).

    Args:
        changes: `settings_changes(ckpt, cfg)` when the caller has it already.
    """
    want = config_hash(cfg)
    if ckpt.get("config_hash") == want:
        return None
    changes = settings_changes(ckpt, cfg) if changes is None else changes
    hashed = [k for k in changes if any(k == h or k.startswith(h + ".") for h in HASHED_KEYS)]
    return ", ".join(f"{k} {changes[k][0]!r} -> {changes[k][1]!r}" for k in hashed) or \
        f"config hash {ckpt.get('config_hash')} -> {want}"


def check_resume(ckpt: dict[str, Any], path: Path, cfg: Any, world_size: int) -> dict[str, tuple[Any, Any]]:
    """May the run of checkpoint `ckpt` go on under `cfg`? Returns the settings that changed,
    {dotted key: (checkpoint's value, now)}: epochs, logging, lr... are free to change.

    Raises:
        UserError: the model, data, image or fold settings differ (the config hash: the weights would
            mean something else), another optimizer, or a mid-epoch checkpoint with another batch shape
            or process count (its position in the epoch is counted in batches).
    """
    changes = settings_changes(ckpt, cfg)
    what = meaning_changes(ckpt, cfg, changes)
    if what:
        raise UserError(f"--resume: {path} was trained with another model, data or fold setting ({what}); "
                        f"resume with the same settings, or set another out_dir")
    if "optim.name" in changes:
        a, b = changes["optim.name"]
        raise UserError(f"--resume: {path} holds {a} optimizer state; optim.name={b} cannot continue it")
    if ckpt.get("step", 0) > 0:
        for key in ("batch_size", "train.accum_steps"):
            if key in changes:
                raise UserError(f"--resume: {path} stopped mid-epoch with {key}={changes[key][0]}; resume with "
                                f"that (it may change at an epoch boundary, from last.pt)")
        if ckpt.get("world_size", 1) != world_size:
            raise UserError(f"--resume: {path} stopped mid-epoch with {ckpt.get('world_size', 1)} processes; "
                            f"resume with the same --nproc_per_node")
    return changes
