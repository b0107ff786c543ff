#!/usr/bin/env python
"""Stack image models with tabular metadata: a gradient-boosted tree model (scikit-learn's
HistGradientBoosting) over the experiments' OOF outputs, the competition's tabular columns and each image's
features relative to its patient, fitted fold by fold without leaking (comp.ensemble.stack):
scripts/stack.py [--config PATH] --out DIR [--oof DIR ...] [--test-probs P.csv ...] [--columns COL ...]
    [--no-group-features] [--max-iter N] [--learning-rate LR] [--min-samples-leaf N] [KEY=VALUE ...]

Writes DIR/fold<K>/oof.csv (a blendable experiment), DIR/test_probs.csv, DIR/submission.csv and
DIR/stack.json; prints each image experiment's CV next to the stack's (honest: fold k's model never saw
fold k's rows)."""

import _common  # noqa: F401

from comp.cli import main, parser


def run(args):
    from comp.ensemble.stack import stack
    from comp.experiment import load_config

    for name in ("oof", "test_probs", "columns"):  # KEY=VALUE overrides after a list option belong to the config
        values = getattr(args, name)
        if values:
            setattr(args, name, [v for v in values if "=" not in v])
            args.overrides += [v for v in values if "=" in v]
    cfg = load_config(args.config, args.overrides)
    params = {"max_iter": args.max_iter, "learning_rate": args.learning_rate,
              "min_samples_leaf": args.min_samples_leaf}
    s = stack(cfg, args.out, args.oof, args.test_probs, args.columns, not args.no_group_features, params,
              force=args.force)
    for d, cv in zip(s["experiments"], s["cv_images"], strict=True):
        print(f"image model {d}: CV {s['metric']} {cv:.4f}")
    print(f"stack ({len(s['features'])} features): CV {s['metric']} {s['cv_stack']:.4f} (fold k fitted on the "
          f"other folds' OOF rows)")
    if s["held_out"] is not None:
        print(f"stack held-out {s['metric']}: {s['held_out']:.4f}")
    print(f"written to {args.out}: each fold's out-of-fold predictions, submission.csv, test_probs.csv, stack.json, "
          f"config.yaml")


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--out", required=True, metavar="DIR", help="the stack's folder (its OOF, submission, summary)")
    p.add_argument("--force", action="store_true", help="replace the files of an existing --out folder")
    p.add_argument("--oof", nargs="+", default=None, metavar="DIR",
                   help="image experiments' out_dirs, trained on the same folds (default: the config's out_dir)")
    p.add_argument("--test-probs", nargs="+", default=None, metavar="CSV",
                   help="each --oof experiment's test outputs (predict.py --save-probs P.csv), in the same order; "
                        "default: predict the config's folds now")
    p.add_argument("--columns", nargs="*", default=None, metavar="COL",
                   help="tabular columns of data.train_csv / data.test_csv (default: data.tabular_columns)")
    p.add_argument("--no-group-features", action="store_true",
                   help="leave out the features relative to each patient (data.group_column)")
    p.add_argument("--max-iter", type=int, default=None, help="boosting iterations (default 200)")
    p.add_argument("--learning-rate", type=float, default=None, help="default 0.05")
    p.add_argument("--min-samples-leaf", type=int, default=None, help="default 20")
    main(run, p)
