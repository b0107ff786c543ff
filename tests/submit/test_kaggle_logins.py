"""Every way of logging in to Kaggle that docs/new-competition.md lists (an API token in KAGGLE_API_TOKEN, in
a file it names or in ~/.kaggle/access_token; kaggle.json in ~/.kaggle, $KAGGLE_CONFIG_DIR or
~/.config/kaggle; KAGGLE_USERNAME/KAGGLE_KEY; `kaggle auth login`), through every command of the kit that
talks to Kaggle: prepare.py --download, submit.py FILE, package.py and submit.py --notebook. The real
`kaggle` CLI (kaggle 2.x) logs in as it does for a user, against the fake of Kaggle's API
(tests/fake_kaggle.py), which refuses any call without a key or token it issued. A token names no user:
the dataset and notebook owner comes from the CLI (comp.kaggle_cli.username)."""

from __future__ import annotations

import json

import kaggle_env
import pandas as pd
import pytest
from fake_kaggle import USER, Competition
from helpers import make_experiment, run_main
from kaggle_env import CLI, LOGINS

pytestmark = pytest.mark.skipif(not CLI.is_file(), reason="the kaggle CLI is not installed beside the interpreter")
fake, clock = kaggle_env.fake, kaggle_env.clock  # the fixtures: the fake of Kaggle's API, the polls' clock
COMMANDS = ("download", "submit", "package", "notebook")


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """An experiment (folds with random weights), shared: the notebook flow rewrites its package and kernel
    folders, every other command writes under its test's tmp_path."""
    return make_experiment(tmp_path_factory.mktemp("logins"), "data.competition=tiny-login")


def _files(folder) -> dict[str, bytes]:
    return {f.relative_to(folder).as_posix(): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("login", LOGINS)
def test_each_command_works_with_each_login(login, command, fake, clock, experiment, tmp_path, monkeypatch):
    env = kaggle_env.use_real_cli(fake, tmp_path / "home", monkeypatch, login=login)
    assert "KAGGLE_USERNAME" not in env or login == "key-env"  # only the key pair in the environment names one
    fake.competitions["tiny-login"] = Competition(code=command == "notebook", polls=0,  # scored at once
                                                  files=_files(experiment["root"]) if command == "download" else {})
    monkeypatch.setattr(fake, "kernel_polls", 0)  # the notebook's run: COMPLETE at the first look
    out = tmp_path / "out"
    common = [*experiment["overrides"], f"predict.submissions_dir={tmp_path / 'subs'}"]
    if command == "download":
        root = tmp_path / "data" / "tiny"
        code, _, err = run_main("prepare.py", "--download", *common, f"data.root={root}", f"out_dir={out}")
        assert code == 0, err
        assert (root / "train.csv").read_bytes() == (experiment["root"] / "train.csv").read_bytes()
    elif command == "submit":
        sub = tmp_path / "sub.csv"
        ids = pd.read_csv(experiment["root"] / "sample_submission.csv", dtype=str)["id"]
        pd.DataFrame({"id": ids, "label": 0}).to_csv(sub, index=False)
        code, _, err = run_main("submit.py", str(sub), "-m", login, "--poll", "1", *common)
        assert code == 0, err
        assert fake.submissions[-1]["content"] == sub.read_bytes()
    elif command == "package":
        code, _, err = run_main("package.py", *common, "-o", str(out))
        assert code == 0, err
        assert json.loads((out / "dataset-metadata.json").read_text())["id"] == f"{USER}/tiny-login-runs-models"
    else:
        code, _, err = run_main("submit.py", "--notebook", "-m", login, "--poll", "1", *common,
                                "data.code_competition=true")  # its package and kernel folder: in the experiment
        assert code == 0, err
        assert list(fake.datasets) == [f"{USER}/tiny-login-runs-models"]
        assert fake.calls("CreateCodeSubmission")[0]["kernelSlug"] == "tiny-login-runs-infer"
    if command in ("submit", "notebook"):
        row = pd.read_csv(tmp_path / "subs" / "index.csv", dtype=str, keep_default_na=False).iloc[-1]
        assert (row["status"], row["message"]) == ("COMPLETE", login)
    if command != "package":  # which asks the CLI who is logged in: no call for a key or a fresh login
        assert fake.requests, "nothing reached the fake"
