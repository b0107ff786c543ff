"""What every script shares: `--config PATH`, `--debug`, `KEY=VALUE` overrides, and the mapping of user
errors to one `error:` line on stderr with exit code 2 (a traceback only with `--debug`)."""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Any, Callable

from comp.errors import UserError


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every script takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", default=None, help="YAML config (default: configs/demo.yaml)")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one error line")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. epochs=3 model.name=resnet50")
    return p


def main(run: Callable[[argparse.Namespace], Any], p: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    """Parse arguments and call `run(args)`; exit 2 with one `error:` line on a `UserError`, 130 on
    Ctrl-C, and 1 with a one-line message (traceback with --debug) on anything unexpected."""
    args = p.parse_args(argv)
    try:
        code = run(args)
    except UserError as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except MemoryError as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: out of memory ({e}); try a smaller batch_size", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        if args.debug:
            raise
        if type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e):
            print("error: out of memory on the device; try a smaller batch_size (e.g. batch_size=32)", file=sys.stderr)
            sys.exit(2)
        print(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)
    sys.exit(int(code or 0))
