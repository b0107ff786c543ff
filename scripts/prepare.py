#!/usr/bin/env python
"""Get the data ready: build the demo, or with --download (or data.download=true) fetch a missing data.root
from Kaggle; check every label, the sample submission and every image (listing every unusable one at
once), build the pre-resized image cache in parallel (resumable: rerun after an interruption; a replaced
image's entry is rebuilt; --rebuild-cache rebuilds all), and write the folds once to <out_dir>/folds.csv.
data.extra's images are checked and cached too, and each of `stages` with its own image_size or
preprocessing gets its own cache."""

import _common  # noqa: F401

from comp.cli import main, parser


def run(args):
    from comp.experiment import load_config
    from comp.pipeline import prepare

    cfg = load_config(args.config, args.overrides)  # every key first
    prepare(cfg, download=args.download, rebuild_cache=args.rebuild_cache)


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--download", action="store_true",
                   help="download data.root from Kaggle when it is missing or empty (data.source, data.competition)")
    p.add_argument("--rebuild-cache", action="store_true", help="rebuild every image cache entry")
    main(run, p)
