#!/usr/bin/env python
"""Get the data ready: download it when data.root is empty (or build the demo), check every label and
image (listing every unusable one at once), build the pre-resized image cache in parallel (resumable:
rerun after an interruption), and write the folds once to <out_dir>/folds.csv."""

import _common  # noqa: F401

from comp.cli import main, parser
from comp.data.prepare import prepare


def run(args):
    from comp import validate_config
    from comp.config import load_config

    prepare(validate_config(load_config(args.config, args.overrides)))  # every key, before any work


if __name__ == "__main__":
    main(run, parser(__doc__))
