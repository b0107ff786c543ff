#!/usr/bin/env python
"""Hyperparameter search with Optuna: scripts/tune.py [--config C] --space space.yaml [--trials N]
[--folds 0 ...] [--study-name S] [--storage sqlite:///...] [KEY=VALUE ...]

space.yaml maps config keys to ranges, e.g.
    optim.lr: {low: 1.0e-4, high: 1.0e-2, log: true}
    model.drop_rate: {low: 0.0, high: 0.5}
    optim.name: {choices: [adamw, sgd]}
    model.freeze_epochs: {low: 0, high: 3, step: 1}

Optimises the best validation score of the competition metric on --folds (their mean), maximising it or,
for a metric where lower is better (mae, rmse, log_loss), minimising it, pruning trials worse than the
median at each epoch. A trial interrupted or killed is resumed by the next run, a failed one retried once.
Trial 0 is the starting config. Trials train in <out_dir>/tune/trial<N> (another --study-name S:
<out_dir>/tune/S/trial<N>); the study is in <out_dir>/tune/study.db (several processes may join it: same
--study-name and --storage); the best config is written to best.yaml beside the trials, ready for
train_fold.py --config.
"""

import argparse
import sys

import _common  # noqa: F401

from comp.cli import main, parser


def run(args):
    from comp.data.download import ensure_data
    from comp.experiment import load_config
    from comp.train import Stopped
    from comp.train.tune import tune

    ensure_data(load_config(args.config, args.overrides), download=False)
    try:
        r = tune(args.config, args.overrides, args.space, n_trials=args.trials, folds=tuple(args.folds),
                 study_name=args.study_name, storage=args.storage)
    except Stopped as e:
        print(f"{e}\nrun the same tune.py command again: the interrupted trial resumes in its folder", file=sys.stderr)
        return 128 + e.signum
    start = f"{r.start_value:.4f}" if r.start_value is not None else "(did not complete)"
    verdict = "an improvement" if r.improved else "no improvement"
    print(f"{r.n_complete} trials completed, {r.n_pruned} pruned; best trial {r.best_number} {r.best_value:.4f} vs "
          f"the starting config's {start} ({'higher' if r.higher else 'lower'} is better): {verdict}", file=sys.stderr)
    print(f"best values: {r.best_params}\nbest config: {r.best_yaml}")


if __name__ == "__main__":
    p = parser(__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--space", required=True, help="YAML search space: config key -> {low, high[, log, step]} or "
                   "{choices: [...]}")
    p.add_argument("--trials", type=int, default=20, help="trials this process runs (default 20)")
    p.add_argument("--folds", type=int, nargs="+", default=[0], help="folds each trial trains (default: 0)")
    p.add_argument("--study-name", default="tune", help="the Optuna study (default: tune)")
    p.add_argument("--storage", default=None, help="Optuna RDB URL (default sqlite:///<out_dir>/tune/study.db)")
    main(run, p)
