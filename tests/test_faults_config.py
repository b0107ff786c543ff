"""Config faults: whatever the command line or YAML holds, the kit answers with a config or one
UserError naming the key — never another exception (property-based with hypothesis); and through the
scripts themselves, every bad key, type, value or path ends in one `error:` line, exit code 2, with the
experiment already on disk left byte for byte as it was.

The helpers at the top are shared by the other fault suites (tests/test_faults_*.py): the scripts run
in-process through their own parser and `comp.cli.main` (no interpreter start per fault), a tiny fold
is trained once per test run, and a folder's files are compared byte for byte before and after a fault.
"""

from __future__ import annotations

import io
import os
from contextlib import redirect_stderr
from pathlib import Path

import pytest
import torch
from helpers import (
    COMMON,
    assert_kept,
    copy_of,
    one_error,
    run_main,
    snapshot,
    trained_fixture,
    write_tiny_competition,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from comp.config import Config
from comp.errors import UserError
from comp.experiment import load_config

# --- hypothesis: nothing a config can hold crashes the loader --------------------------------------------


def _keys(node, prefix=""):
    for k, v in node.items():
        if OmegaConf.is_dict(v):
            yield from _keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


KEYS = sorted(_keys(OmegaConf.structured(Config)))
values = st.one_of(
    st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["true", "false", "null", "[]", "[a, b]", "{}", "{name: Affine}", "''", "resnet18", "1e-3"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(alphabet="abcdefghij._", min_size=1, max_size=15))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(keys, values), max_size=4))
@example([("batch_size", "\n")])  # a value holding a newline, echoed in the error: it once broke the one line
@example([("data.root", "a\rb\x1b[31m")])
def test_overrides_never_crash(pairs):
    overrides = [f"{k}={v}" for k, v in pairs]
    try:
        cfg = load_config(None, overrides)
    except UserError as e:
        msg = str(e)
        assert "\n" not in msg.strip() and msg  # one line
        return
    assert cfg.epochs >= 1 and cfg.image_size >= 8  # what passed is usable


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=200))
def test_yaml_files_never_crash(tmp_path_factory, text):
    path = Path(tmp_path_factory.mktemp("cfg")) / "c.yaml"
    path.write_text(text)
    try:
        load_config(path)
    except UserError as e:
        assert str(e)


# --- through the scripts: one error line, exit 2, the trained experiment untouched ----------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    return trained_fixture(tmp_path_factory, "config_faults")


def _yaml(tmp: Path, text: str) -> str:
    path = tmp / "my.yaml"
    path.write_text(text)
    return str(path)


def _under_file(tmp: Path) -> Path:
    (tmp / "a_file").write_text("not a folder")
    return tmp / "a_file" / "sub"


# name -> (script, argv from (experiment overrides, tmp folder), what the error line names)
RESUME = ("train_fold.py", "--fold", "0", "--resume")
CONFIG_FAULTS = {
    "unknown key (override)": (*RESUME, lambda ov, t: [*ov, "optim.learning_rate=0.1"],
                               ["unknown config key 'optim.learning_rate'"]),
    "unknown key (YAML)": (*RESUME, lambda ov, t: ["--config", _yaml(t, "trian:\n  ema: true\n"), *ov],
                           ["unknown config key 'trian'", "my.yaml"]),
    "wrong type (override)": (*RESUME, lambda ov, t: [*ov, "epochs=three"], ["'epochs'", "three"]),
    "wrong type (YAML)": (*RESUME, lambda ov, t: ["--config", _yaml(t, "batch_size: [8]\n"), *ov],
                          ["'batch_size'", "my.yaml"]),
    "value where a section goes": (*RESUME, lambda ov, t: [*ov, "model=resnet18"], ["override 'model=resnet18'"]),
    "value where a list goes": (*RESUME, lambda ov, t: [*ov, "aug.tta=hflip"], ["'aug.tta'"]),
    "not a bool": (*RESUME, lambda ov, t: [*ov, "train.amp=maybe"], ["'train.amp'", "'maybe'"]),
    "not KEY=VALUE": (*RESUME, lambda ov, t: [*ov, "epochs"], ["'epochs' is not of the form KEY=VALUE"]),
    "negative epochs": (*RESUME, lambda ov, t: [*ov, "epochs=-1"], ["'epochs': -1 must be >= 1"]),
    "image size 0": (*RESUME, lambda ov, t: [*ov, "image_size=0"], ["'image_size': 0 must be >= 8"]),
    "negative learning rate": (*RESUME, lambda ov, t: [*ov, "optim.lr=-0.1"], ["'optim.lr'"]),
    "batch larger than the fold": (*RESUME, lambda ov, t: [*ov, "batch_size=64"],
                                   ["batch_size=64", "lower batch_size"]),
    "fold outside the folds": ("train_fold.py", "--fold", "7", lambda ov, t: ov, ["--fold 7 is outside 0..1"]),
    "unknown metric": (*RESUME, lambda ov, t: [*ov, "metric=top5"], ["'metric': 'top5'"]),
    "unknown transform": (*RESUME, lambda ov, t: [*ov, "aug.train=[{name: Nope}]"],
                          ["aug.train[0]: 'Nope' is not an albumentations transform"]),
    "unknown TTA view": ("predict.py", lambda ov, t: [*ov, "aug.tta=[identity,spin]"], ["aug.tta", "'spin'"]),
    "unknown model": ("train_fold.py", "--fold", "1", lambda ov, t: [*ov, "model.name=resnet19"],
                      ["unknown model 'resnet19'"]),
    "config file that does not exist": (*RESUME, lambda ov, t: ["--config", str(t / "nope.yaml"), *ov],
                                        ["config file not found", "nope.yaml"]),
    "config file not YAML": (*RESUME, lambda ov, t: ["--config", _yaml(t, "epochs: [1\n"), *ov], ["not valid YAML"]),
    "data.root that does not exist": ("predict.py", lambda ov, t: [*ov, f"data.root={t / 'nowhere'}"],
                                      ["data.root does not exist", "nowhere"]),
    "train CSV that does not exist": (*RESUME, lambda ov, t: [*ov, "data.train_csv=labels.csv"],
                                      ["CSV file not found", "labels.csv"]),
    "image folder that does not exist": (*RESUME, lambda ov, t: [*ov, "data.train_images=[train_images]"],
                                         ["image folder not found", "train_images", "data.train_images"]),
    "pretrained file that does not exist": ("train_fold.py", "--fold", "1",
                                            lambda ov, t: [*ov, f"model.pretrained={t / 'w.pth'}"],
                                            ["pretrained weights file not found", "w.pth"]),
    "cache folder under a file": ("prepare.py", lambda ov, t: [*ov, f"images.cache_dir={_under_file(t)}"],
                                  ["images.cache_dir", "a_file is a file, not a folder"]),
    "out_dir under a file": ("prepare.py", lambda ov, t: [*ov, f"out_dir={_under_file(t)}"],
                             ["out_dir", "a_file is a file, not a folder"]),
    "more folds than images in a class": ("prepare.py", lambda ov, t: [*ov, f"out_dir={t / 'new'}",
                                                                      "folds.n_folds=11"],
                                          ["folds.n_folds=11 but the rarest class has only 10 image(s)"]),
    "a CUDA device without one": (*RESUME, lambda ov, t: [*ov, "device=cuda:0"], ["'device'", "no CUDA device"]),
}


@pytest.mark.parametrize("name", list(CONFIG_FAULTS))
def test_config_fault_is_one_error_line_and_nothing_is_touched(name, trained, tmp_path):
    if name == "a CUDA device without one" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    *head, argv, needles = CONFIG_FAULTS[name]
    ex = copy_of(trained, tmp_path / "ex")
    before = snapshot(ex["base"])
    code, out, err = run_main(*head, *argv(ex["overrides"], tmp_path))
    one_error(code, err, *needles)
    assert out == ""
    assert_kept(before, ex["base"])
    assert not (tmp_path / "new" / "folds.csv").exists()


# --- a file where a folder belongs, a folder not writable (issue 13, item 12) ---------------------------

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
    import comp.cli as cli

    def run(_args):
        raise FileExistsError(17, "File exists", "/runs/x")

    err = io.StringIO()
    with redirect_stderr(err), pytest.raises(SystemExit) as e:
        cli.main(run, cli.parser("test"), [])
    one_error(e.value.code, err.getvalue(), "a file is in the way", "/runs/x")
