"""scripts/submit.py's work: validate a CSV, hand it to `kaggle competitions submit`, wait for Kaggle's
verdict, and keep the record of every submission's fate.

Order matters: the file is validated against the competition's sample submission first (an invalid file
never reaches Kaggle, and costs no daily submission); a code competition (data.code_competition) refuses
a CSV before anything is sent, naming the notebook command that does submit it; the CLI runs next. Its
exit code proves nothing (older CLIs exit 0 after "Could not submit to competition"): the submission is
taken as made when the CLI's answer names its ref (kaggle >= 2.1 prints "Submission ref: N"; for an
older CLI the newest submission with this message is looked up). Then Kaggle's scoring is awaited by
polling `kaggle competitions submissions -c C --csv` (a 404, 429 or 5xx answer is "not yet", with a
back-off: comp.kaggle_cli.poll), and a copy of the file and a row are kept in
`predict.submissions_dir`/index.csv: when, which file, competition, config and its hash, git commit, CV
score, message, the CLI's answer, and the ref, status (COMPLETE, ERROR, or PENDING when the wait ran
out), public score and Kaggle's error message. A submission that ends in ERROR is recorded, then
reported as an error.

The demo competition (data.source=demo) has no Kaggle page: its submission is validated, the command
that would run is shown, and it is scored locally against the held-out answers; nothing is recorded,
since nothing was submitted. `--dry-run` does the same for any competition.
"""

from __future__ import annotations

import csv
import shlex
import shutil
from datetime import datetime, timezone
from io import StringIO
from pathlib import Path
from typing import Any

from comp import io, kaggle_cli
from comp.config import DEFAULT_CONFIG, REPO_ROOT, config_hash, resolve_path
from comp.data.competition import load_competition
from comp.errors import UserError
from comp.io import write_text
from comp.log import log
from comp.predict.submission import check, read_exact, row_view, score_holdout
from comp.system import git_commit

INDEX_COLUMNS = ["time", "file", "competition", "config", "config_hash", "git_commit", "cv_metric", "cv_score",
                 "message", "kaggle_answer", "kaggle_ref", "status", "public_score", "error", "kernel"]
WAIT_S = 600.0  # how long submit.py waits for Kaggle's score by default (most score in a minute or two)
POLL_S = 15.0  # seconds between status reads


def cv_score(cfg: Any) -> str:
    """The experiment's out-of-fold score (comp.experiment.Experiment.cv), or empty when no fold has an OOF."""
    from comp.experiment import Experiment

    try:
        return f"{Experiment(cfg).cv()[1]:.6f}"
    except UserError:
        return ""


def append_index(index: Path, row: dict[str, str]) -> None:
    """One row added to index.csv, the whole file rewritten atomically (comp.io), so a kill or a full disk
    leaves the previous index whole. An index written by an older kit, without some of INDEX_COLUMNS, gets
    the missing columns (empty in its old rows), so every row stays under its own header."""
    rows: list[dict[str, str]] = []
    header: list[str] = []
    if index.is_file() and index.stat().st_size > 0:
        with open(index, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = list(reader.fieldnames or [])
    columns = header + [c for c in INDEX_COLUMNS if c not in header]
    buf = StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    w.writerows([*rows, row])
    write_text(index, buf.getvalue(), what="the submissions index")


SUBMISSIONS = ["competitions", "submissions", "-c"]  # + C, "--csv": the list of the competition's submissions
REF_WAIT_S = 120.0  # how long a submission the CLI named no ref for is looked for in the list
ERROR_WAIT_S = 60.0  # how long Kaggle's message of a failed submission is asked for


def _rows(out: str) -> list[dict[str, str]]:
    """The rows of `kaggle competitions submissions -c C --csv`, newest first: ref, fileName, date,
    description, status, publicScore, privateScore (status as kaggle 2.x prints it, e.g.
    SubmissionStatus.COMPLETE)."""
    lines = out.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("ref,")), None)
    return [] if start is None else list(csv.DictReader(lines[start:]))


def _status(row: dict[str, str] | None) -> str:
    return (row or {}).get("status", "PENDING").rsplit(".", 1)[-1].upper() or "PENDING"


def _error_of(ref: int, poll_s: float = POLL_S) -> str:
    """Kaggle's scoring error of a submission (`kaggle competitions submission REF`, kaggle >= 2.1); empty
    when it cannot be read within ERROR_WAIT_S (not found or busy meanwhile) or is refused."""
    try:
        out = kaggle_cli.poll(["competitions", "submission", str(ref)], lambda o: o, ERROR_WAIT_S, poll_s,
                              f"the error of submission {ref}")
    except UserError:
        return ""
    lines = (out or "").splitlines()
    for i, ln in enumerate(lines):
        if ln.startswith("Error:"):
            rest = [x.strip() for x in lines[i + 1:] if x.startswith(" ")]  # continuation lines are indented
            return " ".join([ln[len("Error:"):].strip(), *rest]).strip()
    return ""


def find_ref(competition: str, message: str, wait_s: float = REF_WAIT_S, poll_s: float = POLL_S) -> int | None:
    """The newest submission described by `message`: the ref for a CLI that does not print it. A new
    submission may be missing from the list for a while, and the list may answer 404, 429 or 5xx: it is
    looked for until `wait_s` has passed (comp.kaggle_cli.poll); None then.

    Raises:
        KaggleError: the list is refused (403, 400).
    """
    def described(out: str) -> int | None:
        return next((int(r["ref"]) for r in _rows(out) if r.get("description") == message
                     and r.get("ref", "").isdigit()), None)

    return kaggle_cli.poll([*SUBMISSIONS, competition, "--csv"], described, wait_s, poll_s,
                           f"a submission described {message!r}", state=lambda out: "not in the list yet")


def wait_for_score(competition: str, ref: int, wait_s: float = WAIT_S, poll_s: float = POLL_S) -> dict[str, str]:
    """Poll the competition's submissions until submission `ref` is COMPLETE or ERROR, or `wait_s` has
    passed (status PENDING). Not found, 429 and 5xx answers count as "not yet" (comp.kaggle_cli.poll).
    Returns kaggle_ref, status, public_score and error (Kaggle's message).

    Raises:
        KaggleError: the list is refused (403, 400).
    """
    def scored(out: str) -> dict[str, str] | None:
        row = next((r for r in _rows(out) if r.get("ref") == str(ref)), None)
        return row if _status(row) in ("COMPLETE", "ERROR") else None

    def pending(out: str) -> str:
        return _status(next((r for r in _rows(out) if r.get("ref") == str(ref)), None))

    row = kaggle_cli.poll([*SUBMISSIONS, competition, "--csv"], scored, wait_s, poll_s, f"submission {ref}",
                          state=pending)
    status = _status(row)
    error = _error_of(ref, poll_s) if status == "ERROR" else ""
    return {"kaggle_ref": str(ref), "status": status, "public_score": (row or {}).get("publicScore", ""),
            "error": error}


def record(cfg: Any, output: str, message: str, file: str, config_path: str | None, kernel: str = "",
           wait_s: float = WAIT_S, poll_s: float = POLL_S) -> dict[str, str]:
    """After the CLI's submit answered `output`: find the ref, wait for the score, append the row.

    Raises:
        UserError: no submission was made (no ref: nothing is recorded), or it ended in ERROR (recorded).
    """
    competition = cfg.data.competition
    answer = kaggle_cli.last_line(output)
    ref = kaggle_cli.submission_ref(output) or find_ref(competition, message, poll_s=poll_s)
    if ref is None:
        raise UserError(f"kaggle did not confirm a submission to {competition} (no ref in its answer, none "
                        f"described {message!r} in its list): {answer!r}")
    log(f"kaggle: submission {ref} made; waiting up to {wait_s:g} s for its score")
    fate = {"kaggle_ref": str(ref), "status": "PENDING", "public_score": "", "error": ""}
    if wait_s > 0:
        try:
            fate = wait_for_score(competition, ref, wait_s, poll_s)
        except UserError as e:  # the submission exists: record it even when its status cannot be read
            fate["error"] = f"status not read: {e}"
    folder = resolve_path(cfg.predict.submissions_dir)
    folder.mkdir(parents=True, exist_ok=True)
    row = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "file": file,
           "competition": competition, "config": config_path or _shown(DEFAULT_CONFIG),
           "config_hash": config_hash(cfg), "git_commit": git_commit(), "cv_metric": cfg.metric,
           "cv_score": cv_score(cfg), "message": message, "kaggle_answer": answer, "kernel": kernel, **fate}
    append_index(folder / "index.csv", row)
    log(f"recorded in {_shown(folder / 'index.csv')}: submission {ref} {fate['status']}"
        + (f", public score {fate['public_score']}" if fate["public_score"] else ""))
    if fate["status"] == "ERROR":
        raise UserError(f"submission {ref} to {competition} failed to score: {fate['error'] or 'no message'} "
                        f"(recorded in {_shown(folder / 'index.csv')})")
    return row


def _keep_copy(file: Path, folder: Path, stamp: str) -> Path:
    dest = folder / f"{stamp}_{file.stem}.csv"
    n = 1
    while dest.exists():
        dest, n = folder / f"{stamp}_{file.stem}_{n}.csv", n + 1
    shutil.copy2(file, dest)
    return dest


def _shown(p: Path) -> str:
    return str(p.relative_to(REPO_ROOT)) if p.is_relative_to(REPO_ROOT) else str(p)


def submit(cfg: Any, file: Path, message: str, config_path: str | None = None, dry_run: bool = False,
           wait_s: float = WAIT_S, poll_s: float = POLL_S) -> dict[str, Any]:
    """Validate `file`, submit it with the Kaggle CLI, wait for its score and record it; returns the index
    row (or, for a dry run, what would have run and the local score).

    Raises:
        UserError: an invalid file, a code competition (nothing is submitted or written), no competition or
            message, the CLI failing (its answer in one line; nothing is written), no confirmed submission,
            or a submission Kaggle could not score (recorded).
    """
    if not message.strip():
        raise UserError("-m MESSAGE is empty: say what this submission is")
    df = read_exact(file)
    if cfg.data.layout == "visits":  # OSIC's rows per patient and week (scripts/tabular.py): the sample checks it
        from comp.data.visits import load_visits
        from comp.predict.checks import validate

        comp, sample = None, load_visits(cfg).sample
        validate(df, sample, str(sample.columns[0]), "value", [])
    else:
        cfg, comp = row_view(cfg, load_competition(cfg))  # rows grouping images: data.submission_id_column
        check(cfg, comp, df)
    log(f"{file}: valid ({len(df)} rows, header {list(df.columns)})")
    competition = cfg.data.competition
    args = ["competitions", "submit", competition, "-f", str(file), "-m", message]
    if dry_run or cfg.data.source == "demo":
        why = "data.source=demo has no Kaggle competition" if cfg.data.source == "demo" else "--dry-run"
        if cfg.data.source != "demo" and not competition:
            log(f"not submitted ({why}); data.competition is empty, so there is no competition to submit to")
        elif cfg.data.code_competition:
            log(f"not submitted ({why}); {competition} is a code competition: Kaggle refuses a CSV upload, "
                f"scripts/submit.py --notebook -m MSG submits the notebook that writes it; check the notebook's "
                f"package offline first: scripts/package.py, then python <package>/infer.py --data <data.root> "
                f"(docs/code-competitions.md)")
        else:
            log(f"not submitted ({why}); the command would be: {kaggle_cli.describe(args)}")
        score = score_holdout(cfg, comp, df) if comp is not None else None
        if score is not None:
            log(f"local score against the held-out answers: {cfg.metric} {score:.4f}")
        return {"command": kaggle_cli.describe(args), "score": score}
    if not competition:
        raise UserError("data.competition is empty: name the Kaggle competition to submit to")
    if cfg.data.code_competition:
        command = shlex.join(["python", "scripts/submit.py", *(["--config", config_path] if config_path else []),
                              "--notebook", "-m", message])
        raise UserError(f"{competition} is a code competition (data.code_competition=true): Kaggle refuses a CSV "
                        f"upload (400); submit the notebook instead: {command}")
    io.check_dir(resolve_path(cfg.predict.submissions_dir), "predict.submissions_dir")  # before it is sent
    output = kaggle_cli.run(args)
    folder = resolve_path(cfg.predict.submissions_dir)
    folder.mkdir(parents=True, exist_ok=True)
    copy = _keep_copy(file, folder, datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
    try:
        return record(cfg, output, message, _shown(copy), config_path, wait_s=wait_s, poll_s=poll_s)
    except UserError:
        if not (folder / "index.csv").is_file() or _shown(copy) not in (folder / "index.csv").read_text():
            copy.unlink(missing_ok=True)  # not recorded: no copy either
        raise
