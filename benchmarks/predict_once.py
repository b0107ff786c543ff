"""Prediction decodes each test image once for the whole fold ensemble (issue 16 item 5).

    python benchmarks/predict_once.py [--images 24] [--folds 5] [--rounds 3] [--work DIR]

An APTOS-sized test set (PNG fundus photographs of 2048 x 1536 px, as APTOS 2019 ships them, decoded and
resized with the cache off, as the offline package predicts on Kaggle) is predicted by K folds x 2 TTA
views of a tiny model, so the forward pass costs next to nothing and the decode is the cost, as on a GPU:
  - `one fold`:      predict_test over fold 0 alone;
  - `K folds, once`: predict_test over the K folds (the kit: every batch through every fold);
  - `K folds, K x`:  K calls of predict_test with one fold each (what the kit did before: a loader pass,
                     and so a decode of every image, per fold).
Sides run interleaved round after round; the ratios are medians of per-round ratios (benchmarks.common).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import fold_checkpoint, fundus_image, interleaved, median_ratio  # noqa: E402
from comp.data.competition import load_competition  # noqa: E402
from comp.experiment import Experiment, load_config  # noqa: E402
from comp.experiment import checkpoint as ckpt_io  # noqa: E402
from comp.models import create_model  # noqa: E402
from comp.predict.predict import predict_test  # noqa: E402


def experiment(work: Path, n_images: int, n_folds: int):
    """A two-class competition of `n_images` 2048 x 1536 PNG test images and K fold checkpoints."""
    root, out = work / "data", work / "runs"
    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True, exist_ok=True)
    (root / "test").mkdir(exist_ok=True)
    small = fundus_image(96, 128, rng)
    for i in range(2 * n_folds):
        cv2.imwrite(str(root / "train" / f"tr{i}.png"), small)
    pd.DataFrame({"id": [f"tr{i}" for i in range(2 * n_folds)], "label": [i % 2 for i in range(2 * n_folds)]}).to_csv(
        root / "train.csv", index=False)
    for i in range(n_images):
        cv2.imwrite(str(root / "test" / f"te{i}.png"), fundus_image(1536, 2048, rng))
    pd.DataFrame({"id": [f"te{i}" for i in range(n_images)], "label": 0}).to_csv(
        root / "sample_submission.csv", index=False)
    cfg = load_config(None, [f"data.root={root}", f"out_dir={out}", "data.source=competition", "image_size=256",
                             "images.cache=false", "model.name=timm/test_efficientnet", "num_workers=0",
                             "batch_size=8", f"folds.n_folds={n_folds}", "aug.tta=[identity,hflip]"])
    comp = load_competition(cfg)
    paths = [Experiment(cfg).run(k).best for k in range(n_folds)]
    for k, path in enumerate(paths):
        torch.manual_seed(k)
        ckpt_io.save(fold_checkpoint(cfg, comp, create_model(cfg.model.name, comp.num_classes), k), path)
    return cfg, comp, paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--work", default=None)
    a = p.parse_args()
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="comp-predict-once-"))
    cfg, comp, folds = experiment(work, a.images, a.folds)
    cpu = torch.device("cpu")
    secs = interleaved({
        "one fold": lambda: predict_test(cfg, comp, cpu, folds[:1]),
        "K folds, once": lambda: predict_test(cfg, comp, cpu, folds),
        "K folds, K x": lambda: [predict_test(cfg, comp, cpu, [f]) for f in folds],
    }, rounds=a.rounds, warmup=1)
    print(f"{a.images} PNG test images of 2048 x 1536 px, cache off, {a.folds} folds x 2 TTA views, "
          f"timm/test_efficientnet at 256 px, torch threads {torch.get_num_threads()}")
    print("| predict | median seconds | ÷ one fold |")
    print("|---|---|---|")
    for name, s in secs.items():
        print(f"| {name} | {np.median(s):.2f} | {median_ratio(secs['one fold'], s):.2f} |")


if __name__ == "__main__":
    main()
