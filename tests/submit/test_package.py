"""The offline package (comp.submit.package, scripts/package.py): its infer.py runs in a process of its own
with the network disabled, simplejpeg unimportable (Kaggle's Python image lacks it), from another working
directory, with the repository out of reach, and writes exactly the CSV (and probabilities) scripts/predict.py
writes from JPEGs (decoded by OpenCV's reduced decode there, by simplejpeg here). A bad test image gets the
class prior by default, and overrides go before or after a flag. The run-time estimate:
test_package_runtime.py."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from contextlib import redirect_stderr
from pathlib import Path

import cv2
import kaggle_env
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import COMMON, make_experiment, run_main, write_tiny_competition
from kaggle_env import offline_env

import comp.cli as cli
from comp.config import to_yaml
from comp.errors import UserError
from comp.experiment import load_config
from comp.experiment.checkpoint import save as save_atomic
from comp.submit.package import build_package, infer_main

logged_out = kaggle_env.logged_out  # the fixture: packaging without --id never asks kaggle.com who runs the test


def _jpeg_competition(root: Path) -> Path:
    """The tiny competition with 32 px JPEGs: at image_size=16 both decoders reduce them by 1/2."""
    write_tiny_competition(root, size=32)
    for png in root.rglob("*.png"):
        cv2.imwrite(str(png.with_suffix(".jpg")), cv2.imread(str(png)), [cv2.IMWRITE_JPEG_QUALITY, 90])
        png.unlink()
    return root


def test_the_package_predicts_offline_exactly_like_predict_py(tmp_path):
    ex = make_experiment(tmp_path, "metric=qwk", "data.image_ext=.jpg", ema=True,
                         root=_jpeg_competition(tmp_path / "data"))
    pkg = tmp_path / "pkg"
    code, out, err = run_main("package.py", *ex["overrides"], "-o", str(pkg), "--id", "someone/tiny-models")
    assert code == 0, err[-3000:]
    assert out.strip() == str(pkg)
    assert "kaggle datasets create -p" in err
    for name in ("infer.py", "config.yaml", "thresholds.json", "dataset-metadata.json", "fold0/best.pt",
                 "fold1/best.pt", "comp/predict/predict.py", "vendor/omegaconf/__init__.py"):
        assert (pkg / name).is_file(), name
    assert json.loads((pkg / "dataset-metadata.json").read_text())["id"] == "someone/tiny-models"
    slim = torch.load(pkg / "fold0" / "best.pt", weights_only=True)
    full = torch.load(ex["out"] / "fold0" / "best.pt", weights_only=True)
    assert "optimizer" not in slim and slim["ema"] is None and slim["eval_weights"] == "model"
    for k, v in full["ema"].items():  # the validated (EMA) weights are the ones shipped
        assert torch.equal(slim["model"][k], v), k

    env = offline_env(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = subprocess.run([sys.executable, "-c", "import socket; socket.create_connection(('127.0.0.1', 9))"],
                           capture_output=True, text=True, env=env, cwd=elsewhere)
    assert probe.returncode != 0 and "network disabled" in probe.stderr  # the guard is really on
    probe = subprocess.run([sys.executable, "-c", "import comp"], capture_output=True, text=True, env=env,
                           cwd=elsewhere)
    assert probe.returncode != 0 and "out of reach" in probe.stderr  # and the kit's own copy unusable
    probe = subprocess.run([sys.executable, "-c", "import simplejpeg"], capture_output=True, text=True, env=env)
    assert probe.returncode != 0 and "blocked" in probe.stderr  # and simplejpeg absent, as on Kaggle

    # infer.py as a Kaggle notebook runs it: a process of its own in the offline environment
    offline = subprocess.run([sys.executable, str(pkg / "infer.py"), "--data", str(ex["root"]),
                              "--save-probs", str(tmp_path / "offline.csv")],
                             capture_output=True, text=True, env=env, cwd=elsewhere, timeout=300)
    assert offline.returncode == 0, offline.stderr
    assert "decoding: " in offline.stderr and str(pkg / "thresholds.json") in offline.stderr
    # Same thread count on both sides: CPU convolutions sum in a thread-dependent order.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code, local, err = run_main("predict.py", *ex["overrides"], "--save-probs", str(tmp_path / "local.csv"))
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err[-3000:]
    assert offline.stdout == local and offline.stdout.startswith("id,label\n")
    assert (tmp_path / "offline.csv").read_bytes() == (tmp_path / "local.csv").read_bytes()
    assert not list(pkg.rglob("__pycache__"))  # nothing written into the (read-only on Kaggle) package


def test_package_refuses_a_foreign_fold_and_an_existing_folder(tmp_path, logged_out, capsys):
    ex = make_experiment(tmp_path)
    pkg = build_package(ex["cfg"], tmp_path / "pkg")
    # no login: a placeholder owner, said so (tests/submit/test_kaggle_logins.py: the owner of each login)
    assert "the owner is INSERT_KAGGLE_USERNAME (kaggle config view failed" in capsys.readouterr().err
    with pytest.raises(UserError, match="already exists; pass --force"):
        build_package(ex["cfg"], pkg)
    assert build_package(ex["cfg"], pkg, force=True) == pkg
    meta = json.loads((pkg / "dataset-metadata.json").read_text())
    assert 6 <= len(meta["title"]) <= 50 and meta["id"].split("/")[1].replace("-", "").isalnum()
    assert meta["id"].startswith("INSERT_KAGGLE_USERNAME/")
    assert not (pkg / "thresholds.json").exists()  # metric=accuracy: argmax, no thresholds

    f1 = ex["out"] / "fold1" / "best.pt"
    ck = torch.load(f1, weights_only=True)
    save_atomic({**ck, "inputs": {**ck["inputs"], "image_size": 24}}, f1)  # a fold that sees other images
    with pytest.raises(UserError, match=r"fold1/best.pt was trained with image_size=24 but .*fold0/best.pt with 16"):
        build_package(ex["cfg"], tmp_path / "pkg2")
    assert not (tmp_path / "pkg2").exists() and not (tmp_path / ".pkg2.partial").exists()
    with pytest.raises(UserError, match="is not owner/slug"):
        save_atomic(ck, f1)
        build_package(ex["cfg"], tmp_path / "pkg3", dataset_id="Not A Slug")
    assert not (tmp_path / "pkg3").exists()


def test_infer_needs_its_data_folder(tmp_path, logged_out, capsys):
    ex = make_experiment(tmp_path)
    pkg = build_package(ex["cfg"], tmp_path / "pkg")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # the packaged entry point, in-process
        infer_main(pkg, ["--data", str(tmp_path / "absent")])
    out, err = capsys.readouterr()
    assert e.value.code == 2 and out == ""
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [
        f"error: --data {tmp_path / 'absent'}: no such folder; pass the competition's data folder"]
    np.testing.assert_array_equal(pd.read_csv(ex["root"] / "sample_submission.csv").shape, (9, 2))


@pytest.mark.parametrize("subsampling", ["420", "444", "gray"])
def test_opencv_reduced_decode_gives_simplejpegs_pixels_at_the_shared_scales(tmp_path, monkeypatch, subsampling):
    """Without simplejpeg (Kaggle's image) JPEGs are decoded by OpenCV's IMREAD_REDUCED_*: at 1, 1/2, 1/4
    and 1/8, the scales both libraries have, every pixel is the same."""
    import simplejpeg

    from comp.data import images

    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 256, (301, 451, 3), dtype=np.uint8), (7, 7), 0)  # odd sides
    path = tmp_path / "x.jpg"
    factor = {"420": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420, "444": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444}
    cv2.imwrite(str(path), img[:, :, 0] if subsampling == "gray" else img,
                [cv2.IMWRITE_JPEG_QUALITY, 90] + ([cv2.IMWRITE_JPEG_SAMPLING_FACTOR, factor[subsampling]]
                                                  if subsampling in factor else []))
    for target, scale in ((None, 1), (300, 1), (150, 2), (75, 4), (37, 8), (10, 8)):
        with_sj = images._decode_jpeg(path.read_bytes(), target)
        monkeypatch.setattr(images, "simplejpeg", None)
        without = images._decode_jpeg(path.read_bytes(), target)
        monkeypatch.setattr(images, "simplejpeg", simplejpeg)
        assert with_sj.shape == without.shape == (-(-301 // scale), -(-451 // scale), 3), (target, with_sj.shape)
        np.testing.assert_array_equal(with_sj, without, err_msg=f"target {target}")


def test_the_package_drops_the_answers_and_never_leaves_an_empty_csv(tmp_path, logged_out, capsys):
    # the demo config names data.solution_csv; inference never needs held-out answers, so the package ships
    # without the key, and -o writes the CSV only when the whole prediction succeeded.
    ex = make_experiment(tmp_path)  # its config sets data.solution_csv=solution.csv
    pkg = build_package(ex["cfg"], tmp_path / "pkg")
    assert ex["cfg"].data.solution_csv and load_config(pkg / "config.yaml").data.solution_csv == ""
    (ex["root"] / "solution.csv").unlink()  # a hidden test set comes without its answers
    out = tmp_path / "submission.csv"
    with pytest.raises(SystemExit) as e:
        infer_main(pkg, ["--data", str(ex["root"]), "-o", str(out)])
    assert e.value.code == 0 and out.read_text().startswith("id,label\n")
    empty = tmp_path / "nothing"
    (empty / "test").mkdir(parents=True)  # a data folder whose test images are missing: the run fails
    out.unlink()
    with pytest.raises(SystemExit) as e:
        infer_main(pkg, ["--data", str(empty), "-o", str(out)])
    assert e.value.code == 2 and not out.exists() and capsys.readouterr().out == ""


def test_the_offline_package_gives_a_bad_image_the_prior_by_default(tmp_path, monkeypatch):
    import comp.predict.submission as submission
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


def test_the_packaged_infer_takes_overrides_before_and_after_a_flag(monkeypatch):
    real, seen = cli.main, []
    monkeypatch.setattr(cli, "main", lambda run, p, argv=None: real(seen.append, p, argv))
    with pytest.raises(SystemExit):
        infer_main(Path("."), ["batch_size=4", "--data", "d", "seed=1"])
    assert seen[0].overrides == ["batch_size=4", "seed=1"] and seen[0].data == "d"


def test_a_package_with_a_binary_decision_threshold_predicts_like_predict_py(tmp_path, capsys):
    """A binary pf1 experiment (RSNA mammography's metric): its thresholds.json holds a decision threshold,
    not kappa cut-points; infer.py, which has no OOF files, reads and logs it."""
    from helpers import FAST, write_competition

    from comp.train.loop import fit

    root = tmp_path / "data"
    overrides = [*FAST, *write_competition(root, "binary", n=16, n_test=4), f"out_dir={tmp_path / 'runs'}",
                 "metric=pf1", "aug.tta=[identity]", "model.name=timm/test_resnet"]
    cfg = load_config(None, overrides)
    for k in range(2):
        fit(cfg, k)
    pkg = tmp_path / "pkg"
    code, _, err = run_main("package.py", *overrides, "-o", str(pkg), "--id", "someone/tiny-pf1", "--no-estimate")
    assert code == 0, err[-3000:]
    assert json.loads((pkg / "thresholds.json").read_text())["metric"] == "pf1"
    code, local, err = run_main("predict.py", *overrides)
    assert code == 0, err[-3000:]
    capsys.readouterr()
    try:
        infer_main(pkg, ["--data", str(root), "data.solution_csv=''"])
    except SystemExit as e:
        assert e.code in (0, None)
    out, err = capsys.readouterr()
    assert out == local, err[-3000:]
    assert f"from {pkg / 'thresholds.json'} (OOF pf1 " in err

@pytest.fixture(scope="module")
def mil_fold(tmp_path_factory):
    from mil_fold import trained_mil_fold

    return trained_mil_fold(tmp_path_factory)


def test_a_mil_package_predicts_offline_exactly_like_predict_py(mil_fold, tmp_path):
    """A MIL experiment (a row: a study of four DICOM series) packaged: it carries the mil: keys and nothing of
    the cache, and its infer.py, a process of its own offline with the image cache moved away, decodes the
    replica's test folders and writes scripts/predict.py's CSV."""
    pkg = tmp_path / "pkg"
    ov = [*mil_fold["overrides"], "data.solution_csv=''"]
    code, _, err = run_main("package.py", "--config", mil_fold["config"], *ov, "-o", str(pkg), "--id",
                            "someone/tiny-mil", "--no-estimate")
    assert code == 0, err[-3000:]
    shipped = load_config(pkg / "config.yaml")
    assert (shipped.mil.source, shipped.mil.folder, list(shipped.mil.series), shipped.mil.instances) == (
        "study", "{BraTS21ID:05d}", ["FLAIR", "T1w", "T1wCE", "T2w"], 3)
    assert not [p for p in pkg.rglob("*") if p.suffix in (".npy", ".dcm")]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code, local, err = run_main("predict.py", "--config", mil_fold["config"], *ov)
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err[-3000:]
    cache, away = mil_fold["cache"], tmp_path / "cache-away"
    cache.rename(away)  # the package reads the DICOMs, never the kit's cache
    try:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        offline = subprocess.run([sys.executable, str(pkg / "infer.py"), "--data", str(mil_fold["root"])],
                                 capture_output=True, text=True, env=offline_env(tmp_path), cwd=elsewhere,
                                 timeout=300)
    finally:
        away.rename(cache)
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout == local and local.startswith("BraTS21ID,MGMT_value\n") and local.count("\n") == 3
