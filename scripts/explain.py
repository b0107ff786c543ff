#!/usr/bin/env python
"""What the model learned: Grad-CAM review sheets of each fold on its own validation images, error-analysis
tables over all folds' out-of-fold predictions, label-issue candidates and duplicate images.

scripts/explain.py [--config PATH] [--per-class N] [-o DIR] [KEY=VALUE ...]
    writes to DIR (default <out_dir>/explain): fold<K>_errors.png fold<K>_unsure.png fold<K>_random.png,
    top_losses.csv confused_pairs.csv (classes) group_metrics.csv label_issues.csv (class probabilities,
    multi-label; not for a regression head) duplicates.csv, and review.html
    (one page, images embedded: open it in any browser). Drop suspected images from training with
    data.exclude=DIR/label_issues.csv (a new out_dir: the folds change).
    MIL rows (mil.source set): each row as its 4 instances that weigh most in the pooled feature, with their
    weights and Grad-CAM maps of the row's prediction; no duplicate search (it compares single images).
"""

import argparse
import sys
from pathlib import Path

import _common  # noqa: F401

from comp.cli import main, parser


def run(args):
    from comp.experiment import load_config
    from comp.report.explain import explain

    cfg = load_config(args.config, args.overrides)
    written = explain(cfg, args.per_class, Path(args.output) if args.output else None, not args.no_duplicates)
    for p in written:
        print(p)
    print(f"open {written[-1]} in a browser", file=sys.stderr)


if __name__ == "__main__":
    p = parser(__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--per-class", type=int, default=4, help="images per class in each section (default 4)")
    p.add_argument("-o", "--output", help="folder for the sheets, tables and review.html (default <out_dir>/explain)")
    p.add_argument("--no-duplicates", action="store_true", help="skip the duplicate search (hashes every image)")
    main(run, p)
