#!/usr/bin/env python
"""Train one fold: scripts/train_fold.py [--config PATH] --fold K [--seed S] [--resume] [KEY=VALUE ...]

The script's work is comp.pipeline.train_fold, the function a notebook calls as comp.train_fold(cfg, K).
Outputs go to <out_dir>/fold<K>/: config.yaml, last.pt (every epoch), best.pt and oof.csv (best epoch of
the competition metric), recovery.pt (mid-epoch), metrics.csv, curves.png and the task's figures
(confusion.png where there are classes, roc.png and calibration.png, scatter.png), tb/ (TensorBoard:
`tensorboard --logdir <out_dir>`; train.tracker=mlflow|wandb logs there too).

A seed bag (seeds=[42,43,44]) trains every seed of fold K in turn, each into <out_dir>/fold<K>/seed<S>/,
or only --seed S (one job per seed); once every seed of the fold is trained, <out_dir>/fold<K>/oof.csv
is written: the per-image mean of the seeds' OOF (comp.ensemble.bag).

A multi-stage recipe (stages: [{...}, {...}]) trains each stage in turn, from the previous stage's best.pt:
stages before the last into <out_dir>/fold<K>/stage<i>/ (done.json when finished), the last into
<out_dir>/fold<K>/ where predict reads it (comp.train.stages); --resume skips the finished stages.

--resume continues from the newest checkpoint of the fold, mid-epoch included; SIGTERM or Ctrl-C
saves one after the current step and prints the command to resume.

One fold on N GPUs (DDP, only rank 0 writes; gloo on CPU):
    torchrun --nproc_per_node=N scripts/train_fold.py --fold K

Several folds at once, one per GPU (write the folds first, so the processes do not race to):
    python scripts/prepare.py --config C
    for k in 0 1 2 3 4; do
        CUDA_VISIBLE_DEVICES=$k python scripts/train_fold.py --config C --fold $k 2> fold$k.log &
    done; wait
"""

import argparse
import os
import shlex
import sys

import _common  # noqa: F401

from comp.cli import main, parser


def run(args):
    from comp.experiment import load_config
    from comp.pipeline import train_fold
    from comp.train import Stopped

    cfg = load_config(args.config, args.overrides)  # every key, every stage, before any work
    try:
        train_fold(cfg, args.fold, resume=args.resume, seed=args.seed)  # what comp.train_fold runs in a notebook
    except Stopped as e:
        world = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's; rank 0 says how to resume
        if os.environ.get("RANK", "0") == "0":
            launch = f"torchrun --nproc_per_node={world}" if world > 1 else "python"
            argv = (["--config", args.config] if args.config else []) + ["--fold", str(args.fold)]
            argv += (["--seed", str(args.seed)] if args.seed is not None else []) + ["--resume"]
            print(f"{e}\nresume with: {launch} scripts/train_fold.py {shlex.join(argv + args.overrides)}",
                  file=sys.stderr)
        return 128 + e.signum


if __name__ == "__main__":
    p = parser(__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the command lines above as written
    p.add_argument("--fold", type=int, required=True, help="which fold to train (0..folds.n_folds-1)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of the fold")
    p.add_argument("--seed", type=int, default=None,
                   help="in a seed bag (seeds=[...]): train this seed only (parallel jobs); default every seed")
    main(run, p)
