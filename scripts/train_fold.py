#!/usr/bin/env python
"""Train one fold: scripts/train_fold.py [--config PATH] --fold K [--seed S] [--resume] [KEY=VALUE ...]

Outputs go to <out_dir>/fold<K>/: config.yaml, last.pt (every epoch), best.pt and oof.csv (best epoch of
the competition metric), recovery.pt (mid-epoch), metrics.csv, curves.png and the task's figures
(confusion.png where there are classes, roc.png and calibration.png, scatter.png), tb/ (TensorBoard:
`tensorboard --logdir <out_dir>`; train.tracker=mlflow|wandb logs there too).

A seed bag (seeds=[42,43,44]) trains every seed of fold K in turn, each into <out_dir>/fold<K>/seed<S>/,
or only --seed S (one job per seed); once every seed of the fold is trained, <out_dir>/fold<K>/oof.csv
is written: the per-image mean of the seeds' OOF (comp/train/bag.py).

A multi-stage recipe (stages: [{...}, {...}]) trains each stage in turn, from the previous stage's best.pt:
stages before the last into <out_dir>/fold<K>/stage<i>/ (done.json when finished), the last into
<out_dir>/fold<K>/ where predict reads it (comp/train/stages.py); --resume skips the finished stages.

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
import shlex
import sys

import _common  # noqa: F401

from comp.cli import main, parser


def run(args):
    from comp import validate_config
    from comp.config import load_config
    from comp.data.download import ensure_data
    from comp.report.plots import fold_figures
    from comp.train import Stopped, fit
    from comp.train.distributed import setup_distributed
    from comp.train.tracking import log_figures

    cfg = validate_config(load_config(args.config, args.overrides))  # every key, before any work
    d = setup_distributed(cfg.device)  # under torchrun: rank 0 fetches the data while the others wait
    rank0 = d.main
    if rank0:
        ensure_data(cfg, download=False)  # the demo is built; a missing Kaggle download is an error
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()
    from comp.errors import UserError
    from comp.train.bag import bag_seeds, with_seed, write_bag_oof
    from comp.train.stages import train_stages

    seeds = bag_seeds(cfg)
    if args.seed is not None and args.seed not in seeds:
        raise UserError(f"--seed {args.seed} is not a seed of the bag seeds={seeds}; name one of them, or list it "
                        f"in seeds")
    for seed in [args.seed] if args.seed is not None else seeds or [cfg.seed]:
        try:
            result = train_stages(with_seed(cfg, seed) if seeds else cfg, args.fold, args.resume, fit)
        except Stopped as e:
            if rank0:
                launch = f"torchrun --nproc_per_node={d.world}" if d.world > 1 else "python"
                argv = (["--config", args.config] if args.config else []) + ["--fold", str(args.fold)]
                argv += (["--seed", str(args.seed)] if args.seed is not None else []) + ["--resume"]
                print(f"{e}\nresume with: {launch} scripts/train_fold.py {shlex.join(argv + args.overrides)}",
                      file=sys.stderr)
            return 128 + e.signum
        if rank0:
            figures = fold_figures(result["dir"], result["classes"], result["metric"])  # curves.png + the task's
            log_figures(cfg, result["dir"], list(figures.values()))
            print(f"fold {result['fold']}: best {result['metric']} {result['best']:.4f} -> {result['dir']}",
                  file=sys.stderr)
            write_bag_oof(cfg, args.fold)  # once every seed of the fold's bag is trained (a no-op without a bag)

if __name__ == "__main__":
    p = parser(__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the command lines above as written
    p.add_argument("--fold", type=int, required=True, help="which fold to train (0..folds.n_folds-1)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of the fold")
    p.add_argument("--seed", type=int, default=None,
                   help="in a seed bag (seeds=[...]): train this seed only (parallel jobs); default every seed")
    main(run, p)
