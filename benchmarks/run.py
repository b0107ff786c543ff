#!/usr/bin/env python
"""Benchmark the kit against the lab reports' loader and timm (BENCHMARKS.md):
benchmarks/run.py [--quick] [--sections loader model e2e gpu] [--json] [--work DIR]

A table on stdout; with --json, every number as one JSON object on the last line."""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: comp/ and benchmarks/

from comp.cli import main  # noqa: E402

SECTIONS = ("loader", "model", "e2e", "gpu")  # benchmarks.harness.SECTIONS, without importing torch for --help


def run(args):
    from benchmarks.harness import run as bench

    command = " ".join(["python", "benchmarks/run.py", *sys.argv[1:]])
    result = bench(args.sections, quick=args.quick, work=Path(args.work) if args.work else None, command=command)
    if args.json:
        print(json.dumps(result, default=float))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: under a minute on 2 CPU cores")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="which sections to run")
    p.add_argument("--json", action="store_true", help="print every number as one JSON object on the last line")
    p.add_argument("--work", default=None,
                   help="where generated images and demo data are kept (default: $TMPDIR/comp-bench)")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one error line")
    main(run, p)
