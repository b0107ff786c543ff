#!/usr/bin/env python
"""The learning-rate range test: scripts/lr_find.py [--config C] [--fold 0] [--steps 200] [--start 1e-7]
[--end 10] [KEY=VALUE ...]

Trains up to --steps optimizer steps of the fold with the learning rate ramped exponentially from --start
to --end (the training's own model, data and optimizer), stopping once the smoothed loss passes 4x its
minimum. Writes <out_dir>/lr_find/lr_find.png and lr_find.csv (never a fold folder) and prints one line,
`optim.lr=...` (fastai's valley suggestion), to paste as an override or into the YAML.
"""

import sys

import _common  # noqa: F401

from comp.cli import main, parser


def run(args):
    from comp.data.download import ensure_data
    from comp.experiment import load_config
    from comp.train.lr_find import lr_find

    cfg = load_config(args.config, args.overrides)
    ensure_data(cfg, download=False)
    r = lr_find(cfg, args.fold, steps=args.steps, start=args.start, end=args.end)
    print(f"{len(r.lrs)} steps from {r.lrs[0]:.2e} to {r.lrs[-1]:.2e}"
          f"{' (stopped: the loss diverged)' if r.diverged else ''}; valley {r.valley:.2e}, steepest "
          f"{r.steepest:.2e}; plot {r.folder / 'lr_find.png'}", file=sys.stderr)
    print(f"optim.lr={r.valley:.3g}")


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--fold", type=int, default=0, help="the fold whose training images are used (default 0)")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps of the ramp at most (default 200)")
    p.add_argument("--start", type=float, default=1e-7, help="first learning rate (default 1e-7)")
    p.add_argument("--end", type=float, default=10.0, help="last learning rate (default 10)")
    main(run, p)
