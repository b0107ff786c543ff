"""The epoch sampler (shuffled, weighted, resumed, split across DDP ranks), class weights, the loader's
uint8 hand-over and device-side normalisation, and repeatable augmentation with worker processes."""

from collections import Counter

import numpy as np
import pytest
import torch

from comp.data.augment import build_transform
from comp.data.loader import EpochSampler, ImageDataset, class_weights, epoch_order, make_loader, to_input


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


def test_a_script_without_a_main_guard_loads_batches_in_process_where_workers_would_rerun_it(tmp_path):
    # spawn (the default on macOS and Windows; forkserver on Linux from Python 3.14) imports the main script
    # again in each DataLoader worker: a plain script's top level would run again there. Its batches are
    # loaded in this process instead, with one warning line (the same rule as the cache's pool).
    import subprocess
    import sys

    from conftest import ROOT

    script = tmp_path / "plain.py"
    script.write_text(
        "import multiprocessing, sys, torch\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "multiprocessing.set_start_method('spawn')\n"
        "from comp.data.loader import make_loader\n"
        "for _ in range(2):\n"
        "    loader = make_loader(torch.utils.data.TensorDataset(torch.zeros(8, 3)), 2, None, num_workers=2)\n"
        "    print(loader.num_workers, sum(len(x) for x, in loader))\n")
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.split() == ["0", "8", "0", "8"], res.stderr[-2000:]
    assert [line for line in res.stderr.splitlines() if "guard" in line] == [  # once
        f"warning: loading batches in this process (num_workers=0, not 2): {script} has no `if __name__ == "
        f"\"__main__\":` guard, so each DataLoader worker (spawn start) would run it again from the top; put its "
        f"calls under that guard for worker processes"]
