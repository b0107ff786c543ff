#!/usr/bin/env python
"""Blend several experiments trained on the same folds into one honest, validated submission:
scripts/blend.py A.yaml B.yaml [--config C.yaml ...] [--method auto|mean|weighted|rank|stack] [--out DIR]
                 [--force] [--test-probs P.csv ...] [KEY=VALUE ...]

Prints the CV table (each member's CV; each blend method's honest CV, fitted on K-1 folds and scored on the
held-out fold, beside its in-sample CV) to stdout, and writes the chosen blend (`--method`, else the best
honest CV) as an experiment in DIR (default runs/blend-<names>): fold<K>/oof.csv, folds.csv, config.yaml,
test_probs.csv, blend.json, blend.png and submission.csv (validated). KEY=VALUE overrides apply to every
config. Test outputs come from each member's folds x TTA, or from --test-probs files (one per config, in
order; '' to predict that one) written by `predict.py --save-probs`."""

import sys
from pathlib import Path

import _common  # noqa: F401

from comp.cli import main


def run(args):
    from comp import io
    from comp.ensemble import blend as sb
    from comp.report.blend_plot import blend_figure

    configs = list(args.config or []) + [a for a in args.items if "=" not in a]
    overrides = [a for a in args.items if "=" in a]
    members = sb.load_members(configs, overrides)  # each config loaded and checked (comp.experiment)
    out = sb.check_out(Path(args.out).absolute() if args.out else sb.default_out(members), members, args.force)
    res = sb.evaluate(members, args.method)
    metric = members[0].cfg.metric
    print(f"{metric} (OOF, {members[0].cfg.folds.n_folds} folds)")
    print(res.table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"chosen: {res.method}")
    test_outs, comp = sb.test_outputs(members, args.test_probs or [])
    test_probs = sb.blend_test(members, test_outs, res.method)
    df, text, held_out = sb.submission(members, comp, test_probs, res.decoding)
    with io.atomic_dir(out, "blend folder") as tmp:  # all of it or nothing; an existing one only with --force
        sb.write(out, members, res, test_probs, comp, text, into=tmp)
        blend_figure(res.table, res.corr, metric, tmp / "blend.png",
                     title=f"blend of {', '.join(m.name for m in members)}: {res.method}")
    if held_out is not None:
        print(f"held-out {metric}: {held_out:.4f}")
    print(f"blend ({res.method}): {out} (submission.csv validated, {len(df)} rows; blend.png)", file=sys.stderr)


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("items", nargs="*", metavar="CONFIG|KEY=VALUE", help="configs to blend, and overrides for all")
    p.add_argument("--config", action="append", default=None, help="a config to blend (repeatable)")
    p.add_argument("--method", default="auto", choices=["auto", "mean", "weighted", "rank", "stack"],
                   help="the blend to write (default: the best honest CV)")
    p.add_argument("--out", default=None, help="output folder (default runs/blend-<names>)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output folder")
    p.add_argument("--test-probs", action="extend", nargs="+", default=None, metavar="PATH",
                   help="the members' saved test outputs, one per config in order ('' to predict one); "
                        "several after one flag, or the flag repeated")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one error line")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    main(run, p)
