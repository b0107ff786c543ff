#!/usr/bin/env python
"""Pseudo-labels from a trained experiment, for `data.pseudo` of the next one:
scripts/pseudo.py --config C --out PATH.csv [--test | --probs TEST_PROBS.csv] [--images FOLDER ...]
    [--min-confidence P] [--soft] [KEY=VALUE ...]

The experiment's fold ensemble (with its TTA views) labels the test images (--test), or a saved
`predict.py --save-probs` CSV of it or of a blend is read (--probs), and/or it labels the unlabelled images
under --images; rows under the confidence threshold are dropped. Writes PATH.csv (id, path, label or
prob_<name>...) and PATH.csv.json, the record of the experiment, split and checkpoints that made it
(comp.teacher.pseudo). A training run refuses the file when it would leak (comp.teacher.pseudo_rows)."""

import sys
from pathlib import Path

import _common  # noqa: F401

from comp.cli import main, parser


def run(args):
    from comp.data.competition import load_competition
    from comp.experiment import Experiment, load_config
    from comp.teacher.pseudo import make_pseudo

    cfg = load_config(args.config, args.overrides)
    rows = make_pseudo(Experiment(cfg), load_competition(cfg), Path(args.out), args.min_confidence, args.soft,
                       args.test, args.images or [], args.probs)
    print(f"pseudo-labels: {len(rows)} rows in {args.out}", file=sys.stderr)


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--out", required=True, metavar="PATH.csv", help="the pseudo-label CSV to write")
    p.add_argument("--test", action="store_true", help="label the test images with the experiment's ensemble")
    p.add_argument("--probs", default=None, metavar="CSV", help="label the test images from a --save-probs CSV")
    p.add_argument("--images", nargs="+", default=None, metavar="FOLDER",
                   help="label the unlabelled images here (folders, or HDF5 image stores)")
    p.add_argument("--min-confidence", type=float, default=0.0, metavar="P",
                   help="keep rows whose confidence (top probability) is at least P (default 0: all)")
    p.add_argument("--soft", action="store_true", help="soft labels (the probabilities) instead of hard classes")
    main(run, p)
