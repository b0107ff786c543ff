"""comp.data.loader: the epoch sampler (shuffled, weighted, resumed, split across DDP ranks), class weights,
the loader's uint8 hand-over and device-side normalisation, repeatable augmentation with worker processes,
workers that leave a stop signal to the main process and never hold up its exit, and the batches in flight
sized to the shared memory there is."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT

import comp.data.loader as loader_module
from comp.data.augment import build_transform
from comp.data.loader import (
    MAX_PREFETCH,
    EpochSampler,
    ImageDataset,
    batches_in_flight_bytes,
    class_weights,
    epoch_order,
    ignore_stop_signals,
    make_loader,
    prefetch_factor_for,
    shm_budget,
    to_input,
)
from comp.experiment import load_config


@pytest.mark.parametrize("n, world", [(10, 3), (12, 4), (7, 2), (5, 1)])
def test_ranks_partition_the_epoch(n, world):
    """DDP: each rank draws every world-th position of the same order; together they cover the epoch
    once, padded (as DistributedSampler does) to a multiple of world, every rank the same length."""
    full = list(EpochSampler(n, seed=1, epoch=2))
    ranks = [list(EpochSampler(n, seed=1, epoch=2, rank=r, world_size=world)) for r in range(world)]
    assert len({len(r) for r in ranks}) == 1 and len(ranks[0]) == -(-n // world)
    merged = [ranks[p % world][p // world] for p in range(len(ranks[0]) * world)]
    assert merged[:n] == full  # the same items, augmentation seeds included, in the same order
    assert sorted(i for i, _ in merged[:n]) == list(range(n))
    pad = merged[n:]
    assert len(pad) < world and [i for i, _ in pad] == [i for i, _ in full[: len(pad)]]


def test_order_is_a_pure_function_of_seed_and_epoch():
    a = list(EpochSampler(50, seed=3, epoch=0))
    assert a == list(EpochSampler(50, seed=3, epoch=0))
    assert a != list(EpochSampler(50, seed=3, epoch=1)) and a != list(EpochSampler(50, seed=4, epoch=0))
    assert list(EpochSampler(50, seed=3, epoch=0, start=17)) == a[17:]  # resume mid-epoch
    assert len({s for _, s in a}) == 50  # one augmentation seed per position


def test_weighted_sampler_balances_classes():
    labels = np.array([0] * 90 + [1] * 10)
    w = class_weights(labels, 2)
    assert np.allclose(w * np.bincount(labels), len(labels) / 2)  # each class the same total weight
    order = epoch_order(len(labels), seed=0, epoch=0, weights=w[labels])
    drawn = Counter(labels[order].tolist())
    assert abs(drawn[1] - 50) < 20  # about half the draws from the 10 % class
    again = [i for i, _ in EpochSampler(100, seed=0, epoch=0, weights=w[labels])]
    assert again == order.tolist()


def test_class_weights_for_a_missing_class():
    w = class_weights(np.array([0, 0, 2]), 3)
    assert np.isfinite(w).all() and w[0] < w[2]


def _dataset(n=12):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    t = build_transform([{"name": "HorizontalFlip", "p": 0.5}, {"name": "Affine", "rotate": [-30, 30], "p": 0.9},
                         {"name": "RandomBrightnessContrast", "p": 0.5}], "aug.train")
    return ImageDataset([str(i) for i in range(n)], list(range(n)), 16, t, load=lambda p: imgs[int(p)])


def test_workers_give_the_same_batches():
    """Augmentation is seeded per sample by the sampler, so the batches do not depend on how many
    worker processes made them."""
    ds = _dataset()
    runs = []
    for workers in (0, 2):
        loader = make_loader(ds, 4, EpochSampler(len(ds), seed=5, epoch=1), num_workers=workers)
        runs.append([(x, y) for x, y in loader])
    for (xa, ya), (xb, yb) in zip(*runs, strict=True):
        assert xa.dtype == torch.uint8 and xa.shape == (4, 3, 16, 16)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_to_input_normalises_on_the_device():
    x = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = to_input(x, torch.device("cpu"))
    assert out.dtype == torch.float32 and torch.allclose(out[0, :, 0, 0], torch.tensor(
        [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]))
    assert to_input(x, torch.device("cpu"), in_chans=1).shape == (2, 1, 4, 4)


def test_to_input_normalises_mil_batches_over_the_channels():
    """(B, N, 3, H, W) batches of MIL rows: the channel dim is -3, so each channel gets its own (mean, std),
    grayscale averages the channels (not the instances), and channels_last (a 4-D layout) leaves 5-D as is."""
    x = torch.zeros((2, 4, 3, 5, 5), dtype=torch.uint8)
    x[:, :, 0], x[:, :, 1], x[:, :, 2] = 255, 51, 102  # channels differ; instances differ below
    x[:, 3] = 0
    norm = ((0.5, 0.25, 0.0), (0.5, 0.25, 1.0))
    out = to_input(x, torch.device("cpu"), norm=norm, channels_last=True)
    assert out.shape == (2, 4, 3, 5, 5)
    torch.testing.assert_close(out[1, 2, :, 4, 4], torch.tensor([1.0, -0.2, 0.4]))
    torch.testing.assert_close(out[0, 3, :, 0, 0], torch.tensor([-1.0, -1.0, 0.0]))
    grey = to_input(x, torch.device("cpu"), in_chans=1, norm=norm, channels_last=True)
    assert grey.shape == (2, 4, 1, 5, 5)
    mean, std = sum(norm[0]) / 3, sum(norm[1]) / 3
    torch.testing.assert_close(grey[0, 0, 0, 0, 0], torch.tensor((1.6 / 3 - mean) / std))
    torch.testing.assert_close(grey[0, 3, 0, 0, 0], torch.tensor(-mean / std))
    flat = to_input(x.flatten(0, 1), torch.device("cpu"), in_chans=1, norm=norm, channels_last=True)
    torch.testing.assert_close(grey.flatten(0, 1), flat)  # as the same images in a 4-D batch


def test_loader_workers_ignore_stop_signals():
    loader = make_loader(torch.utils.data.TensorDataset(torch.zeros(4, 1)), 2, None, num_workers=1)
    assert loader.worker_init_fn is ignore_stop_signals
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        ignore_stop_signals(0)
        assert all(signal.getsignal(s) is signal.SIG_IGN for s in old)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    assert make_loader(torch.utils.data.TensorDataset(torch.zeros(4, 1)), 2, None, 0).worker_init_fn is None


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_the_shipped_configs_fit_the_shared_memory_budget(name):
    cfg = load_config(ROOT / "configs" / name)
    budget = shm_budget(64 * 2**30)  # a machine with 64 GiB of /dev/shm: the 1 GiB cap
    k = prefetch_factor_for(cfg.batch_size, cfg.image_size, cfg.num_workers, budget)
    assert k is not None and 1 <= k <= MAX_PREFETCH
    assert batches_in_flight_bytes(cfg.batch_size, cfg.image_size, cfg.num_workers, k) <= budget


def test_prefetch_shrinks_to_the_shared_memory_there_is():
    assert shm_budget(64 * 2**20) == 16 * 2**20  # Docker's default 64 MiB: a quarter per loader
    assert prefetch_factor_for(32, 512, 12, 2**30) == 3  # dr2015: 4 would be 1.2 GB
    assert prefetch_factor_for(32, 512, 8, 2**30) == 4
    assert prefetch_factor_for(32, 512, 8, 16 * 2**20) == 1  # never below one batch per worker
    assert prefetch_factor_for(32, 512, 0, 2**30) is None


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 8 workers on a 2-core machine: none start
def test_prefetch_counts_every_instance_of_a_mil_row(monkeypatch):
    """A MIL dataset's sample is (instances, 3, size, size): 32 instances at 256 px, 8 rows a batch and 8
    workers hold 403 MB per batch in flight, so 2 fit in 1 GiB, not the 4 that one image per sample gives."""
    class Rows(torch.utils.data.Dataset):
        size, instances = 256, 32

        def __len__(self) -> int:
            return 16

    monkeypatch.setattr(loader_module, "shm_budget", lambda: 2**30)
    assert make_loader(Rows(), 8, None, num_workers=8).prefetch_factor == 2
    assert make_loader(torch.utils.data.Subset(Rows(), [0, 1]), 8, None, num_workers=8).prefetch_factor == 2
    Rows.instances = 1
    assert make_loader(Rows(), 8, None, num_workers=8).prefetch_factor == 4
    assert batches_in_flight_bytes(8, 256, 8, 2, instances=32) == 8 * 32 * 3 * 256 * 256 * 2 * 8


def _run_script(path: Path, *lines: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Write a Python script that imports the checkout's kit, then `lines`, to `path` and run it."""
    path.write_text("".join(["import sys\n", f"sys.path.insert(0, {str(ROOT)!r})\n", *lines]))
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=120,
                          env=env or {**os.environ, "OMP_NUM_THREADS": "1"})


def test_a_run_ending_with_live_loader_workers_exits(tmp_path):
    # The workers ignore SIGTERM (a stop signal to the group is the main process's to act on), and
    # multiprocessing stops daemonic children at exit with SIGTERM, then joins them: an iterator kept alive
    # by an exception (a closed stderr, an error mid-epoch) used to leave the process waiting forever.
    # A subprocess: what is tested is the interpreter's own exit (its atexit hooks, the join of its workers).
    res = _run_script(
        tmp_path / "live_workers.py",
        "import torch\n"
        "from comp.data.loader import make_loader\n"
        "it = iter(make_loader(torch.utils.data.TensorDataset(torch.zeros(64, 3)), 2, None, num_workers=2))\n"
        "next(it)\n"
        "raise SystemExit(3)  # `it` is still referenced: its workers are alive at exit\n")
    assert res.returncode == 3 and "Traceback" not in res.stderr, res.stderr[-2000:]


def test_a_script_without_a_main_guard_loads_batches_in_process_where_workers_would_rerun_it(tmp_path):
    # spawn (the default on macOS and Windows; forkserver on Linux from Python 3.14) imports the main script
    # again in each DataLoader worker: a plain script's top level would run again there. Its batches are
    # loaded in this process instead, with one warning line (the same rule as the cache's pool).
    script = tmp_path / "plain.py"
    res = _run_script(
        script,
        "import multiprocessing, torch\n"
        "multiprocessing.set_start_method('spawn')\n"
        "from comp.data.loader import make_loader\n"
        "for _ in range(2):\n"
        "    loader = make_loader(torch.utils.data.TensorDataset(torch.zeros(8, 3)), 2, None, num_workers=2)\n"
        "    print(loader.num_workers, sum(len(x) for x, in loader))\n", env=dict(os.environ))
    assert res.returncode == 0 and res.stdout.split() == ["0", "8", "0", "8"], res.stderr[-2000:]
    assert [line for line in res.stderr.splitlines() if "guard" in line] == [  # once
        f"warning: loading batches in this process (num_workers=0, not 2): {script} has no `if __name__ == "
        f"\"__main__\":` guard, so each DataLoader worker (spawn start) would run it again from the top; put its "
        f"calls under that guard for worker processes"]


def test_the_exit_hook_kills_the_kits_loader_workers_only(tmp_path):
    # The kit's exit hook is registered when its loader starts workers (importing it registers nothing)
    # and kills those workers only: a daemonic process of the user's own still gets multiprocessing's
    # SIGTERM at exit (it writes `flag` from its handler), as it would without the kit.
    flag = tmp_path / "flag"
    res = _run_script(
        tmp_path / "own_child.py",
        "import atexit, multiprocessing, os, signal, time, torch\n"
        "from comp.data.loader import make_loader\n"
        "def own(flag, ready):\n"
        "    signal.signal(signal.SIGTERM, lambda *a: (open(flag, 'w').write('term'), os._exit(0)))\n"
        "    ready.set()\n"
        "    time.sleep(120)\n"
        "if __name__ == '__main__':\n"
        "    ready = multiprocessing.Event()\n"
        f"    multiprocessing.Process(target=own, args=({str(flag)!r}, ready), daemon=True).start()\n"
        "    ready.wait(60)\n"
        "    hooks = atexit._ncallbacks()\n"
        "    it = iter(make_loader(torch.utils.data.TensorDataset(torch.zeros(64, 3)), 2, None, num_workers=2))\n"
        "    next(it)\n"
        "    assert atexit._ncallbacks() == hooks + 1, 'the hook is registered when workers start'\n"
        "    iter(make_loader(torch.utils.data.TensorDataset(torch.zeros(8, 3)), 2, None, num_workers=1))\n"
        "    assert atexit._ncallbacks() == hooks + 1, 'once'\n"
        "    raise SystemExit(3)\n")
    assert res.returncode == 3 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert flag.read_text() == "term"
