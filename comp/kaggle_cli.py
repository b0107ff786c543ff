"""The real Kaggle CLI, run as a subprocess: found on PATH (else beside this interpreter, e.g. .venv/bin),
its failure turned into one `error:` line, and credentials never echoed.

The kit never reads or handles the credentials itself: the CLI finds them (KAGGLE_API_TOKEN,
~/.kaggle/access_token, kaggle.json or KAGGLE_USERNAME/KAGGLE_KEY, `kaggle auth login`'s
~/.kaggle/credentials.json) and, when it cannot, prints its own instructions, which are passed on joined
into one line. Who is logged in is asked of the CLI too (`username`), whichever login it chose.

A failure is a KaggleError whose `kind` says what a poll makes of it (`classify`): "missing" (404),
"busy" (429, 5xx, the connection) or "refused" (400, 401, 403, anything else). `poll` looks again after
"missing" and "busy" until its deadline, with an exponential back-off: a brand-new dataset or notebook
answers 404 for a while (kaggle-cli#890, colabtools#294, fastkaggle PR #13), and the API rate-limits.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from comp.errors import UserError
from comp.log import log

AUTH_WORDS = ("Authentication required", "kaggle.json", "access_token", "KAGGLE_API_TOKEN", "KAGGLE_KEY",
              "Unauthorized", "401")
SECRET_VARS = ("KAGGLE_KEY", "KAGGLE_API_TOKEN")
MESSAGE_LINES = 5  # of a failing CLI's output, the last lines shown (Kaggle's message and the CLI's hint)
# Answers that mean failure although the CLI exits 0 (kaggle 2.x prints them and returns; older CLIs
# also after "Could not submit to competition").
FAILED_ANSWERS = ("Could not submit to competition", "Kernel push error", "Dataset creation error",
                  "Dataset version creation error")
# How a failing CLI names the HTTP status. kaggle 2.x prints the server's message, then a hint per status
# (kaggle/api/kaggle_api_extended.py _HTTP_ERROR_HINTS, format_http_error), never the code itself; requests
# says "404 Client Error: Not Found for url", kaggle 1.x "404 - Not Found". Refusals are looked for first:
# a 403's hint is about access, never "not found".
REFUSED = re.compile(r"You don't have access|Authentication required|Unauthenticated|\b40[013]\b")
MISSING = re.compile(r"The resource was not found|\b404\b|Not Found")
BUSY = re.compile(r"\b429\b|rate limited|Too Many Requests|\b5\d\d (?:Server Error|-)|problem on Kaggle's side|"
                  r"Service Unavailable|Bad Gateway|Gateway Time-?out|Internal Server Error|ConnectionError|"
                  r"Connection (?:aborted|refused|reset)|Max retries exceeded|timed out")
BACKOFF_CAP_S = 300.0  # the longest wait between two looks after "not found" or "busy" answers
clock: Callable[[], float] = time.monotonic  # the polls' time, replaced by tests (no real sleeps)
sleep: Callable[[float], None] = time.sleep
T = TypeVar("T")


class KaggleError(UserError):
    """`kaggle <args>` failed: the message names the command and gives the CLI's answer in one line;
    `answer` is that answer, `kind` what it means for a poll (classify)."""

    def __init__(self, args: list[str], answer: str, kind: str):
        super().__init__(f"{describe(args)} failed: {answer}")
        self.answer, self.kind = answer, kind


def classify(output: str) -> str:
    """What a failing CLI's `output` means: "missing" (404: not there, or not visible yet), "busy" (429,
    5xx, a dropped connection: try later) or "refused" (400, 401, 403, a CLI error: trying again cannot
    help)."""
    if REFUSED.search(output):
        return "refused"
    if MISSING.search(output):
        return "missing"
    return "busy" if BUSY.search(output) else "refused"


def executable() -> str:
    """The `kaggle` program: the first on PATH (so a stand-in placed first wins), else the one installed
    beside the running interpreter (a venv used without activating it)."""
    found = shutil.which("kaggle")
    if found:
        return found
    beside = Path(sys.executable).parent / "kaggle"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    raise UserError("the kaggle CLI is not on PATH (pip install kaggle, or activate the venv)")


def scrub(text: str) -> str:
    """`text` with the value of any credential environment variable masked."""
    for var in SECRET_VARS:
        value = os.environ.get(var, "")
        if len(value) >= 4:
            text = text.replace(value, "***")
    return text


def one_line(output: str, returncode: int) -> str:
    """The CLI's answer in one line: its whole message when it is about credentials (the instructions
    are the point), else its last lines (kaggle 2.x prints Kaggle's own message, then a hint paragraph:
    "You must accept this competition's rules ... / You don't have access ... rules first at URL"),
    progress bars and "Downloading X to DIR" left out."""
    lines = [ln.strip() for ln in scrub(output).replace("\r", "\n").splitlines()
             if ln.strip() and "%|" not in ln and not ln.startswith(("Downloading ", "Uploading "))]
    if not lines:
        return f"exit code {returncode}"
    text = "\n".join(lines)
    if any(w in text for w in AUTH_WORDS):
        return " ".join(dict.fromkeys(lines))  # the CLI repeats its message on stdout and stderr: once
    return " ".join(dict.fromkeys(lines[-MESSAGE_LINES:]))


def last_line(output: str) -> str:
    """The last non-empty line of the CLI's output (its answer: "Successfully submitted to ...")."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def describe(args: list[str]) -> str:
    return shlex.join(["kaggle", *args])


def run(args: list[str], stream: bool = False) -> str:
    """Run `kaggle <args>`; returns its output, stdout and stderr interleaved as a terminal shows them
    (credentials masked). With `stream`, the output is also passed on to stderr as it comes (download
    progress).

    Raises:
        UserError: the CLI is missing.
        KaggleError: it exits non-zero, or exits 0 with a failure's answer: `kaggle <args> failed: <its
            answer>`, its kind (classify) attached.
    """
    exe = executable()
    proc = subprocess.Popen([exe, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    chunks = []
    while chunk := proc.stdout.read1(65536):
        chunks.append(chunk)
        if stream:
            sys.stderr.write(scrub(chunk.decode("utf-8", "replace")))
            sys.stderr.flush()
    code = proc.wait()
    output = scrub(b"".join(chunks).decode("utf-8", "replace"))
    if code != 0:
        raise KaggleError(args, one_line(output, code), classify(output))
    failed = [ln.strip() for ln in output.splitlines() if ln.strip().startswith(FAILED_ANSWERS)]
    if failed:
        raise KaggleError(args, failed[-1], "refused")
    return output


def poll(args: list[str], done: Callable[[str], T | None], wait_s: float, poll_s: float, what: str,
         retry: tuple[str, ...] = ("missing", "busy"), state: Callable[[str], str] = last_line) -> T | None:
    """Run `kaggle <args>` until `done(output)` is not None, and return that; None when `wait_s` seconds
    have passed (the last look is at the deadline). A failure of a kind in `retry` (default: not found,
    429, 5xx) is "not yet": the next look comes after `poll_s` doubled per failure in a row, at most
    BACKOFF_CAP_S, never past the deadline; a successful "not yet" (`done` gives None) waits `poll_s`.
    Each wait is logged with `what` and the answer (`state(output)` for a successful one).

    Kaggle's Retry-After header is not passed on: the CLI prints the server's message and a hint only
    (kaggle 2.2.5 cli.py, format_http_error), and honours the header itself where it retries (with_retry).

    Raises:
        UserError: the CLI is missing.
        KaggleError: a failure of another kind (a refusal: 400, 401, 403), at once.
    """
    deadline = clock() + wait_s
    failures = 0
    while True:
        try:
            out = run(args)
        except KaggleError as e:
            if e.kind not in retry:
                raise
            failures += 1
            answer, delay = e.answer, min(poll_s * 2 ** failures, BACKOFF_CAP_S)
        else:
            result = done(out)
            if result is not None:
                return result
            failures, answer, delay = 0, state(out), poll_s
        left = deadline - clock()
        if left <= 0:
            log(f"{what}: {answer}; no more looks ({wait_s:g} s passed)")
            return None
        delay = min(delay, left)
        log(f"{what}: {answer}; next look in {delay:.3g} s")
        sleep(delay)


def username() -> str:
    """The Kaggle user the CLI is logged in as, whichever login it chose (`kaggle config view`: the user
    an API token belongs to, kaggle.json's or KAGGLE_USERNAME, `kaggle auth login`'s). Datasets and
    notebooks are created under this owner.

    Raises:
        UserError: the CLI is missing, not logged in (its instructions), or names no user.
    """
    out = run(["config", "view"])
    m = re.search(r"^- username: (\S+)\s*$", out, re.M)
    if not m or m.group(1) == "None":
        raise UserError(f"kaggle config view names no user ({last_line(out)!r}): log the Kaggle CLI in "
                        "(docs/new-competition.md)")
    return m.group(1)


def submission_ref(output: str) -> int | None:
    """The submission's ref from `kaggle competitions submit`'s answer ("Submission ref: 50123456", kaggle
    >= 2.1); None when the CLI printed none (an older one)."""
    m = re.search(r"^Submission ref: (\d+)\s*$", output, re.M)
    return int(m.group(1)) if m else None
