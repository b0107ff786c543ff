"""Process-level correctness (issue 13, items 7-11 and 15): a stop signal to the whole process group ends in
a recovery checkpoint; a UserError raised in a DataLoader worker keeps its one line; one bad test image
cannot lose a submission (predict.on_bad_image); a resume on another machine shape; DataLoader workers out
of shared memory; flags and overrides in any order; and the kit's own bugs kept visible (a traceback file,
not dressed as the user's fault). A file where a folder belongs (item 12): tests/test_faults_config.py."""

from __future__ import annotations

import io
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import COMMON, ROOT, copy_of, one_error, run_main, trained_fixture, write_tiny_competition

import comp.cli as cli
from comp.config import to_yaml
from comp.data.image_base import ImageError
from comp.data.loader import (
    MAX_PREFETCH,
    batches_in_flight_bytes,
    ignore_stop_signals,
    make_loader,
    prefetch_factor_for,
    shm_budget,
)
from comp.errors import UserError, worker_user_error
from comp.experiment import checkpoint as ckpt_io
from comp.experiment import load_config


def call_main(run, *argv: str) -> tuple[int, str]:
    """comp.cli.main(run) with `argv`: (exit code, stderr)."""
    err = io.StringIO()
    with redirect_stderr(err), pytest.raises(SystemExit) as e:
        cli.main(run, cli.parser("test"), list(argv))
    return e.value.code, err.getvalue()


# --- 7. a stop signal to the whole process group -------------------------------------------------------



@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stop_signal_to_the_process_group_ends_in_a_recovery_checkpoint(tmp_path, sig):
    root = write_tiny_competition(tmp_path / "data", n_per_class=30, size=16)
    out = tmp_path / "runs"
    argv = [*COMMON, f"data.root={root}", f"out_dir={out}", "batch_size=2", "folds.n_folds=10", "num_workers=2",
            "train.log_every=1000", "train.recovery_every=5"]  # 40 steps an epoch; a first recovery.pt at step 5
    log = tmp_path / "stderr.log"
    with open(log, "w") as f:  # its own session: the group is the script and its loader workers
        p = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "train_fold.py"), "--fold", "0", *argv],
                             stdout=subprocess.DEVNULL, stderr=f, cwd=str(ROOT), start_new_session=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 120
        recovery = out / "fold0" / "recovery.pt"
        while p.poll() is None and time.monotonic() < deadline:  # mid-epoch (step 5 of 40), workers running
            if recovery.exists():
                break
            time.sleep(0.01)
        assert p.poll() is None, log.read_text()[-2000:]
        os.killpg(p.pid, sig)  # as a terminal's Ctrl-C or a scheduler's preemption does
        code = p.wait(60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    err = log.read_text(errors="replace")
    assert code == 128 + sig, (code, err[-2000:])
    assert "internal error" not in err and "killed by signal" not in err, err[-2000:]
    assert (out / "fold0" / "recovery.pt").is_file()
    assert f"stopped by {signal.Signals(sig).name}; checkpoint {out / 'fold0' / 'recovery.pt'}" in err
    assert re.search(r"resume with: python scripts/train_fold.py .*--fold 0 --resume", err), err[-2000:]


def test_loader_workers_ignore_stop_signals():
    loader = make_loader(torch.utils.data.TensorDataset(torch.zeros(4, 1)), 2, None, num_workers=1)
    assert loader.worker_init_fn is ignore_stop_signals
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        ignore_stop_signals(0)
        assert all(signal.getsignal(s) is signal.SIG_IGN for s in old)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    assert make_loader(torch.utils.data.TensorDataset(torch.zeros(4, 1)), 2, None, 0).worker_init_fn is None


# --- 8. a UserError raised in a DataLoader worker ----------------------------------------------------------

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


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    return trained_fixture(tmp_path_factory, "correct_process")


def test_a_bad_test_image_fails_by_name_or_gets_the_class_prior(trained, tmp_path):
    ex = copy_of(trained, tmp_path / "ex", "images.cache=false")
    bad = ex["root"] / "test" / "test_004.png"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # truncated

    code, _, err = run_main("predict.py", *ex["overrides"], "num_workers=1")  # read in a worker process
    one_error(code, err, "truncated", str(bad))

    probs = tmp_path / "probs.npy"
    code, out, err = run_main("predict.py", *ex["overrides"], "predict.on_bad_image=prior", "--save-probs",
                              str(probs))
    assert code == 0, err
    assert len(out.strip().splitlines()) == 1 + 9  # header and every test image
    assert f"test image {bad} cannot be read" in err
    p = np.load(probs)
    np.testing.assert_allclose(p[4], [1 / 3] * 3, rtol=1e-6)  # 10 training images per class: uniform prior
    assert not np.allclose(p[[0, 1, 2, 3, 5, 6, 7, 8]], 1 / 3, atol=1e-3)  # the others are the models'


def test_the_offline_package_gives_a_bad_image_the_prior_by_default(tmp_path, monkeypatch):
    import comp.predict.submission as submission
    from comp.submit.package import infer_main

    (tmp_path / "config.yaml").write_text(to_yaml(load_config(None, COMMON)))
    seen = []

    def make_submission(exp, *_a, **_kw):
        seen.append(exp.cfg.predict.on_bad_image)
        raise UserError("stop here")

    monkeypatch.setattr(submission, "make_submission", make_submission)
    for argv, want in (([], "prior"), (["predict.on_bad_image=fail"], "fail")):
        with redirect_stderr(io.StringIO()), pytest.raises(SystemExit):
            infer_main(tmp_path, ["--data", str(tmp_path), *argv])
        assert seen[-1] == want


# --- 9. resuming on another machine shape --------------------------------------------------------------

@pytest.mark.parametrize("saved", [0, 2, 5, 8])  # 0: saved on a CPU
def test_cuda_rng_states_restore_for_the_gpus_both_machines_have(monkeypatch, saved):
    state = ckpt_io.rng_state()
    state["cuda"] = [torch.full((16,), k, dtype=torch.uint8) for k in range(saved)]
    for here in (0, 1, 2, 8):
        calls = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda h=here: h > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda h=here: h)
        monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, d, c=calls: c.append((int(s[0]), d)))
        missed = ckpt_io.set_rng_state(state)
        assert calls == [(k, k) for k in range(min(saved, here))]
        assert bool(missed) == (saved != here)


def test_a_checkpoint_of_two_processes_resumes_in_one_at_an_epoch_boundary(trained, tmp_path):
    ex = copy_of(trained, tmp_path / "ex")
    last = ex["fold"] / "last.pt"
    ck = ckpt_io.load(last)
    other = ckpt_io.rng_state()
    other["torch"] = torch.Generator().manual_seed(7).get_state()
    ck.update(rng=[ck["rng"][0], other], world_size=2)
    ckpt_io.save(ck, last)
    code, _, err = run_main("train_fold.py", "--fold", "0", "--resume", *ex["overrides"], "epochs=2")
    assert code == 0, err[-2000:]
    assert "not restored" in err and "2 processes, now 1" in err
    assert ckpt_io.load(last)["epoch"] == 2


# --- 10. out of shared memory ---------------------------------------------------------------------------

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


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_the_shipped_configs_fit_the_shared_memory_budget(name):
    cfg = load_config(ROOT / "configs" / name)
    budget = shm_budget(64 * 2**30)  # a machine with 64 GiB of /dev/shm: the 1 GiB cap
    k = prefetch_factor_for(cfg.batch_size, cfg.image_size, cfg.num_workers, budget)
    assert k is not None and 1 <= k <= MAX_PREFETCH
    assert batches_in_flight_bytes(cfg.batch_size, cfg.image_size, cfg.num_workers, k) <= budget


def test_prefetch_shrinks_to_the_shared_memory_there_is():
    assert shm_budget(64 * 2**20) == 16 * 2**20  # Docker's default 64 MiB: a quarter per loader
    assert prefetch_factor_for(32, 512, 12, 2**30) == 3  # dr2015: 4 would be 1.2 GB
    assert prefetch_factor_for(32, 512, 8, 2**30) == 4
    assert prefetch_factor_for(32, 512, 8, 16 * 2**20) == 1  # never below one batch per worker
    assert prefetch_factor_for(32, 512, 0, 2**30) is None


# --- 11. flags and overrides in any order ---------------------------------------------------------------

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


def test_the_packaged_infer_takes_overrides_before_and_after_a_flag(monkeypatch):
    from comp.submit.package import infer_main

    real, seen = cli.main, []
    monkeypatch.setattr(cli, "main", lambda run, p, argv=None: real(seen.append, p, argv))
    with pytest.raises(SystemExit):
        infer_main(Path("."), ["batch_size=4", "--data", "d", "seed=1"])
    assert seen[0].overrides == ["batch_size=4", "seed=1"] and seen[0].data == "d"


# --- 15. the kit's own bugs stay visible ---------------------------------------------------------------

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


def test_only_a_failed_download_of_pretrained_weights_is_the_users(monkeypatch):
    import comp.models.factory as factory

    for exc, user in ((ConnectionError("no route to host"), True), (RuntimeError("a bug in timm"), False),
                      (TypeError("unexpected keyword"), False)):
        def create_model(*_a, exc=exc, **_k):
            raise exc

        monkeypatch.setattr(factory.timm, "create_model", create_model)
        with pytest.raises(UserError if user else type(exc)) as e:
            factory.create_model("timm/test_resnet", 3, pretrained="r160_in1k")
        assert ("could not be downloaded" in str(e.value)) == user


def test_only_a_failed_decode_is_a_corrupt_image(tmp_path, monkeypatch):
    import comp.data.cache as cache

    root = write_tiny_competition(tmp_path / "data", n_per_class=1, n_test=1)
    img = str(root / "train" / "img_0_000.png")
    assert cache._work((img, None, 16, [], "png", None)) is None

    def step_bug(*_a, **_k):
        raise ValueError("a preprocessing step's bug")

    monkeypatch.setattr(cache, "load_preprocessed", step_bug)
    with pytest.raises(ValueError, match="step's bug"):
        cache._work((img, None, 16, [], "png", None))
    monkeypatch.undo()
    (tmp_path / "cut.png").write_bytes(Path(img).read_bytes()[:40])
    problem = cache._work((str(tmp_path / "cut.png"), None, 16, [], "png", None))
    assert problem is not None and problem.kind == "truncated"


def test_a_run_ending_with_live_loader_workers_exits(tmp_path):
    # The workers ignore SIGTERM (a stop signal to the group is the main process's to act on), and
    # multiprocessing stops daemonic children at exit with SIGTERM, then joins them: an iterator kept alive
    # by an exception (a closed stderr, an error mid-epoch) used to leave the process waiting forever.
    script = tmp_path / "live_workers.py"
    script.write_text(
        "import sys, torch\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from comp.data.loader import make_loader\n"
        "it = iter(make_loader(torch.utils.data.TensorDataset(torch.zeros(64, 3)), 2, None, num_workers=2))\n"
        "next(it)\n"
        "raise SystemExit(3)  # `it` is still referenced: its workers are alive at exit\n")
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 3 and "Traceback" not in res.stderr, res.stderr[-2000:]
