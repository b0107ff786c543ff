"""Logging for the kit: every message to stderr (above the progress bars), so stdout stays clean for
the CSV that scripts/predict.py writes."""

import sys

from tqdm import tqdm


def log(msg: str) -> None:
    tqdm.write(msg, file=sys.stderr)
