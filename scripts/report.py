#!/usr/bin/env python
"""Cross-validation report of an experiment: per-fold scores and the out-of-fold CV score."""

import sys

import _common  # noqa: F401

from comp.cli import main, parser


def run(args):
    from comp.config import load_config
    from comp.report import cv_table

    cfg = load_config(args.config, args.overrides)
    table, cv, n = cv_table(cfg)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"CV {cfg.metric} (out-of-fold, {n} fold{'s' if n != 1 else ''}): {cv:.4f}")


if __name__ == "__main__":
    main(run, parser(__doc__))
