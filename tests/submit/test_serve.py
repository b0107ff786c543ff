"""The served form of the offline package (comp.submit.serve, the package's serve.py) driven by a stand-in of
Kaggle's inference gateway (tests/submit/gateway.py): one call per test item, each answer checked, the
answers written to submission.parquet, which holds the values infer.py's CSV holds. An item that fails
gets the training class prior and a warning; a wrong answer is caught by the gateway."""

from __future__ import annotations

import re
import runpy
import sys

import cv2
import gateway
import kaggle_env
import numpy as np
import pandas as pd
import pytest
from helpers import make_experiment

from comp.submit.package import build_package, infer_main

logged_out = kaggle_env.logged_out  # the fixture: packaging never asks kaggle.com who runs the test


def _package(tmp_path, *extra, probs=False):
    """A packaged tiny experiment; with `probs` its sample asks for one probability column per class."""
    ex = make_experiment(tmp_path, *extra)
    if probs:
        sample = pd.read_csv(ex["root"] / "sample_submission.csv", dtype=str)
        pd.DataFrame({"id": sample["id"], "0": 0.2, "1": 0.3, "2": 0.5}).to_csv(
            ex["root"] / "sample_submission.csv", index=False)
    return ex, build_package(ex["cfg"], tmp_path / "pkg", dataset_id="someone/tiny-models", estimate=False)


def _served(pkg, monkeypatch, *args):
    """The package's serve.py as a notebook imports it; its predictor(*args)."""
    monkeypatch.setattr(sys, "path", list(sys.path))  # serve.py puts the package on sys.path
    return runpy.run_path(str(pkg / "serve.py"))["predictor"](*args)


def _infer_csv(pkg, root, tmp_path) -> pd.DataFrame:
    with pytest.raises(SystemExit) as e:
        infer_main(pkg, ["--data", str(root), "-o", str(tmp_path / "infer.csv")])
    assert e.value.code == 0
    return pd.read_csv(tmp_path / "infer.csv", dtype={"id": str})


@pytest.mark.parametrize("extra, probs", [(("metric=qwk",), False), ((), True)], ids=["qwk-labels", "probs"])
def test_the_gateway_writes_the_parquet_infer_py_writes_as_csv(tmp_path, logged_out, monkeypatch, extra, probs):
    ex, pkg = _package(tmp_path, *extra, probs=probs)
    assert (pkg / "serve.py").is_file()
    server = gateway.TinyInferenceServer(_served(pkg, monkeypatch, str(ex["root"])))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    out = server.run_local_gateway((str(ex["root"]),))
    served = pd.read_parquet(out)
    sample = pd.read_csv(ex["root"] / "sample_submission.csv", dtype=str)
    assert [c for c, _ in server.gateway.calls] == sample["id"].tolist()  # one call per item, in its order
    assert all(p.endswith(".png") for _, p in server.gateway.calls)
    csv = _infer_csv(pkg, ex["root"], tmp_path)
    assert list(served.columns) == list(csv.columns) and served["id"].tolist() == csv["id"].tolist()
    if probs:
        np.testing.assert_allclose(served[["0", "1", "2"]].to_numpy(float), csv[["0", "1", "2"]].to_numpy(float),
                                   rtol=1e-5, atol=1e-6)
        assert not np.allclose(served[["0", "1", "2"]].to_numpy(float), 1 / 3)  # the models', not the prior
    else:
        assert served["label"].astype(str).tolist() == csv["label"].astype(str).tolist()


def test_a_failing_item_gets_the_prior_and_a_warning_and_the_run_goes_on(tmp_path, logged_out, monkeypatch, capsys):
    ex, pkg = _package(tmp_path, probs=True)
    (ex["root"] / "test" / "test_001.png").write_bytes(b"not a png")  # an unreadable image
    predict = _served(pkg, monkeypatch, str(ex["root"]))
    good = predict("test_000", str(ex["root"] / "test" / "test_000.png"))
    bad = predict("test_001", str(ex["root"] / "test" / "test_001.png"))
    absent = predict("test_002", str(ex["root"] / "test" / "nothing.png"))
    by_id = predict(pd.DataFrame({"id": ["test_003"]}))  # a frame of the row, its image found by id
    net = predict.loaded["nets"][0]
    monkeypatch.setattr(net, "forward", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("CUDA out of memory")))
    crashed = predict("test_004", str(ex["root"] / "test" / "test_004.png"))
    err = capsys.readouterr().err
    prior = [1 / 3] * 3  # the tiny competition's classes are balanced
    for row in (bad, absent, crashed):
        assert list(row.columns) == ["id", "0", "1", "2"]
        np.testing.assert_allclose(row[["0", "1", "2"]].to_numpy(float)[0], prior, rtol=1e-6)
    for row in (good, by_id):
        assert not np.allclose(row[["0", "1", "2"]].to_numpy(float)[0], prior)
    assert f"warning: test image {ex['root'] / 'test' / 'test_001.png'} cannot be read" in err
    assert "nothing.png cannot be read" in err
    assert "warning: served item 'test_004': RuntimeError: CUDA out of memory; its row is the training class prior" \
        in err


def test_the_served_predictor_needs_no_public_test_images(tmp_path, logged_out, monkeypatch):
    # a served competition's test items come with the calls; its listing may name images that are not there
    ex, pkg = _package(tmp_path, probs=True)
    served = tmp_path / "served"
    (ex["root"] / "test").rename(served)
    row = _served(pkg, monkeypatch, str(ex["root"]))("test_005", str(served / "test_005.png"))
    assert row["id"].tolist() == ["test_005"] and not np.allclose(row[["0", "1", "2"]].to_numpy(float), 1 / 3)


def test_an_item_of_several_images_is_their_aggregate(tmp_path, logged_out, monkeypatch):
    ex, pkg = _package(tmp_path, probs=True)
    predict = _served(pkg, monkeypatch, str(ex["root"]))
    test = ex["root"] / "test"
    one, two = (predict(k, str(test / f"{k}.png"))[["0", "1", "2"]].to_numpy(float) for k in ("test_000", "test_001"))
    series = tmp_path / "series"
    series.mkdir()
    for k in ("test_000", "test_001"):
        cv2.imwrite(str(series / f"{k}.png"), cv2.imread(str(test / f"{k}.png")))
    both = predict("s1", str(series))[["0", "1", "2"]].to_numpy(float)  # a folder: its images (predict.aggregate)
    np.testing.assert_allclose(both, (one + two) / 2, rtol=1e-5)
    alone = predict(str(series))  # a path alone (RSNA 2025 passes the series folder): its name is the id
    assert alone["id"].tolist() == ["series"]
    np.testing.assert_allclose(alone[["0", "1", "2"]].to_numpy(float), both, rtol=1e-6)
    assert predict(str(test / "test_001.png"))["id"].tolist() == ["test_001"]


def test_the_gateway_ends_a_run_whose_call_passes_its_time_limit(tmp_path, monkeypatch):
    from helpers import write_tiny_competition

    root = write_tiny_competition(tmp_path / "data", n_per_class=2, n_test=2)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(gateway, "ROW_TIMEOUT_S", -1.0)  # every call is late: no clock needed
    with pytest.raises(gateway.GatewayRuntimeError, match="TIMEOUT: predict took over -1 s on 'test_000'"):
        gateway.TinyInferenceServer(lambda i, p: pd.DataFrame({"id": [i], "label": ["0"]})).run_local_gateway(
            (str(root),))


@pytest.mark.parametrize("answer, says", [
    (lambda i, p: {"id": i, "label": "0"}, "predict returned dict"),
    (lambda i, p: pd.Series({"id": i, "label": "0"}), "predict returned Series"),
    (lambda i, p: pd.DataFrame({"id": [i], "grade": ["0"]}), "columns ['id', 'grade']"),
    (lambda i, p: pd.DataFrame({"id": [i, i], "label": ["0", "1"]}), "2 rows"),
    (lambda i, p: pd.DataFrame({"id": ["other"], "label": ["0"]}), "id 'other' answered"),
    (lambda i, p: pd.DataFrame({"id": [i], "label": [None]}), "a missing value"),
], ids=["dict", "series", "columns", "rows", "id", "missing"])
def test_the_gateway_refuses_a_wrong_answer(tmp_path, monkeypatch, answer, says):
    from helpers import write_tiny_competition

    root = write_tiny_competition(tmp_path / "data", n_per_class=2, n_test=2)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(gateway.GatewayRuntimeError, match=re.escape(says)) as e:
        gateway.TinyInferenceServer(answer).run_local_gateway((str(root),))
    assert e.value.error_type == "INVALID_SUBMISSION" and not (tmp_path / "submission.parquet").exists()


@pytest.fixture(scope="module")
def mil_fold(tmp_path_factory):
    from mil_fold import trained_mil_fold

    return trained_mil_fold(tmp_path_factory)


def test_a_served_mil_item_is_one_row_of_instances(mil_fold, tmp_path, logged_out, monkeypatch, capsys):
    """A MIL package served (a study of four DICOM series a row): the item's study folder, or its id alone
    (mil.folder under data.test_images), gives infer.py's row; a single file for a study is refused (a warning
    and the prior, as any failing item)."""
    from comp.experiment import load_config

    cfg = load_config(mil_fold["config"], [*mil_fold["overrides"], "data.solution_csv=''"])
    pkg = build_package(cfg, tmp_path / "pkg", dataset_id="someone/tiny-mil", estimate=False)
    want = _infer_csv(pkg, mil_fold["root"], tmp_path).astype({"BraTS21ID": str}).set_index("BraTS21ID")["MGMT_value"]
    predict = _served(pkg, monkeypatch, str(mil_fold["root"]))
    study = mil_fold["root"] / "test" / "00013"
    by_folder, by_id = predict("13", str(study)), predict("13")
    for row in (by_folder, by_id):
        assert row["BraTS21ID"].tolist() == ["13"]
        np.testing.assert_allclose(row["MGMT_value"].astype(float), [want.loc["13"]], rtol=1e-5)
    capsys.readouterr()
    bad = predict("13", str(next(study.rglob("*.dcm"))))
    assert "a mil.source=study row is its folder" in capsys.readouterr().err
    assert bad["BraTS21ID"].tolist() == ["13"]
