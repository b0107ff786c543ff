#!/usr/bin/env python
"""Start a config from a competition download: scripts/init.py DIR [-o config.yaml] [--force]

Looks at DIR (its CSVs and their columns, image folders and extensions, class folders, a sample
submission, a patient-like id) and writes a commented config with a reason for every guess (printed on
stderr too); edit it, then `python scripts/prepare.py --config config.yaml`."""

import sys
from pathlib import Path

import _common  # noqa: F401

from comp.cli import main


def run(args):
    from comp import io
    from comp.data.inspect import config_text, inspect_download
    from comp.errors import UserError

    out = Path(args.output)
    if out.exists() and not args.force:
        raise UserError(f"{out} already exists; pass --force to replace it, or -o another file")
    guess = inspect_download(args.dir)
    for key, value in guess.values.items():
        print(f"{key} = {value!r}: {guess.why[key]}", file=sys.stderr)
    for note in guess.notes:
        print(f"note: {note}", file=sys.stderr)
    io.write_text(out, config_text(guess, out))
    print(f"wrote {out}; check the guesses, then: python scripts/prepare.py --config {out}", file=sys.stderr)


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", metavar="DIR", help="the unzipped competition download")
    p.add_argument("-o", "--output", default="config.yaml", help="the config to write (default config.yaml)")
    p.add_argument("--force", action="store_true", help="replace the output file when it exists")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one error line")
    main(run, p)
