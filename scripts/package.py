#!/usr/bin/env python
"""Package an experiment for a code competition (offline inference on Kaggle):
scripts/package.py [--config PATH] [-o DIR] [--id OWNER/SLUG] [--force] [KEY=VALUE ...]

DIR (default <out_dir>/package) gets the fold weights, the resolved config, the kappa thresholds, the
kit's code and infer.py, and the run time on data.hidden_test_size images is estimated (--estimate);
`scripts/submit.py --notebook` uploads it, runs it on Kaggle and submits its output. By hand: upload with
`kaggle datasets create -p DIR --dir-mode zip`, then in the notebook:
`python /kaggle/input/<dataset>/infer.py --data /kaggle/input/<competition> > submission.csv`."""

import argparse
from pathlib import Path

import _common  # noqa: F401

from comp.cli import main, parser


def run(args):
    from comp.experiment import load_config
    from comp.submit.package import build_package

    cfg = load_config(args.config, args.overrides)  # every key, before any work
    out = build_package(cfg, Path(args.output) if args.output else None, dataset_id=args.id, force=args.force,
                        estimate=args.estimate)
    print(out)


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("-o", "--output", default=None, metavar="DIR", help="package folder (default <out_dir>/package)")
    p.add_argument("--id", default=None, metavar="OWNER/SLUG",
                   help="the Kaggle dataset id for dataset-metadata.json (default <you>/<slug>, <you>: the "
                        "user the kaggle CLI is logged in as)")
    p.add_argument("--force", action="store_true", help="replace DIR when it exists")
    p.add_argument("--estimate", action=argparse.BooleanOptionalAction, default=None,
                   help="estimate the run time on data.hidden_test_size images (default: for a code competition)")
    main(run, p)
