#!/usr/bin/env python
"""Ensemble every trained fold with TTA into a submission: scripts/predict.py [--config PATH] > submission.csv

The CSV alone goes to stdout; logs and progress bars to stderr."""

import sys

import _common  # noqa: F401

from comp.cli import main, parser


def run(args):
    from comp.config import load_config
    from comp.submission import make_submission

    cfg = load_config(args.config, args.overrides)
    text, score = make_submission(cfg)
    if score is not None:
        print(f"held-out {cfg.metric}: {score:.4f}", file=sys.stderr)
    sys.stdout.write(text)


if __name__ == "__main__":
    main(run, parser(__doc__))
