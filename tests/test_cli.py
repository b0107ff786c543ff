"""comp.cli, what every script shares: flags and KEY=VALUE overrides in any order; a user's or the machine's
failure (a UserError, from a DataLoader worker too; workers out of shared memory; a file where a folder
belongs, a folder not writable) as one `error:` line with exit code 2; the kit's own bugs kept visible
(`internal error:` naming the frame and a traceback file); progress bars only on a terminal (comp.log)."""

from __future__ import annotations

import io
import os
import pickle
import re
import signal
import sys
from contextlib import redirect_stderr
from pathlib import Path

import pytest
import torch
from helpers import COMMON, one_error, run_main, write_tiny_competition

import comp.cli as cli
from comp.data.image_base import ImageError
from comp.errors import UserError, worker_user_error
from comp.log import progress, set_quiet


def call_main(run, *argv: str) -> tuple[int, str]:
    """comp.cli.main(run) with `argv`: (exit code, stderr)."""
    err = io.StringIO()
    with redirect_stderr(err), pytest.raises(SystemExit) as e:
        cli.main(run, cli.parser("test"), list(argv))
    return e.value.code, err.getvalue()


# --- flags and overrides in any order ---------------------------------------------------------------------

CASES = {
    "train_fold.py": (["--fold", "0", "epochs=3", "--resume", "seed=1"], {"fold": 0, "resume": True}),
    "predict.py": (["epochs=3", "--save-probs", "p.csv", "seed=1"], {"save_probs": "p.csv"}),
    "package.py": (["epochs=3", "-o", "d", "seed=1", "--force"], {"output": "d", "force": True}),
    "prepare.py": (["epochs=3", "--debug", "seed=1"], {"debug": True}),
    "report.py": (["epochs=3", "--metric", "qwk", "seed=1"], {"metric": "qwk"}),
    "submit.py": (["f.csv", "epochs=3", "-m", "msg", "seed=1", "--dry-run"], {"file": "f.csv", "dry_run": True}),
}


@pytest.mark.parametrize("script", sorted(CASES))
def test_every_script_takes_overrides_before_and_after_a_flag(script, monkeypatch):
    real, seen = cli.main, []
    monkeypatch.setattr(cli, "main", lambda run, p, argv=None: real(seen.append, p, argv))
    argv, want = CASES[script]
    code, _, err = run_main(script, *argv)
    assert code == 0, err
    assert seen[0].overrides == ["epochs=3", "seed=1"]
    assert {k: getattr(seen[0], k) for k in want} == want


# --- a UserError raised in a DataLoader worker -------------------------------------------------------------

class Raising(torch.utils.data.Dataset):
    def __init__(self, exc):
        self.exc = exc

    def __len__(self):
        return 2

    def __getitem__(self, i):
        raise self.exc


@pytest.mark.parametrize("exc", [ImageError("truncated", Path("/data/test/a.png"), "image file is truncated"),
                                 UserError("train.csv: row 3 has label '7'")])
def test_a_user_error_in_a_loader_worker_reaches_the_user_as_its_line(exc):
    def run(_args):
        for _ in torch.utils.data.DataLoader(Raising(exc), batch_size=1, num_workers=1):
            pass

    code, err = call_main(run)
    assert one_error(code, err) == f"error: {exc}"


def test_user_errors_pickle_to_themselves():
    e = ImageError("corrupt", Path("/x/y.png"), "bad header")
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is ImageError and str(back) == str(e)
    assert (back.kind, back.path, back.detail) == ("corrupt", Path("/x/y.png"), "bad header")
    assert worker_user_error(RuntimeError("Caught ValueError in DataLoader worker process 0.\nOriginal Traceback "
                                          "(most recent call last):\nValueError: x")) is None  # a bug stays one


# --- out of shared memory ----------------------------------------------------------------------------------

class BusError(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        os.kill(os.getpid(), signal.SIGBUS)  # what a write past a full /dev/shm does to a worker


def test_workers_out_of_shared_memory_are_one_line_with_the_remedy(capfd):
    def run(_args):
        for _ in torch.utils.data.DataLoader(BusError(), batch_size=1, num_workers=1):
            pass

    code, err = call_main(run)  # torch: "DataLoader worker (pid(s) N) exited unexpectedly", or "... is killed by
    one_error(code, err, "shared memory", "num_workers", "--shm-size")  # signal: Bus error" (the SIGCHLD check)
    assert "bus error" in capfd.readouterr().err  # the worker's own note on its stderr, which the line points to
    for text in ("unable to write to file </torch_1234_5678_0>: No space left on device (28)",
                 "DataLoader worker (pid 4321) is killed by signal: Bus error. It is possible that dataloader's "
                 "workers are out of shared memory. Please try to raise your shared memory limit."):
        def run(_args, text=text):
            raise RuntimeError(text)

        code, err = call_main(run)
        one_error(code, err, "out of shared memory", "num_workers", "--shm-size")


# --- a file where a folder belongs, a folder not writable --------------------------------------------------

@pytest.fixture
def blocked(tmp_path) -> dict:
    root = write_tiny_competition(tmp_path / "data")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    return {"root": root, "file": blocker, "ov": [*COMMON, f"data.root={root}", f"out_dir={tmp_path / 'runs'}"]}


@pytest.mark.parametrize("under", [False, True], ids=["the file", "a folder under the file"])
def test_every_folder_the_user_names_may_be_a_file(blocked, tmp_path, under):
    data = blocked
    bad = data["file"] / "sub" if under else data["file"]
    ov, shown = data["ov"], str(data["file"])
    cases = [
        ("train_fold.py", "--fold", "0", *ov, f"out_dir={bad}"),
        ("prepare.py", *ov, f"out_dir={bad}"),
        ("prepare.py", *ov, "images.cache=true", f"images.cache_dir={bad}"),
        ("prepare.py", *ov, f"data.root={bad}"),
        ("predict.py", *ov, "--save-probs", str(bad / "p.npy")),
        ("package.py", *ov, "-o", str(bad)),
        ("submit.py", str(data["root"] / "sample_submission.csv"), *ov, "-m", "x", "data.competition=c",
         f"predict.submissions_dir={bad}"),
    ]
    for script, *argv in cases:
        code, _, err = run_main(script, *argv)
        line = one_error(code, err, shown, "is a file, not a folder")
        assert line, (script, argv)
    assert data["file"].read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to any folder")
def test_a_read_only_folder_is_named(blocked, tmp_path):
    data = blocked
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, _, err = run_main("prepare.py", *data["ov"], f"out_dir={ro / 'runs'}")
        one_error(code, err, str(ro), "not writable")
    finally:
        ro.chmod(0o755)


def test_an_os_error_on_a_path_is_one_line_naming_it():
    def run(_args):
        raise FileExistsError(17, "File exists", "/runs/x")

    code, err = call_main(run)
    one_error(code, err, "a file is in the way", "/runs/x")


# --- the kit's own bugs stay visible -----------------------------------------------------------------------

def test_an_internal_error_names_its_frame_and_a_traceback_file(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def inner():
        raise ValueError("a bug of the kit")

    code, err = call_main(lambda _a: inner())
    assert code == 1
    m = re.fullmatch(r"internal error: ValueError: a bug of the kit at (\S+):(\d+) in inner "
                     r"\(traceback in (\S+)\)\n", err)
    assert m, err
    assert m.group(1) == __file__
    saved = Path(m.group(3))
    assert saved.parent == tmp_path and "Traceback" in saved.read_text() and "inner" in saved.read_text()
    code, err = call_main(lambda _a: inner(), "--debug")
    assert code == 1 and "Traceback (most recent call last)" in err and err.splitlines()[-1].startswith(
        "internal error:")

    def in_a_worker(_args):  # a bug in a DataLoader worker: its own frame, not torch's re-raise
        for _ in torch.utils.data.DataLoader(Raising(ValueError("a bug in a worker")), num_workers=1):
            pass

    code, err = call_main(in_a_worker)
    assert code == 1 and f"at {__file__}:" in err and "in __getitem__ (in a DataLoader worker)" in err, err


# --- progress bars (comp.log) ------------------------------------------------------------------------------

def test_bars_only_on_a_terminal_and_never_when_quiet(monkeypatch):
    class Tty:
        def isatty(self):
            return True

        def write(self, s):
            return len(s)

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stderr", Tty())
    assert not progress(3, "x").disable
    set_quiet(True)
    try:
        assert progress(3, "x").disable
    finally:
        set_quiet(False)
    monkeypatch.setattr(sys, "stderr", open(os.devnull, "w"))  # a file: no bars
    assert progress(3, "x").disable
