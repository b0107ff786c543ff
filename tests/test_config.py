"""comp.config and the one loader (comp.experiment.load_config): defaults < YAML < KEY=VALUE; whatever the
command line or a YAML file holds, a config or one UserError naming the key (property-based with
hypothesis); and through the scripts, every bad key, type, value or path ends in one `error:` line, exit
code 2, with the experiment already on disk left byte for byte as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import assert_kept, copy_of, one_error, run_main, snapshot, trained_fixture
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from comp.config import Config, to_yaml
from comp.errors import UserError
from comp.experiment import load_config


def test_precedence_defaults_yaml_cli(tmp_path: Path):
    y = tmp_path / "c.yaml"
    y.write_text("epochs: 7\nbatch_size: 16\nmodel:\n  name: resnet34\n")
    cfg = load_config(y, ["batch_size=4", "optim.lr=0.01"])
    assert cfg.epochs == 7  # YAML over the default
    assert cfg.batch_size == 4  # command line over YAML
    assert cfg.model.name == "resnet34"
    assert cfg.optim.lr == 0.01
    assert cfg.seed == Config().seed  # untouched default
    assert "epochs: 7" in to_yaml(cfg)


def test_demo_is_default():
    cfg = load_config()
    assert cfg.data.source == "demo" and cfg.data.root == "data/demo"


def test_pretrained_false_means_no_weights(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  pretrained: false\n")
    assert load_config(path).model.pretrained is None
    assert load_config(None, ["model.pretrained=false"]).model.pretrained is None
    assert load_config(None, ["model.pretrained=tv_in1k"]).model.pretrained == "tv_in1k"


# --- one bad override or file: a UserError naming the key ------------------------------------------------

@pytest.mark.parametrize("overrides, needle", [
    (["model.nme=resnet18"], "unknown config key 'model.nme'"),
    (["epochs=three"], "'epochs'"),
    (["epochs=0"], "'epochs'"),
    (["image_size=0"], "'image_size'"),
    (["folds.n_folds=1"], "'folds.n_folds'"),
    (["optim.name=adam_w"], "'optim.name'"),
    (["epochs"], "KEY=VALUE"),
    (["data.code_competition=true", "data.inference_server=rsna server"], "must be module.Class"),
    (["data.inference_server=kaggle_evaluation.x.XInferenceServer"], "set data.code_competition=true too"),
    (["mil.source=series", "data.extra=[{path: ext}]"], "'data.extra': [{'path': 'ext'}] must be empty with mil"),
    (["mil.source=series", "data.duplicates=dups.csv"], "'data.duplicates': 'dups.csv' must be empty with mil"),
])
def test_bad_overrides(overrides, needle):
    with pytest.raises(UserError, match=None) as e:
        load_config(None, overrides)
    assert needle in str(e.value)


@pytest.mark.parametrize("override, suggestion", [("image_szie=3", "image_size"), ("optim.learning_rate=1", "optim.lr"),
                                                  ("train.ema_dcay=0.9", "train.ema_decay"), ("zzz=1", None)])
def test_an_unknown_key_suggests_the_one_meant(override, suggestion):
    with pytest.raises(UserError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert msg.startswith(f"unknown config key '{override.split('=')[0]}'")
    assert (f"did you mean '{suggestion}'?" in msg) if suggestion else "did you mean" not in msg


# file text (None: no file) -> what the one-line error holds besides the file's path
BAD_FILES = {
    "unknown key": ("optim:\n  learning_rate: 0.1\n", ["optim.learning_rate"]),
    "missing": (None, ["config file not found"]),
    "not YAML": ("epochs: [1\n", ["not valid YAML"]),
    "a scalar": ("42\n", []),
    "a YAML error's line and column": ("epochs: 3\ndata:\n  root: [data/x\n  layout: csv\n", ["at line 4, column"]),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_config_file_is_named(tmp_path, case):
    text, needles = BAD_FILES[case]
    path = tmp_path / "my.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UserError) as e:
        load_config(path)
    msg = str(e.value)
    for needle in [*needles, str(path)]:
        assert needle in msg, (needle, msg)
    assert "\n" not in msg


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

@pytest.mark.parametrize("args, needle", [
    (["--fold", "0", "model.nme=x"], "model.nme"),
    (["--fold", "0", "epochs=abc"], "epochs"),
    (["--config", "configs/does_not_exist.yaml", "--fold", "0"], "does_not_exist.yaml"),
])
def test_scripts_report_config_errors(args, needle):
    code, out, err = run_main("train_fold.py", *args)
    one_error(code, err, needle)
    assert out == ""


def test_debug_shows_traceback():
    code, _, err = run_main("train_fold.py", "--debug", "--fold", "0", "model.nme=x")
    assert code == 2 and "Traceback" in err


def test_fold_outside_range(tiny):
    code, _, err = run_main("train_fold.py", "--fold", "5", *tiny["overrides"])
    one_error(code, err, "--fold 5")
    assert not (tiny["out"] / "fold5").exists()


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
