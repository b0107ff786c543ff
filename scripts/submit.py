#!/usr/bin/env python
"""Submit a CSV to Kaggle: scripts/submit.py [--config PATH] FILE -m MESSAGE [--dry-run] [KEY=VALUE ...]

Validates FILE against the competition's sample submission, runs
`kaggle competitions submit <data.competition> -f FILE -m MESSAGE`, and only when that succeeds keeps a copy
in submissions/ and appends a row to submissions/index.csv. --dry-run (and the demo, data.source=demo)
validates, shows the command and scores FILE locally when the held-out answers are known."""

import argparse
from pathlib import Path

import _common  # noqa: F401

from comp.cli import main


def run(args):
    from comp.config import load_config
    from comp.submit.kaggle import submit

    cfg = load_config(args.config, args.overrides)
    submit(cfg, Path(args.file), args.message, config_path=args.config, dry_run=args.dry_run)


if __name__ == "__main__":
    # FILE and KEY=VALUE overrides may come before or after -m: comp.cli.main parses intermixed
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML config (default: configs/demo.yaml)")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one error line")
    p.add_argument("file", metavar="FILE", help="the submission CSV")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.add_argument("-m", "--message", required=True, help="the submission's description on Kaggle")
    p.add_argument("--dry-run", action="store_true", help="validate and score locally; submit nothing")
    main(run, p)
