#!/usr/bin/env python
"""Train one fold: scripts/train_fold.py [--config PATH] --fold K [--resume] [KEY=VALUE ...]

On several GPUs: torchrun --nproc_per_node=N scripts/train_fold.py --fold K"""

import sys

import _common  # noqa: F401

from comp.cli import main, parser


def run(args):
    from comp.config import load_config
    from comp.download import ensure_data
    from comp.train import Stopped, fit

    cfg = load_config(args.config, args.overrides)
    ensure_data(cfg)
    try:
        result = fit(cfg, args.fold, resume=args.resume)
    except Stopped as e:
        config = f" --config {args.config}" if args.config else ""
        print(f"{e}; resume with: python scripts/train_fold.py{config} --fold {args.fold} --resume "
              + " ".join(args.overrides), file=sys.stderr)
        return 128 + e.signum
    print(f"fold {result['fold']}: best {result['metric']} {result['best']:.4f} -> {result['dir']}", file=sys.stderr)


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--fold", type=int, required=True, help="which fold to train (0..folds.n_folds-1)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of the fold")
    main(run, p)
