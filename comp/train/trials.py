"""The bookkeeping of a tuning study (comp.train.tune) across runs and processes: who may queue, which
trials are dead, which are run again.

What the next `tune` run does with a trial that did not finish (`reconcile`, under the tune folder's lock
`.study.lock`, so two processes starting together enqueue the starting config once and each retry once):
- a trial interrupted by SIGTERM/SIGINT (its checkpoint written), or killed (SIGKILL, the OOM killer, a
  preempted machine) is resumed in its own folder from its checkpoints, keeping its attributes (trial 0
  stays "the starting config"). A killed trial is noticed by its folder's lock: the process running a trial
  holds `trial<N>/.trial.lock` (fcntl.flock) while it trains, and the kernel frees it when that process
  dies however it dies, so a RUNNING trial whose lock is free is dead (optuna#485, #2908, #3895); it is
  marked failed and resumed at once, with no heartbeat grace period to wait out. A resumed trial that is
  interrupted again is resumed again, up to MAX_ATTEMPTS runs in all.
- a trial that failed by an error is retried once (a retry that fails too is not), and the retry is
  recorded: the original has a later trial in its folder, so no later run queues it again (optuna#3616).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from comp.errors import UserError
from comp.log import log

try:
    import fcntl
except ImportError:  # Windows: no flock; killed trials are not noticed there and enqueueing is not locked
    fcntl = None  # type: ignore[assignment]

MAX_ATTEMPTS = 5  # runs of one trial's folder in all: a trial killed at the same place each time (the OOM
# killer at one batch size) stops being resumed
STUDY_LOCK = ".study.lock"  # in <out_dir>/tune: held while a run creates, checks and queues the study
TRIAL_LOCK = ".trial.lock"  # in a trial's folder: held by the process training it, "<host> <pid>" inside
LOCK_WAIT_S = 60.0  # a trial folder whose lock stays held this long belongs to a live process


@contextlib.contextmanager
def locked(path: Path, wait_s: float | None = None) -> Iterator[Any]:
    """The open lock file `path` (created), held with an exclusive fcntl.flock for the block; freed by the
    kernel when this process ends, however it ends. Waits `wait_s` seconds for it (None: as long as it takes).

    Raises:
        UserError: the lock is still held after `wait_s` seconds (another process works in that folder).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        if fcntl is None:
            yield f
            return
        deadline = None if wait_s is None else time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (fcntl.LOCK_NB if deadline is not None else 0))
                break
            except BlockingIOError:
                if time.monotonic() > deadline:  # type: ignore[operator]
                    f.seek(0)
                    raise UserError(f"{path.parent} is in use by another process ({f.read().strip() or '?'} holds "
                                    f"{path.name}); wait for it, or stop it") from None
                time.sleep(0.2)
        try:
            yield f
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def claim(lock: Any) -> None:
    """Write "<host> <pid>" of this process into the held lock file `lock` (`is_dead` reads it)."""
    lock.seek(0)
    lock.truncate()
    lock.write(f"{socket.gethostname()} {os.getpid()}\n")
    lock.flush()


def _alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (a zombie not yet reaped counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def is_dead(trial: Any) -> bool:
    """Whether the process that runs the RUNNING `trial` is gone: the trial holds its folder's lock (it wrote
    its own number as `lock_owner` once it did) and that lock is free now, or held only by orphans of a dead
    process on this machine (DataLoader workers forked before the kill inherit the lock until they notice).
    False when that cannot be told: a trial that has not taken its lock yet, one run by an older kit, or a
    folder this machine does not see (a trial of another machine)."""
    if fcntl is None or trial.user_attrs.get("lock_owner") != trial.number or not trial.user_attrs.get("dir"):
        return False
    path = Path(trial.user_attrs["dir"]) / TRIAL_LOCK
    if not path.is_file():
        return False
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            host, _, pid = f.read().strip().partition(" ")
            return host == socket.gethostname() and pid.isdigit() and not _alive(int(pid))
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


def check_study(study: Any, metric: str, direction: str, name: str, storage: str) -> None:
    """Refuse to join a study that optimises another way or another metric (one created by an older kit, which
    maximised every metric, or for another config); record the metric of a new one.

    Raises:
        UserError: the study's direction or metric is not this config's, naming both and the study.
    """
    have = study.direction.name.lower()
    if have != direction:
        raise UserError(f"Optuna study {name!r} ({storage}) was created to {have}, but metric {metric} is "
                        f"{'higher' if direction == 'maximize' else 'lower'} is better; use another --study-name "
                        f"(or delete the study)")
    recorded = study.user_attrs.get("metric")
    if recorded is not None and recorded != metric:
        raise UserError(f"Optuna study {name!r} ({storage}) scores trials by {recorded}, this config by {metric}; "
                        f"use another --study-name")
    if recorded is None:
        study.set_user_attr("metric", metric)


def reconcile(study: Any, start: dict[str, Any]) -> None:
    """What a run queues before its own trials (module doc), with the study lock held: the starting config on a
    new study; a dead RUNNING trial marked failed (the study's `killed_trials`); each failed trial without a
    later trial in its folder queued again with its params and attributes, resumed from its checkpoints:
    always after an interruption (SIGTERM, a kill) up to MAX_ATTEMPTS, once after an error. The retry records
    `retry_of` (the trial it continues), `attempt` and `errors` (error failures so far in its folder)."""
    import optuna

    state = optuna.trial.TrialState
    if not study.get_trials(deepcopy=False):
        study.enqueue_trial(start, user_attrs={"starting_config": True})
    for t in study.get_trials(deepcopy=False, states=(state.RUNNING,)):
        if is_dead(t):
            log(f"trial {t.number} is RUNNING in the study but its process is gone (killed); it resumes from its "
                f"checkpoints in {t.user_attrs['dir']}")
            study.set_user_attr("killed_trials", [*study.user_attrs.get("killed_trials", []), t.number])
            study.tell(t.number, state=state.FAIL)
    trials = study.get_trials(deepcopy=False)
    killed = set(study.user_attrs.get("killed_trials", []))
    for t in trials:
        folder = t.user_attrs.get("dir")
        if t.state != state.FAIL or not folder or any(u.number > t.number and u.user_attrs.get("dir") == folder
                                                      for u in trials):
            continue  # not failed, failed before training anything, or already retried
        interrupted = t.number in killed or bool(t.user_attrs.get("interrupted"))
        errors = int(t.user_attrs.get("errors", 0)) + (0 if interrupted else 1)
        attempt = int(t.user_attrs.get("attempt", 1)) + 1
        if errors > 1 or attempt > MAX_ATTEMPTS:
            log(f"trial {t.number} ({folder}) is not retried: "
                + ("it failed again after a retry" if errors > 1 else f"{MAX_ATTEMPTS} runs were interrupted"))
            continue
        attrs = {k: v for k, v in t.user_attrs.items() if k not in ("lock_owner", "interrupted", "retried")}
        study.enqueue_trial(t.params, user_attrs={**attrs, "retry_of": t.number, "attempt": attempt, "errors": errors})
