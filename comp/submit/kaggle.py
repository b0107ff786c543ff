"""scripts/submit.py's work: validate a CSV, hand it to `kaggle competitions submit`, and keep the record.

Order matters: the file is validated against the competition's sample submission first (an invalid file
never reaches Kaggle, and costs no daily submission); the CLI runs next; only when it succeeds is a copy
of the file kept in `predict.submissions_dir` and a row appended to its index.csv: when, which file,
competition, config and its hash, git commit, CV score, message, and the CLI's answer.

The demo competition (data.source=demo) has no Kaggle page: its submission is validated, the command
that would run is shown, and it is scored locally against the held-out answers; nothing is recorded,
since nothing was submitted. `--dry-run` does the same for any competition.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from comp import io, kaggle_cli
from comp.config import DEFAULT_CONFIG, REPO_ROOT, config_hash, resolve_path
from comp.data.competition import load_competition
from comp.errors import UserError
from comp.log import log
from comp.submit.submission import check, read_exact, score_holdout

INDEX_COLUMNS = ["time", "file", "competition", "config", "config_hash", "git_commit", "cv_metric", "cv_score",
                 "message", "kaggle_answer"]


def git_commit() -> str:
    """The checkout's commit, `+dirty` when tracked files differ from it; `unknown` outside git."""
    try:
        head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=30)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cv_score(cfg: Any) -> str:
    """The experiment's out-of-fold score (comp.report.cv_table), or empty when no fold has an OOF."""
    from comp.train.oof import cv_table

    try:
        return f"{cv_table(cfg)[1]:.6f}"
    except UserError:
        return ""


def append_index(index: Path, row: dict[str, str]) -> None:
    """One row appended to index.csv (its header written first when the file is new)."""
    new = not index.is_file() or index.stat().st_size == 0
    with open(index, "a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=INDEX_COLUMNS, lineterminator="\n")
        if new:
            w.writeheader()
        w.writerow(row)


def _keep_copy(file: Path, folder: Path, stamp: str) -> Path:
    dest = folder / f"{stamp}_{file.stem}.csv"
    n = 1
    while dest.exists():
        dest, n = folder / f"{stamp}_{file.stem}_{n}.csv", n + 1
    shutil.copy2(file, dest)
    return dest


def _shown(p: Path) -> str:
    return str(p.relative_to(REPO_ROOT)) if p.is_relative_to(REPO_ROOT) else str(p)


def submit(cfg: Any, file: Path, message: str, config_path: str | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Validate `file`, submit it with the Kaggle CLI and record it; returns the index row (or, for a
    dry run, what would have run and the local score).

    Raises:
        UserError: an invalid file (nothing is submitted or written), no competition or message, or the
            CLI failing (its answer in one line; nothing is written).
    """
    if not message.strip():
        raise UserError("-m MESSAGE is empty: say what this submission is")
    comp = load_competition(cfg)
    df = read_exact(file)
    check(cfg, comp, df)
    log(f"{file}: valid ({len(df)} rows, header {list(df.columns)})")
    competition = cfg.data.competition
    args = ["competitions", "submit", competition, "-f", str(file), "-m", message]
    if dry_run or cfg.data.source == "demo":
        why = "data.source=demo has no Kaggle competition" if cfg.data.source == "demo" else "--dry-run"
        log(f"not submitted ({why}); the command would be: {kaggle_cli.describe(args)}")
        score = score_holdout(cfg, comp, df)
        if score is not None:
            log(f"local score against the held-out answers: {cfg.metric} {score:.4f}")
        return {"command": kaggle_cli.describe(args), "score": score}
    if not competition:
        raise UserError("data.competition is empty: name the Kaggle competition to submit to")
    io.check_dir(resolve_path(cfg.predict.submissions_dir), "predict.submissions_dir")  # before it is sent
    answer = kaggle_cli.last_line(kaggle_cli.run(args))
    log(f"kaggle: {answer}")
    folder = resolve_path(cfg.predict.submissions_dir)
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc)
    copy = _keep_copy(file, folder, now.strftime("%Y%m%dT%H%M%SZ"))
    row = {"time": now.isoformat(timespec="seconds"), "file": _shown(copy), "competition": competition,
           "config": config_path or _shown(DEFAULT_CONFIG), "config_hash": config_hash(cfg), "git_commit": git_commit(),
           "cv_metric": cfg.metric, "cv_score": cv_score(cfg), "message": message, "kaggle_answer": answer}
    append_index(folder / "index.csv", row)
    log(f"recorded in {_shown(folder / 'index.csv')}; copy kept as {_shown(copy)}")
    return row
