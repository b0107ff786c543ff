"""The real Kaggle CLI, run as a subprocess: found on PATH (else beside this interpreter, e.g. .venv/bin),
its failure turned into one `error:` line, and credentials never echoed.

The kit never reads or handles the credentials itself: the CLI finds them (`kaggle auth login`,
KAGGLE_API_TOKEN, ~/.kaggle/access_token or the older kaggle.json) and, when it cannot, prints its own
instructions, which are passed on joined into one line.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from comp.errors import UserError

AUTH_WORDS = ("Authentication required", "kaggle.json", "access_token", "KAGGLE_API_TOKEN", "KAGGLE_KEY",
              "Unauthorized", "401")
SECRET_VARS = ("KAGGLE_KEY", "KAGGLE_API_TOKEN")
MESSAGE_LINES = 5  # of a failing CLI's output, the last lines shown (Kaggle's message and the CLI's hint)
# Answers that mean failure although the CLI exits 0 (kaggle 2.x prints them and returns; older CLIs
# also after "Could not submit to competition").
FAILED_ANSWERS = ("Could not submit to competition", "Kernel push error", "Dataset creation error",
                  "Dataset version creation error")


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
        UserError: the CLI is missing, or exits non-zero: `kaggle <args> failed: <its answer>`.
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
        raise UserError(f"{describe(args)} failed: {one_line(output, code)}")
    failed = [ln.strip() for ln in output.splitlines() if ln.strip().startswith(FAILED_ANSWERS)]
    if failed:
        raise UserError(f"{describe(args)} failed: {failed[-1]}")
    return output


def submission_ref(output: str) -> int | None:
    """The submission's ref from `kaggle competitions submit`'s answer ("Submission ref: 50123456", kaggle
    >= 2.1); None when the CLI printed none (an older one)."""
    m = re.search(r"^Submission ref: (\d+)\s*$", output, re.M)
    return int(m.group(1)) if m else None
