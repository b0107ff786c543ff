#!/usr/bin/env python
"""Benchmark the kit against the lab reports' loader and timm (BENCHMARKS.md):
benchmarks/run.py [--quick] [--sections loader model e2e gpu recipes predict mil] [--json] [--work DIR]
  [--compile-modes MODE ...] [--gpu-images N] [--recipes CONFIG ...] [--recipe-steps N]
  [--predict-images N] [--predict-models M ...]

A table on stdout; with --json, every number as one JSON object on the last line."""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: comp/ and benchmarks/

from comp.cli import main  # noqa: E402

# benchmarks.harness.SECTIONS, without importing torch for --help
SECTIONS = ("loader", "model", "e2e", "gpu", "recipes", "predict", "mil")


def run(args):
    from benchmarks.harness import run as bench

    command = " ".join(["python", "benchmarks/run.py", *sys.argv[1:]])
    options = {k: getattr(args, k) for k in ("compile_modes", "gpu_images", "recipes", "recipe_steps",
                                             "predict_images", "predict_models")}
    result = bench(args.sections, quick=args.quick, work=Path(args.work) if args.work else None, command=command,
                   options=options)
    if args.json:
        print(json.dumps(result, default=float))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: under a minute on 2 CPU cores")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="which sections to run")
    p.add_argument("--json", action="store_true", help="print every number as one JSON object on the last line")
    p.add_argument("--work", default=None,
                   help="where generated images and demo data are kept (default: $TMPDIR/comp-bench)")
    p.add_argument("--compile-modes", nargs="+", default=None, metavar="MODE",
                   help="gpu and predict sections: the torch.compile modes to measure beside eager (default: gpu "
                        "default reduce-overhead max-autotune-no-cudagraphs max-autotune; predict true)")
    p.add_argument("--gpu-images", type=int, default=None, help="gpu section: images in the set (default 16384)")
    p.add_argument("--recipes", nargs="+", default=None, metavar="CONFIG",
                   help="recipes section: config names under configs/ (default: every one)")
    p.add_argument("--recipe-steps", type=int, default=None, help="recipes section: optimizer steps an epoch")
    p.add_argument("--predict-images", type=int, default=None, help="predict section: test images (default 10000)")
    p.add_argument("--predict-models", nargs="+", default=None, metavar="MODEL",
                   help="predict section: model names (default resnet50 timm/efficientnet_b3)")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one error line")
    main(run, p)
