"""The checkpoint file (comp.experiment.checkpoint) as prediction reads it: a truncated, empty or foreign
best.pt, a fold of another architecture or class count, weights saved under another layout, a pickle that
carries code, a file of an older or newer kit. Each is refused with one `error:` line naming the file, exit
code 2, and nothing already written overwritten or deleted; the code in a pickle never runs
(weights_only=True). An older kit's checkpoint with every key is read; a fold trained with other settings
is refused naming the key, old -> new, in the words --resume uses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from faults import BAD_CHECKPOINTS, edit, evil
from helpers import copy_of, make_experiment, one_error, run_main, snapshot, trained_fixture
from omegaconf import OmegaConf

from comp.errors import UserError
from comp.experiment import checkpoint as ckpt_io
from comp.experiment import load_config
from comp.experiment.checkpoint import save as save_atomic
from comp.predict.predict import predict_test


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    return trained_fixture(tmp_path_factory, "checkpoint")


@pytest.fixture(scope="module")
def two_class(tmp_path_factory) -> dict:
    """The same config on a two-class competition: its folds carry the very same config hash."""
    return trained_fixture(tmp_path_factory, "ckpt_two_class", classes=(0, 1))


def _setup(trained, two_class, tmp_path) -> tuple[dict, dict]:
    ex = copy_of(trained, tmp_path / "ex")
    probs = tmp_path / "probs.csv"  # the probabilities of an earlier prediction
    probs.write_text("id,prob_0,prob_1,prob_2\ntest_000,0.2,0.3,0.5\n")
    return ex, {"two_class": two_class, "marker": tmp_path / "PWNED", "probs": probs}


@pytest.mark.parametrize("name", list(BAD_CHECKPOINTS))
def test_predict_refuses_a_bad_fold(name, trained, two_class, tmp_path):
    ex, ctx = _setup(trained, two_class, tmp_path)
    fault, extra, needles = BAD_CHECKPOINTS[name]
    fault(ex["fold"] / "best.pt", ctx)
    before, probs = snapshot(ex["base"]), ctx["probs"].read_bytes()
    code, out, err = run_main("predict.py", *ex["overrides"], *extra, "--save-probs", str(ctx["probs"]))
    line = one_error(code, err, *needles)
    if name != "another architecture (config)":
        assert "best.pt" in line
    assert out == "" and ctx["probs"].read_bytes() == probs and snapshot(ex["base"]) == before
    assert not ctx["marker"].exists()  # the pickled code never ran


def test_the_pickle_payload_is_live(trained, two_class, tmp_path):
    """The payload above does run when unpickled without weights_only: the refusal is what stops it."""
    ex, ctx = _setup(trained, two_class, tmp_path)
    evil(ex["fold"] / "best.pt", ctx)
    torch.load(ex["fold"] / "best.pt", weights_only=False)
    assert ctx["marker"].read_text() == "the code ran"


def test_an_older_kit_checkpoint_with_every_key_is_loaded(trained, two_class, tmp_path):
    """No format_version (format 0) but the same layout: predicted from, and resumed."""
    ex, ctx = _setup(trained, two_class, tmp_path)
    strip = edit(lambda ck, c: {k: v for k, v in ck.items() if k != "format_version"})
    strip(ex["fold"] / "best.pt", ctx)
    strip(ex["fold"] / "last.pt", ctx)
    code, out, err = run_main("predict.py", *ex["overrides"])
    assert code == 0 and out.startswith("id,label\n"), err
    code, _, err = run_main("train_fold.py", "--fold", "0", "--resume", *ex["overrides"], "epochs=2")
    assert code == 0, err
    assert torch.load(ex["fold"] / "last.pt", weights_only=True)["epoch"] == 2


def test_a_fold_of_other_settings_names_the_key_old_and_new_like_resume(tmp_path):
    ex = make_experiment(tmp_path)
    for k in (0, 1):  # as training saves them: the resolved config rides in the checkpoint
        path = ex["out"] / f"fold{k}" / "best.pt"
        ck = torch.load(path, weights_only=True)
        save_atomic({**ck, "config": OmegaConf.to_container(ex["cfg"], resolve=True)}, path)
    other = load_config(None, [*ex["overrides"], "image_size=24", "seed=7"])
    with pytest.raises(UserError, match=r"fold0/best.pt was trained with a different .*\(image_size 16 -> 24\)"):
        predict_test(other, ex["comp"])
    ck = ckpt_io.load(ex["out"] / "fold0" / "best.pt")
    with pytest.raises(UserError, match=r"--resume: .*\(image_size 16 -> 24\)"):  # the same words, one function
        ckpt_io.check_resume({**ck, "step": 0}, Path("last.pt"), other, 1)
    assert ckpt_io.meaning_changes(ck, ex["cfg"]) is None  # seed is not what the weights mean
