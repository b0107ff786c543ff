#!/usr/bin/env python
"""Submit to Kaggle and record the submission's fate:

scripts/submit.py [--config PATH] FILE -m MESSAGE [--dry-run] [KEY=VALUE ...]
    validates FILE against the competition's sample submission, runs
    `kaggle competitions submit <data.competition> -f FILE -m MESSAGE`, waits for Kaggle's score, and keeps
    a copy in submissions/ and a row (ref, status, public score, error) in submissions/index.csv.
    --dry-run (and the demo, data.source=demo) validates, shows the command and scores FILE locally when
    the held-out answers are known. A code competition (data.code_competition=true) refuses a CSV.
scripts/submit.py [--config PATH] --notebook -m MESSAGE [--dataset-id O/S] [--kernel-id O/S] [KEY=VALUE ...]
    code competitions: builds the offline package, uploads it as a Kaggle dataset, pushes a notebook that
    runs it, waits for the run, submits the notebook's submission.csv, waits for the score and records it."""

import argparse
from pathlib import Path

import _common  # noqa: F401

from comp.cli import main
from comp.errors import UserError


def run(args):
    from comp.experiment import load_config

    if args.file is not None and "=" in args.file and (args.notebook or not Path(args.file).exists()):
        args.overrides, args.file = [args.file, *args.overrides], None  # FILE, if any, is among the overrides
        plain = [o for o in args.overrides if "=" not in o or Path(o).exists()]  # after KEY=VALUE: still FILE
        if plain and not args.notebook:
            args.file = plain[0]
            args.overrides.remove(plain[0])
    cfg = load_config(args.config, args.overrides)  # every key, before any work
    if args.message is None:
        if not args.dry_run:
            raise UserError("-m MESSAGE is missing: the submission's description on Kaggle")
        args.message = "dry run"
    wait = {"wait_s": args.wait, "poll_s": args.poll}
    if args.notebook:
        from comp.submit.notebook import notebook_submit

        if args.file is not None:
            raise UserError(f"--notebook submits the notebook's output; drop FILE {args.file!r}")
        notebook_submit(cfg, args.message, config_path=args.config, dataset_id=args.dataset_id,
                        kernel_id=args.kernel_id, **wait)
        return
    from comp.submit.kaggle import submit

    if args.file is None:
        raise UserError("FILE is missing: the submission CSV (or --notebook for a code competition)")
    submit(cfg, Path(args.file), args.message, config_path=args.config, dry_run=args.dry_run, **wait)


if __name__ == "__main__":
    # FILE and KEY=VALUE overrides may come before or after -m: comp.cli.main parses intermixed
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML config (default: configs/demo.yaml)")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one error line")
    p.add_argument("--quiet", action="store_true", help="no progress bars (drawn only when stderr is a terminal)")
    p.add_argument("file", metavar="FILE", nargs="?", help="the submission CSV (not with --notebook)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.add_argument("-m", "--message", default=None, help="the submission's description on Kaggle (required but "
                   "with --dry-run)")
    p.add_argument("--dry-run", action="store_true", help="validate and score locally; submit nothing")
    p.add_argument("--notebook", action="store_true", help="code competition: package, upload, push, run, submit")
    p.add_argument("--dataset-id", default=None, metavar="OWNER/SLUG", help="the package's Kaggle dataset "
                   "(default <you>/<competition>-<experiment>-models, <you>: the user the kaggle CLI is logged in as)")
    p.add_argument("--kernel-id", default=None, metavar="OWNER/SLUG", help="the notebook "
                   "(default <you>/<competition>-<experiment>-infer)")
    p.add_argument("--wait", type=float, default=600.0, metavar="SECONDS",
                   help="how long to wait for Kaggle's score (default 600; 0: record as PENDING)")
    p.add_argument("--poll", type=float, default=15.0, metavar="SECONDS", help="seconds between status reads")
    main(run, p)
