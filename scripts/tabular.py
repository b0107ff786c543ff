#!/usr/bin/env python
"""Fit a value with its uncertainty from tabular rows (data.layout=visits; OSIC Pulmonary Fibrosis):
scripts/tabular.py [--config PATH] [--fold K ...] [KEY=VALUE ...]

Reads the visit tables (comp.data.visits: weeks since each patient's baseline, the baseline's FVC and
Percent, Age, Sex, SmokingStatus), writes the folds by patient once, fits a small MLP with the likelihood
loss per fold (train.loss laplace | gaussian_nll; comp.train.tabular), prints each fold's score and the CV
(every visit, and each patient's last 3 visits as Kaggle scored), and once every fold is trained writes
<out_dir>/submission.csv (the sample's rows, each fold's prediction averaged as a mixture) and cv.json;
submit it with scripts/submit.py."""

import _common  # noqa: F401

from comp.cli import main, parser


def run(args):
    from comp.errors import UserError
    from comp.experiment import load_config
    from comp.train.tabular import run_visits

    folds = None
    if args.fold:  # KEY=VALUE overrides after --fold belong to the config
        args.overrides += [v for v in args.fold if "=" in v]
        folds = [v for v in args.fold if "=" not in v]
        if not all(v.lstrip("-").isdigit() for v in folds):
            raise UserError(f"--fold {' '.join(folds)}: give fold numbers, e.g. --fold 0 2")
        folds = [int(v) for v in folds]
    cfg = load_config(args.config, args.overrides)
    s = run_visits(cfg, folds)
    for k, v in s["folds"].items():
        print(f"fold {k}: {s['metric']} {v:.4f}")
    if "cv" in s:
        print(f"CV {s['metric']}: {s['cv']['all']:.4f} (every visit), {s['cv']['last3']:.4f} (each group's last 3 "
              f"visits, as Kaggle scored)")
        print(f"wrote {s['submission']}")


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--fold", nargs="+", default=None, metavar="K",
                   help="fit only these folds (default: every fold); the submission waits for all")
    main(run, p)
