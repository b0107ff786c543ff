"""scripts/submit.py and its flow (comp.submit.kaggle): an invalid file never reaches Kaggle nor the record; a
valid one is handed to the CLI with exactly `competitions submit <competition> -f FILE -m MESSAGE`, and
recorded only when the CLI succeeds; a missing or failing CLI is one error line. A stand-in `kaggle` placed
first on PATH records its arguments (tests/submit/test_kaggle_api_flows.py runs the real CLI against a fake
of Kaggle's API); the script runs in-process (conftest.run_main)."""

from __future__ import annotations

import csv
import json
import os
import stat
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import make_experiment, one_error, run_main, write_tiny_competition

from comp.config import config_hash
from comp.experiment import Experiment, load_config

COMPETITION = "tiny-comp"


def install_stand_in(tmp_path: Path, monkeypatch, code: int = 0,
                     answer: str = f"Submission ref: 123\nSuccessfully submitted to {COMPETITION}"):
    """A fake `kaggle` first on PATH: appends its argv (JSON) to a log; to `competitions submit` prints
    `answer` and exits `code`; to `competitions submissions` lists submission 123 (described "ok") as
    COMPLETE with public score 0.5, as kaggle 2.x does. It also prints KAGGLE_KEY, to show the kit masks
    credentials. (test_kaggle_api_flows.py runs the real CLI against a fake API.)"""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    argv_log = tmp_path / "kaggle_argv.jsonl"
    exe = bin_dir / "kaggle"
    listing = ("ref,fileName,date,description,status,publicScore,privateScore\n"
               "123,sub.csv,2026-11-29 20:00:00,ok,SubmissionStatus.COMPLETE,0.5,")
    exe.write_text(f"#!{sys.executable} -S\nimport json, os, sys\n"
                   f"open({str(argv_log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
                   "print('key: ' + os.environ.get('KAGGLE_KEY', ''), file=sys.stderr)\n"
                   f"if sys.argv[2] == 'submissions':\n    print({listing!r})\n    sys.exit(0)\n"
                   f"print({answer!r})\nsys.exit({code})\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("KAGGLE_KEY", "S3CRET-KEY-123")
    return argv_log


@pytest.fixture(scope="module")
def competitions(tmp_path_factory) -> dict:
    """A tiny competition (labels 0/1/2) and one whose sample has a probability column per class; only read."""
    base = tmp_path_factory.mktemp("submit")
    labels = write_tiny_competition(base / "labels")
    probs = write_tiny_competition(base / "probs")
    sample = pd.read_csv(probs / "sample_submission.csv", dtype=str)
    pd.DataFrame({"id": sample["id"], "0": 0, "1": 0, "2": 0}).to_csv(probs / "sample_submission.csv", index=False)
    return {"label": labels, "prob": probs, "ids": list(sample["id"])}


@pytest.fixture
def comp_setup(competitions, tmp_path):
    """The overrides of either competition, with this test's own submissions folder and out_dir."""
    subs = tmp_path / "subs"
    common = ["data.source=competition", f"data.competition={COMPETITION}", f"predict.submissions_dir={subs}",
              f"out_dir={tmp_path / 'runs'}", "data.solution_csv=solution.csv"]
    return {"label": [f"data.root={competitions['label']}", *common],
            "prob": [f"data.root={competitions['prob']}", *common], "ids": competitions["ids"], "subs": subs}


def _valid(ids: list[str], kind: str) -> list[list[str]]:
    if kind == "label":
        return [["id", "label"]] + [[i, str(k % 3)] for k, i in enumerate(ids)]
    return [["id", "0", "1", "2"]] + [[i, "0.2", "0.3", "0.5"] for i in ids]


# name → (competition kind, rows → rows or raw bytes, what the error line must say)
MALFORMED = {
    "missing id": ("label", lambda r: r[:-1], "lacks 1 test id"),
    "duplicate id": ("label", lambda r: r[:-1] + [[r[1][0], "1"]], "appears more than once"),
    "extra id": ("label", lambda r: r + [["test_999", "1"]], "'test_999' is not in the sample submission"),
    "NaN label": ("label", lambda r: r[:3] + [[r[3][0], "nan"]] + r[4:], "line 4: label='nan' is empty or NaN"),
    "blank value": ("label", lambda r: r[:2] + [[r[2][0], ""]] + r[3:], "line 3: label='' is empty or NaN"),
    "wrong header": ("label", lambda r: [["id", "target"]] + r[1:], "header ['id', 'target']"),
    "header case": ("label", lambda r: [["ID", "label"]] + r[1:], "header ['ID', 'label']"),
    "extra column": ("label", lambda r: [x + ["0"] for x in r], "is not the sample submission's"),
    "label outside the classes": ("label", lambda r: r[:5] + [[r[5][0], "7"]] + r[6:], "label='7' is not one of"),
    "float for an integer label": ("label", lambda r: r[:2] + [[r[2][0], "1.0"]] + r[3:], "label='1.0' is not one"),
    "wrong row count": ("label", lambda r: r[:1], "lacks 9 test id(s)"),
    "id spelt differently": ("label", lambda r: r[:1] + [[r[1][0].upper(), "1"]] + r[2:], "'TEST_000' is not in"),
    "empty id": ("label", lambda r: r[:1] + [["", "1"]] + r[2:], "has an empty 'id'"),
    "ragged row": ("label", lambda r: r[:2] + [[r[2][0], "1", "2"]] + r[3:], "line 3 has 3 field(s)"),
    "probability > 1": ("prob", lambda r: r[:2] + [[r[2][0], "0.2", "1.3", "0.5"]] + r[3:], "'1.3' is not a prob"),
    "negative probability": ("prob", lambda r: r[:2] + [[r[2][0], "-0.1", "0.6", "0.5"]] + r[3:], "not a probability"),
    "infinite probability": ("prob", lambda r: r[:2] + [[r[2][0], "inf", "0", "0"]] + r[3:], "empty or NaN"),
    "text probability": ("prob", lambda r: r[:2] + [[r[2][0], "high", "0", "0"]] + r[3:], "'high' is not a prob"),
    "labels where probabilities go": ("prob", lambda r: [["id", "label"]] + [[x[0], "1"] for x in r[1:]], "header"),
    "not UTF-8": ("label", lambda r: b"id,label\ntest_000,\xff\n", "not UTF-8"),
    "empty file": ("label", lambda r: b"", "is empty (no header)"),
}


def _write(path: Path, rows, crlf: bool = False, bom: bool = False) -> Path:
    if isinstance(rows, bytes):
        path.write_bytes(rows)
        return path
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        csv.writer(f, lineterminator="\r\n" if crlf else "\n").writerows(rows)
    return path


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_submission_is_refused_and_nothing_is_written(name, comp_setup, tmp_path, monkeypatch):
    kind, edit, needle = MALFORMED[name]
    argv_log = install_stand_in(tmp_path, monkeypatch)
    file = _write(tmp_path / "bad.csv", edit(_valid(comp_setup["ids"], kind)))
    code, _, err = run_main("submit.py", file.as_posix(), "-m", "should fail", *comp_setup[kind])
    line = one_error(code, err)
    assert needle in line, (needle, line)
    assert not argv_log.exists()  # the CLI never ran
    assert not comp_setup["subs"].exists()  # no index row, no copy


def test_the_valid_versions_pass_and_a_bom_crlf_file_too(comp_setup, tmp_path, monkeypatch):
    argv_log = install_stand_in(tmp_path, monkeypatch)
    for kind in ("label", "prob"):
        rows = _valid(comp_setup["ids"], kind)
        for crlf, bom in ((False, False), (True, True)):
            file = _write(tmp_path / f"{kind}_{crlf}.csv", [rows[0]] + rows[1:][::-1], crlf=crlf, bom=bom)  # any order
            code, _, err = run_main("submit.py", str(file), "-m", "ok", *comp_setup[kind])
            assert code == 0, err
    assert len(argv_log.read_text().splitlines()) == 8  # each: submit, then the status read


def test_the_cli_gets_exactly_its_arguments_and_the_submission_is_recorded(tmp_path, monkeypatch):
    ex = make_experiment(tmp_path, f"data.competition={COMPETITION}", f"predict.submissions_dir={tmp_path / 'subs'}")
    argv_log = install_stand_in(tmp_path, monkeypatch)
    rows = _valid(pd.read_csv(ex["root"] / "sample_submission.csv", dtype=str)["id"].tolist(), "label")
    file = _write(tmp_path / "my sub.csv", rows)
    message = "resnet18 5 folds, TTA 'hflip'"
    code, _, err = run_main("submit.py", str(file), "-m", message, *ex["overrides"])
    assert code == 0, err
    assert [json.loads(ln) for ln in argv_log.read_text().splitlines()] == [
        ["competitions", "submit", COMPETITION, "-f", str(file), "-m", message],
        ["competitions", "submissions", "-c", COMPETITION, "--csv"]]
    subs = tmp_path / "subs"
    index = pd.read_csv(subs / "index.csv", dtype=str, keep_default_na=False)
    assert len(index) == 1
    row = index.iloc[0]
    copy = Path(row["file"])
    assert copy.parent == subs and copy.read_bytes() == file.read_bytes()
    assert row["competition"] == COMPETITION and row["message"] == message
    assert row["config_hash"] == config_hash(ex["cfg"]) and row["git_commit"]
    assert row["cv_metric"] == "accuracy" and float(row["cv_score"]) == pytest.approx(Experiment(ex["cfg"]).cv()[1])
    assert row["kaggle_answer"] == f"Successfully submitted to {COMPETITION}"
    assert (row["kaggle_ref"], row["status"], row["public_score"], row["error"]) == ("123", "COMPLETE", "0.5", "")
    assert pd.Timestamp(row["time"]).tzinfo is not None
    assert "S3CRET-KEY-123" not in err

    code, _, err = run_main("submit.py", str(file), "-m", "again", *ex["overrides"])
    assert code == 0, err
    index = pd.read_csv(subs / "index.csv", dtype=str)
    assert list(index["message"]) == [message, "again"] and len(list(subs.glob("*.csv"))) == 3  # 2 copies + index


def test_a_failing_cli_is_one_error_line_and_nothing_is_recorded(comp_setup, tmp_path, monkeypatch):
    argv_log = install_stand_in(tmp_path, monkeypatch, code=1, answer="400 Client Error: Bad Request for url")
    file = _write(tmp_path / "ok.csv", _valid(comp_setup["ids"], "label"))
    code, _, err = run_main("submit.py", str(file), "-m", "x", *comp_setup["label"])
    line = one_error(code, err)
    assert "kaggle competitions submit tiny-comp" in line and "failed:" in line and "400 Client Error" in line
    assert argv_log.exists() and not comp_setup["subs"].exists()
    assert "S3CRET-KEY-123" not in err


def test_missing_credentials_pass_on_the_real_cli_instructions(comp_setup, tmp_path, monkeypatch):
    real = Path(sys.executable).parent / "kaggle"
    if not real.is_file():
        pytest.skip("the kaggle CLI is not installed beside the interpreter")
    for var in [v for v in os.environ if v.startswith("KAGGLE_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "home" / ".kaggle"))
    monkeypatch.setenv("PATH", f"{real.parent}{os.pathsep}{os.environ['PATH']}")
    file = _write(tmp_path / "ok.csv", _valid(comp_setup["ids"], "label"))
    code, _, err = run_main("submit.py", str(file), "-m", "x", *comp_setup["label"])
    line = one_error(code, err)
    assert "failed:" in line and ("kaggle auth login" in line or "kaggle.json" in line), line
    assert not comp_setup["subs"].exists()


def test_the_demo_competition_is_scored_locally_not_submitted(comp_setup, tmp_path, monkeypatch):
    argv_log = install_stand_in(tmp_path, monkeypatch)
    file = _write(tmp_path / "ok.csv", _valid(comp_setup["ids"], "label"))
    code, _, err = run_main("submit.py", str(file), "-m", "demo", *comp_setup["label"],
                            "data.source=demo")
    assert code == 0, err
    assert f"kaggle competitions submit {COMPETITION} -f {file} -m demo" in err
    assert "local score against the held-out answers: accuracy" in err
    assert not argv_log.exists() and not comp_setup["subs"].exists()

    code, _, err = run_main("submit.py", str(file), "--dry-run", "-m", "dry", *comp_setup["label"])
    assert code == 0 and "--dry-run" in err and not argv_log.exists()
    code, _, err = run_main("submit.py", "--dry-run", *comp_setup["label"], str(file))  # FILE after the overrides
    assert code == 0 and "--dry-run" in err and "valid (" in err, err[-2000:]
    # a dry run never shows a command Kaggle would refuse: a code competition's CSV, an empty competition
    code, _, err = run_main("submit.py", str(file), "--dry-run", "-m", "dry", *comp_setup["label"],
                            "data.code_competition=true")
    assert code == 0 and "code competition" in err and "--notebook" in err and "would be" not in err
    code, _, err = run_main("submit.py", str(file), "--dry-run", "-m", "dry", *comp_setup["label"],
                            'data.competition=""')
    assert code == 0 and "data.competition is empty" in err and "would be" not in err


def test_the_script_refuses_a_bad_file_and_requires_a_message(comp_setup, tmp_path):
    file = _write(tmp_path / "bad.csv", _valid(comp_setup["ids"], "label")[:-1])
    code, _, err = run_main("submit.py", str(file), "-m", "x", *comp_setup["label"])
    one_error(code, err, "lacks 1 test id")
    code, _, err = run_main("submit.py", str(file), *comp_setup["label"])
    assert "-m MESSAGE is missing" in one_error(code, err)  # required to submit
    assert not comp_setup["subs"].exists()
    good = _write(tmp_path / "good.csv", _valid(comp_setup["ids"], "label"))
    code, _, err = run_main("submit.py", str(good), "--dry-run", *comp_setup["label"])  # not to validate
    assert code == 0 and "--dry-run" in err, err


def test_an_empty_message_or_competition_is_refused(comp_setup, tmp_path, monkeypatch):
    argv_log = install_stand_in(tmp_path, monkeypatch)
    file = _write(tmp_path / "ok.csv", _valid(comp_setup["ids"], "label"))
    code, _, err = run_main("submit.py", str(file), "-m", " ", *comp_setup["label"])
    assert "-m MESSAGE is empty" in one_error(code, err)
    code, _, err = run_main("submit.py", str(file), "-m", "x", *comp_setup["label"],
                            "data.competition=''")
    assert "data.competition is empty" in one_error(code, err)
    assert not argv_log.exists() and not comp_setup["subs"].exists()
    assert load_config(None, comp_setup["label"]).data.competition == COMPETITION


def test_an_older_cli_without_a_ref_is_looked_up_and_a_silent_failure_is_caught(comp_setup, tmp_path, monkeypatch):
    file = _write(tmp_path / "ok.csv", _valid(comp_setup["ids"], "label"))
    install_stand_in(tmp_path, monkeypatch, answer=f"Successfully submitted to {COMPETITION}")  # no ref printed
    code, _, err = run_main("submit.py", str(file), "-m", "ok", *comp_setup["label"])
    assert code == 0, err
    row = pd.read_csv(comp_setup["subs"] / "index.csv", dtype=str).iloc[-1]
    assert row["kaggle_ref"] == "123" and row["status"] == "COMPLETE"  # found by its description

    install_stand_in(tmp_path, monkeypatch, answer="Could not submit to competition")  # older CLIs: exit 0
    code, _, err = run_main("submit.py", str(file), "-m", "other", *comp_setup["label"])
    assert "failed: Could not submit to competition" in one_error(code, err)
    assert len(pd.read_csv(comp_setup["subs"] / "index.csv")) == 1  # not recorded
    assert len(list(comp_setup["subs"].glob("*.csv"))) == 2  # index + the first copy only


def test_kaggle_cli_missing_for_the_submission(tmp_path, monkeypatch):
    ex = make_experiment(tmp_path / "ex")
    code, sub, err = run_main("predict.py", *ex["overrides"])
    assert code == 0, err
    file = tmp_path / "sub.csv"
    file.write_text(sub)
    empty = tmp_path / "empty_bin"  # no `kaggle` on PATH, nor beside the interpreter
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(sys, "executable", str(empty / "python"))
    subs = tmp_path / "submissions"
    code, _, err = run_main("submit.py", str(file), "-m", "first try", *ex["overrides"],
                            "data.competition=tiny-comp", f"predict.submissions_dir={subs}")
    one_error(code, err, "the kaggle CLI is not on PATH")
    assert not subs.exists() and file.read_text() == sub  # nothing recorded, the file as it was
