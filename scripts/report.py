#!/usr/bin/env python
"""Cross-validation report of an experiment, or several experiments compared.

scripts/report.py [--config PATH] [KEY=VALUE ...]
    per-fold scores of every metric, the out-of-fold CV score of the competition metric, the OOF
    classification report (stdout) and <out_dir>/oof_confusion.png.
scripts/report.py --compare runs/a runs/b [--labels A B] [--metric M] [-o compare.png]
    the experiments' curves in one figure (mean over folds) and a table of their scores.
scripts/report.py --leaderboard [-o leaderboard.png] [KEY=VALUE ...]
    every recorded submission of data.competition (submissions/index.csv): CV against public score.
"""

import argparse
import sys
from pathlib import Path

import _common  # noqa: F401

from comp.cli import main, parser


def fmt(v: float) -> str:
    return f"{v:.4f}"


def run(args):
    from comp import validate_config
    from comp.config import load_config, resolve_path
    from comp.report.report import compare, oof_report
    from comp.train.oof import cv_table

    cfg = validate_config(load_config(args.config, args.overrides))  # every key, before any work
    if args.leaderboard:
        from comp.report.leaderboard import leaderboard

        out = Path(args.output if args.output != "compare.png" else "leaderboard.png")
        print(leaderboard(cfg, out).to_string(index=False))
        print(f"figure: {out}", file=sys.stderr)
        return
    if args.compare:
        dirs = [Path(d) if Path(d).exists() else resolve_path(d) for d in args.compare]
        table = compare(dirs, Path(args.output), args.labels, args.metric)
        print(table.to_string(index=False, float_format=fmt))
        print(f"figure: {args.output}", file=sys.stderr)
        return
    table, cv, n = cv_table(cfg)
    print(table.to_string(index=False, float_format=fmt))
    print(f"CV {cfg.metric} (out-of-fold, {n} fold{'s' if n != 1 else ''}): {cv:.4f}")
    report, figure = oof_report(cfg)
    print(f"\nout-of-fold classification report:\n{report.to_string(float_format=fmt)}")
    print(f"OOF confusion matrix: {figure}", file=sys.stderr)


if __name__ == "__main__":
    p = parser(__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--compare", nargs="+", metavar="DIR", help="experiment folders (out_dir of each run) to compare")
    p.add_argument("--labels", nargs="+", help="legend names for --compare, one per folder")
    p.add_argument("--metric", help="metric to plot with --compare (default: the experiments' own)")
    p.add_argument("--leaderboard", action="store_true", help="CV against public score of every recorded submission")
    p.add_argument("-o", "--output", default="compare.png",
                   help="figure file for --compare (default compare.png) or --leaderboard (default leaderboard.png)")
    main(run, p)
