"""Config: defaults < YAML < KEY=VALUE, and one-line errors naming the key."""

from pathlib import Path

import pytest
from helpers import assert_user_error, run_script

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


@pytest.mark.parametrize("overrides, needle", [
    (["model.nme=resnet18"], "unknown config key 'model.nme'"),
    (["epochs=three"], "'epochs'"),
    (["epochs=0"], "'epochs'"),
    (["image_size=0"], "'image_size'"),
    (["folds.n_folds=1"], "'folds.n_folds'"),
    (["optim.name=adam_w"], "'optim.name'"),
    (["epochs"], "KEY=VALUE"),
])
def test_bad_overrides(overrides, needle):
    with pytest.raises(UserError, match=None) as e:
        load_config(None, overrides)
    assert needle in str(e.value)


def test_unknown_key_in_yaml(tmp_path: Path):
    y = tmp_path / "typo.yaml"
    y.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(UserError) as e:
        load_config(y)
    assert "optim.learning_rate" in str(e.value) and str(y) in str(e.value)


def test_missing_and_invalid_files(tmp_path: Path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(UserError, match="scalar.yaml"):
        load_config(scalar)


@pytest.mark.parametrize("args, needle", [
    (["--fold", "0", "model.nme=x"], "model.nme"),
    (["--fold", "0", "epochs=abc"], "epochs"),
    (["--config", "configs/does_not_exist.yaml", "--fold", "0"], "does_not_exist.yaml"),
])
def test_scripts_report_config_errors(args, needle):
    assert_user_error(run_script("train_fold.py", *args), needle)


def test_fold_outside_range(tiny):
    res = run_script("train_fold.py", "--fold", "5", *tiny["overrides"])
    assert_user_error(res, "--fold 5")
    assert not (tiny["out"] / "fold5").exists()


def test_debug_shows_traceback():
    res = run_script("train_fold.py", "--debug", "--fold", "0", "model.nme=x")
    assert res.returncode == 2 and "Traceback" in res.stderr


@pytest.mark.parametrize("override, suggestion", [("image_szie=3", "image_size"), ("optim.learning_rate=1", "optim.lr"),
                                                  ("train.ema_dcay=0.9", "train.ema_decay"), ("zzz=1", None)])
def test_an_unknown_key_suggests_the_one_meant(override, suggestion):
    with pytest.raises(UserError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert msg.startswith(f"unknown config key '{override.split('=')[0]}'")
    assert (f"did you mean '{suggestion}'?" in msg) if suggestion else "did you mean" not in msg


def test_pretrained_false_means_no_weights(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  pretrained: false\n")
    assert load_config(path).model.pretrained is None
    assert load_config(None, ["model.pretrained=false"]).model.pretrained is None
    assert load_config(None, ["model.pretrained=tv_in1k"]).model.pretrained == "tv_in1k"
