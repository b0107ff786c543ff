"""comp.data.augment through the training dataset: each transform of a pipeline (nested ones too) decides
independently, and a sample's augmentation is a pure function of its seed (a fresh pipeline in another
process, after other samples, gives the same image); the TTA views of 4-D and 5-D (MIL) batches."""

from __future__ import annotations

import itertools

import albumentations as A
import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from comp.data.augment import TTA_VIEWS, build_transform, tta_view
from comp.data.loader import ImageDataset

IMG = np.arange(9 * 3, dtype=np.uint8).reshape(3, 3, 3) * 9  # every pixel distinct: each flip is visible
OPS = {"h": lambda a: a[:, ::-1], "v": lambda a: a[::-1], "t": lambda a: a.transpose(1, 0, 2)}


def _outcomes(specs: list[dict], names: str, n: int) -> list[str]:
    """Which of the transforms `names` (applied in that order) fired on each of `n` sample seeds, read
    from the ImageDataset's output, for the pipeline built from `specs` as training builds it."""
    combos = {}
    for k in range(len(names) + 1):
        for subset in itertools.combinations(names, k):
            out = IMG
            for op in subset:
                out = OPS[op](out)
            combos[np.ascontiguousarray(out).tobytes()] = "".join(subset) or "-"
    assert len(combos) == 2 ** len(names)  # every combination gives a different image
    ds = ImageDataset(["x"], None, 3, build_transform(specs, "aug.train"), load=lambda _: IMG.copy())
    seeds = np.random.default_rng(0).integers(0, 2**31 - 1, n)  # as EpochSampler's: large, unrelated ints
    return [combos[ds[(0, int(s))][0].permute(1, 2, 0).numpy().tobytes()] for s in seeds]


# name -> (the pipeline, the transforms' letters in the order they apply, samples drawn)
PIPELINES = {
    # the kit once seeded both flips alike: only '-' and 'hv' over 400 samples, never a mirror image
    "two flips": ([{"name": "HorizontalFlip", "p": 0.5}, {"name": "VerticalFlip", "p": 0.5}], "hv", 400),
    "three transforms": ([{"name": "HorizontalFlip", "p": 0.5}, {"name": "VerticalFlip", "p": 0.5},
                          {"name": "Transpose", "p": 0.5}], "hvt", 800),
    # a OneOf inside the pipeline gets its own stream, and so do its children
    "a nested pipeline": ([{"name": "HorizontalFlip", "p": 0.5},
                           {"name": "OneOf", "transforms": [A.VerticalFlip(p=1)], "p": 0.5}], "hv", 400),
}


@pytest.mark.parametrize("name", list(PIPELINES))
def test_transforms_fire_independently(name):
    """Each transform at p=.5: every combination of outcomes equally often (a quarter of the time for two)."""
    specs, names, n = PIPELINES[name]
    got = _outcomes(specs, names, n)
    combos = ["".join(c) or "-" for k in range(len(names) + 1) for c in itertools.combinations(names, k)]
    counts = [got.count(c) for c in combos]
    assert min(counts) > 50, counts
    assert chisquare(counts).pvalue > 1e-3, counts


def test_same_seed_same_output_in_a_fresh_pipeline():
    """Resume: a sample's augmentation depends on its seed alone, not on what the pipeline drew before
    nor on which process (a fresh pipeline) draws it; another seed gives another image."""
    specs = [{"name": "HorizontalFlip", "p": 0.5}, {"name": "Affine", "rotate": [-30, 30], "p": 1.0},
             {"name": "RandomBrightnessContrast", "p": 0.5}]
    img = np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    first = ImageDataset(["x"], None, 32, build_transform(specs, "aug.train"), load=lambda _: img.copy())
    later = ImageDataset(["x"], None, 32, build_transform(specs, "aug.train"), load=lambda _: img.copy())
    for s in range(20):  # `later` has drawn other samples before
        later[(0, 1000 + s)]
    seeds = [7, 123456789, 2**31 - 2]
    for s in seeds:
        assert np.array_equal(first[(0, s)][0], later[(0, s)][0])
        assert np.array_equal(first[(0, s)][0], first[(0, s)][0])
    outs = {first[(0, s)][0].numpy().tobytes() for s in seeds}
    assert len(outs) == len(seeds)


@pytest.mark.parametrize("view", list(TTA_VIEWS))
def test_tta_views_of_mil_batches_view_every_instance_alike(view):
    """A (B, N, C, H, W) batch of MIL rows: each instance gets the view its (B, C, H, W) batch gets (the
    views once named dims 2 and 3, which in 5-D are C and H)."""
    x = torch.arange(2 * 3 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 3, 4, 4)
    want = torch.stack([tta_view(x[:, n], view) for n in range(3)], 1)
    assert torch.equal(tta_view(x, view), want)
    a = x[:, 1].numpy()
    exact = {"identity": a, "hflip": a[..., ::-1], "vflip": a[..., ::-1, :], "hvflip": a[..., ::-1, ::-1],
             "rot90": np.rot90(a, 1, (-2, -1)), "rot270": np.rot90(a, 3, (-2, -1)), "transpose": a.swapaxes(-2, -1)}
    np.testing.assert_array_equal(tta_view(x, view)[:, 1].numpy(), exact[view])
