#!/usr/bin/env python
"""Ensemble every trained fold with TTA into a submission:
scripts/predict.py [--config PATH] [-o submission.csv] [--save-probs PATH.csv|PATH.npy] [--save-features DIR]
    [KEY=VALUE ...]

The validated CSV goes to -o PATH (written only when prediction succeeds, by a temporary file and a rename,
so a refusal leaves an earlier file whole) or, without -o, alone to stdout (`> submission.csv`: the shell
empties that file before predict starts, even when it then refuses); logs, progress bars and the held-out
score (when the answers are known) to stderr. --save-probs also writes the ensemble's test probabilities for
blending; --save-features each fold's pooled image embeddings, out of fold for train and for every test image
(comp.predict.features)."""

import sys
from pathlib import Path

import _common  # noqa: F401

from comp.cli import main, parser
from comp.errors import UserError


def run(args):
    from comp.data.competition import load_competition
    from comp.experiment import Experiment, load_config
    from comp.predict.predict import check_probs_path, save_probs
    from comp.predict.submission import make_submission

    cfg = load_config(args.config, args.overrides)  # every key, before any work
    if args.output and not Path(args.output).expanduser().parent.is_dir():
        raise UserError(f"-o {args.output}: the folder {Path(args.output).expanduser().parent} does not exist")
    if args.save_probs:
        check_probs_path(args.save_probs)
    if args.save_features:
        from comp.predict.features import check_features_dir

        check_features_dir(args.save_features)
    exp, comp = Experiment(cfg), load_competition(cfg)
    sub = make_submission(exp, comp)
    if args.save_probs:
        save_probs(args.save_probs, sub.ids, sub.probs, sub.task)
        print(f"test probabilities: {args.save_probs}", file=sys.stderr)
    if args.save_features:
        from comp.data.competition import load_competition
        from comp.predict.features import save_features

        save_features(cfg, load_competition(cfg), args.save_features)
        print(f"image features: {args.save_features}", file=sys.stderr)
    if sub.score is not None:
        print(f"held-out {cfg.metric}: {sub.score:.4f}", file=sys.stderr)
    if args.output:
        from comp import io

        io.write_text(args.output, sub.text, what="submission")
        print(f"submission: {args.output} ({len(sub.frame)} rows)", file=sys.stderr)
    else:
        sys.stdout.write(sub.text)


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("-o", "--output", default=None, metavar="PATH",
                   help="write the submission CSV to PATH, only when prediction succeeds (default: stdout)")
    p.add_argument("--save-probs", default=None, metavar="PATH",
                   help="also write the test probabilities: .csv (id,prob_<class>...) or .npy (N, C)")
    p.add_argument("--save-features", default=None, metavar="DIR",
                   help="also write each fold's pooled embeddings: DIR/train.npy (out of fold) + train_ids.csv, "
                        "DIR/test_fold<K>.npy + test_ids.csv")
    main(run, p)
