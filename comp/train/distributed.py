"""DDP under torchrun: the process group, agreeing on numbers across ranks, gathering each rank's share of
the validation images back into order, and checking that every rank ends with the same weights.

Rank 0's BatchNorm statistics are the ones that count: DDP broadcasts them before every forward pass,
and validation hands them to every rank (timm's `distribute_bn`), so a checkpoint of rank 0 (holding
every rank's RNG state) resumes every rank exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from comp.device import compile_model
from comp.log import log


@dataclass
class Dist:
    """This process's place under torchrun (rank 0 of 1 without it)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK: NCCL between GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device != "cpu" and torch.cuda.is_available():
            torch.cuda.set_device(local)
            dist.init_process_group("nccl", device_id=torch.device("cuda", local))
        else:
            dist.init_process_group("gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local)


def agree(d: Dist, device: torch.device, *values: float) -> list[float]:
    """Sum `values` over all ranks (flags: > 0 when any rank raised one). Collective under DDP."""
    if d.world == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def gather_rows(d: Dist, index: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """(n, ...) rows in dataset order from every rank's share (rank r holds the rows `index`).
    Collective under DDP; without it `rows` is already the whole."""
    if d.world == 1:
        return rows
    parts: list[Any] = [None] * d.world
    dist.all_gather_object(parts, (index, rows))
    full = np.zeros((n, *rows.shape[1:]), rows.dtype)
    for i, r in parts:
        full[i] = r
    return full


def gather_objects(d: Dist, obj: Any) -> list[Any]:
    """`obj` from every rank, in rank order (one element without DDP). Collective under DDP."""
    if d.world == 1:
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def wrap_ddp(raw: torch.nn.Module, device: torch.device, compile_: bool | str, old: Any = None) -> Any:
    """A DistributedDataParallel wrapper of `raw` for its current trainable parameters (DDP all-reduces
    the parameters that require gradients when it is built: wrapped while the backbone is frozen it syncs
    the head alone, and it needs no `find_unused_parameters` traversal every step). Building it
    broadcasts rank 0's parameters and buffers, which every rank holds already. Returns (ddp, the module
    the forward pass calls: compiled around the wrapper in `compile_`'s mode (train.compile,
    comp.device.compile_model), so its gradient buckets are seen)."""
    if old is not None and compile_:
        torch.compiler.reset()  # compiled code holds the old wrapper, whose gradient hooks must go with it
    ddp = torch.nn.parallel.DistributedDataParallel(raw, device_ids=[device.index] if device.type == "cuda" else None)
    return ddp, compile_model(ddp, compile_)


def check_ranks_agree(d: Dist, digests: tuple[str, str], fold: int) -> None:
    """Every rank must end with the same weights (and EMA), given as sha256 digests; a divergence is a bug
    of the kit, not a user error. Collective under DDP."""
    all_digests = gather_objects(d, digests)
    if len(set(all_digests)) != 1:
        raise RuntimeError(f"the {d.world} processes ended with different weights: {all_digests}")
    if d.main:
        log(f"fold {fold}: the {d.world} processes agree, weights sha256 {digests[0]}")
