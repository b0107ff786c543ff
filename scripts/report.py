#!/usr/bin/env python
"""Cross-validation report of an experiment, or several experiments compared.

scripts/report.py [--config PATH] [KEY=VALUE ...]
    the CV table of every metric that scores the task (per fold, their mean, all OOF pooled; stdout and
    <out_dir>/cv.csv), the out-of-fold CV score of the competition metric, the OOF classification report
    where there are classes (stdout), and the task's OOF figures: <out_dir>/oof_confusion.png (classes),
    oof_roc.png and oof_calibration.png (binary, multi-label), oof_scatter.png (a regression head).
scripts/report.py --compare runs/a runs/b [--labels A B] [--metric M] [-o compare.png]
    the experiments' curves in one figure (mean over folds) and a table of their scores.
scripts/report.py --leaderboard [-o leaderboard.png] [KEY=VALUE ...]
    every recorded submission of data.competition (submissions/index.csv): CV against public score.
"""

import argparse
import json
import sys
from pathlib import Path

import _common  # noqa: F401

from comp.cli import main, parser


def fmt(v: float) -> str:
    return f"{v:.4f}"


def run(args):
    from comp.config import resolve_path
    from comp.experiment import Experiment, load_config
    from comp.metrics import higher_is_better
    from comp.report.report import compare, cv_report, oof_report

    cfg = load_config(args.config, args.overrides)  # every key, before any work
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
    table, cv, n, task = cv_report(cfg)
    print(f"task={task.kind}{' (' + task.head + ' head)' if task.kind == 'ordinal' else ''}: "
          f"{'target' if task.kind == 'regression' else 'classes' if task.has_classes else 'labels'} {task.names}"
          if task.kind != "multihead" else f"task=multihead: heads {dict((t, n) for t, n in task.heads)}")
    print(table.to_string(index=False, float_format=fmt))
    direction = "higher" if higher_is_better(cfg.metric) else "lower"
    print(f"CV {cfg.metric} (out-of-fold, {n} fold{'s' if n != 1 else ''}): {cv:.4f} ({direction} is better)")
    summary = Experiment(cfg).file("visits_cv")  # OSIC's visits (scripts/tabular.py): the rows Kaggle scored
    if cfg.data.layout == "visits" and summary.is_file():
        last3 = json.loads(summary.read_text())["cv"]["last3"]
        print(f"CV {cfg.metric} over each group's last 3 visits (the rows Kaggle scored; the line above counts "
              f"every visit, baselines too): {last3:.4f}")
    report, figures = oof_report(cfg, task)
    if report is not None:
        print(f"\nout-of-fold classification report:\n{report.to_string(float_format=fmt)}")
    print(f"CV table: {Experiment(cfg).file('cv')}", file=sys.stderr)
    for name, path in figures.items():
        print(f"OOF {name}: {path}", file=sys.stderr)


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
