"""scripts/submit.py: an invalid file never reaches Kaggle nor the record; a valid one is handed to the
CLI with exactly `competitions submit <competition> -f FILE -m MESSAGE`, and recorded only when the CLI
succeeds. A stand-in `kaggle` placed first on PATH records its arguments; the script runs in-process
(runpy) to keep the dozen cases fast, and once as a real subprocess."""

from __future__ import annotations

import csv
import json
import os
import runpy
import stat
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import ROOT, assert_user_error, make_experiment, run_script, write_tiny_competition

from comp.config import config_hash
from comp.experiment import Experiment, load_config

COMPETITION = "tiny-comp"


def install_stand_in(tmp_path: Path, monkeypatch, code: int = 0,
                     answer: str = f"Submission ref: 123\nSuccessfully submitted to {COMPETITION}"):
    """A fake `kaggle` first on PATH: appends its argv (JSON) to a log; to `competitions submit` prints
    `answer` and exits `code`; to `competitions submissions` lists submission 123 (described "ok") as
    COMPLETE with public score 0.5, as kaggle 2.x does. It also prints KAGGLE_KEY, to show the kit masks
    credentials. (tests/test_kaggle_api.py runs the real CLI against a fake API.)"""
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


def submit_in_process(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """Run scripts/submit.py as `python scripts/submit.py ARGS` would, in this process."""
    monkeypatch.setattr(sys, "argv", [str(ROOT / "scripts" / "submit.py"), *args])
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "scripts" / "submit.py"), run_name="__main__")
    return e.value.code or 0, capsys.readouterr().err


def _one_error(code: int, err: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def comp_setup(tmp_path):
    """A tiny competition (labels 0/1/2) and one whose sample has a probability column per class."""
    labels = write_tiny_competition(tmp_path / "labels")
    probs = write_tiny_competition(tmp_path / "probs")
    sample = pd.read_csv(probs / "sample_submission.csv", dtype=str)
    pd.DataFrame({"id": sample["id"], "0": 0, "1": 0, "2": 0}).to_csv(probs / "sample_submission.csv", index=False)
    subs = tmp_path / "subs"
    common = ["data.source=competition", f"data.competition={COMPETITION}", f"predict.submissions_dir={subs}",
              f"out_dir={tmp_path / 'runs'}", "data.solution_csv=solution.csv"]
    return {"label": [f"data.root={labels}", *common], "prob": [f"data.root={probs}", *common],
            "ids": list(sample["id"]), "subs": subs}


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
def test_a_malformed_submission_is_refused_and_nothing_is_written(name, comp_setup, tmp_path, monkeypatch, capsys):
    kind, edit, needle = MALFORMED[name]
    argv_log = install_stand_in(tmp_path, monkeypatch)
    file = _write(tmp_path / "bad.csv", edit(_valid(comp_setup["ids"], kind)))
    code, err = submit_in_process(monkeypatch, capsys, file.as_posix(), "-m", "should fail", *comp_setup[kind])
    line = _one_error(code, err)
    assert needle in line, (needle, line)
    assert not argv_log.exists()  # the CLI never ran
    assert not comp_setup["subs"].exists()  # no index row, no copy


def test_the_valid_versions_pass_and_a_bom_crlf_file_too(comp_setup, tmp_path, monkeypatch, capsys):
    argv_log = install_stand_in(tmp_path, monkeypatch)
    for kind in ("label", "prob"):
        rows = _valid(comp_setup["ids"], kind)
        for crlf, bom in ((False, False), (True, True)):
            file = _write(tmp_path / f"{kind}_{crlf}.csv", [rows[0]] + rows[1:][::-1], crlf=crlf, bom=bom)  # any order
            code, err = submit_in_process(monkeypatch, capsys, str(file), "-m", "ok", *comp_setup[kind])
            assert code == 0, err
    assert len(argv_log.read_text().splitlines()) == 8  # each: submit, then the status read


def test_the_cli_gets_exactly_its_arguments_and_the_submission_is_recorded(tmp_path, monkeypatch, capsys):
    ex = make_experiment(tmp_path, f"data.competition={COMPETITION}", f"predict.submissions_dir={tmp_path / 'subs'}")
    argv_log = install_stand_in(tmp_path, monkeypatch)
    rows = _valid(pd.read_csv(ex["root"] / "sample_submission.csv", dtype=str)["id"].tolist(), "label")
    file = _write(tmp_path / "my sub.csv", rows)
    message = "resnet18 5 folds, TTA 'hflip'"
    code, err = submit_in_process(monkeypatch, capsys, str(file), "-m", message, *ex["overrides"])
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

    code, err = submit_in_process(monkeypatch, capsys, str(file), "-m", "again", *ex["overrides"])
    assert code == 0, err
    index = pd.read_csv(subs / "index.csv", dtype=str)
    assert list(index["message"]) == [message, "again"] and len(list(subs.glob("*.csv"))) == 3  # 2 copies + index


def test_a_failing_cli_is_one_error_line_and_nothing_is_recorded(comp_setup, tmp_path, monkeypatch, capsys):
    argv_log = install_stand_in(tmp_path, monkeypatch, code=1, answer="400 Client Error: Bad Request for url")
    file = _write(tmp_path / "ok.csv", _valid(comp_setup["ids"], "label"))
    code, err = submit_in_process(monkeypatch, capsys, str(file), "-m", "x", *comp_setup["label"])
    line = _one_error(code, err)
    assert "kaggle competitions submit tiny-comp" in line and "failed:" in line and "400 Client Error" in line
    assert argv_log.exists() and not comp_setup["subs"].exists()
    assert "S3CRET-KEY-123" not in err


def test_missing_credentials_pass_on_the_real_cli_instructions(comp_setup, tmp_path, monkeypatch, capsys):
    real = Path(sys.executable).parent / "kaggle"
    if not real.is_file():
        pytest.skip("the kaggle CLI is not installed beside the interpreter")
    for var in [v for v in os.environ if v.startswith("KAGGLE_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "home" / ".kaggle"))
    monkeypatch.setenv("PATH", f"{real.parent}{os.pathsep}{os.environ['PATH']}")
    file = _write(tmp_path / "ok.csv", _valid(comp_setup["ids"], "label"))
    code, err = submit_in_process(monkeypatch, capsys, str(file), "-m", "x", *comp_setup["label"])
    line = _one_error(code, err)
    assert "failed:" in line and ("kaggle auth login" in line or "kaggle.json" in line), line
    assert not comp_setup["subs"].exists()


def test_the_demo_competition_is_scored_locally_not_submitted(comp_setup, tmp_path, monkeypatch, capsys):
    argv_log = install_stand_in(tmp_path, monkeypatch)
    file = _write(tmp_path / "ok.csv", _valid(comp_setup["ids"], "label"))
    code, err = submit_in_process(monkeypatch, capsys, str(file), "-m", "demo", *comp_setup["label"],
                                  "data.source=demo")
    assert code == 0, err
    assert f"kaggle competitions submit {COMPETITION} -f {file} -m demo" in err
    assert "local score against the held-out answers: accuracy" in err
    assert not argv_log.exists() and not comp_setup["subs"].exists()

    code, err = submit_in_process(monkeypatch, capsys, str(file), "--dry-run", "-m", "dry", *comp_setup["label"])
    assert code == 0 and "--dry-run" in err and not argv_log.exists()
    # a dry run never shows a command Kaggle would refuse: a code competition's CSV, an empty competition
    code, err = submit_in_process(monkeypatch, capsys, str(file), "--dry-run", "-m", "dry", *comp_setup["label"],
                                  "data.code_competition=true")
    assert code == 0 and "code competition" in err and "--notebook" in err and "would be" not in err
    code, err = submit_in_process(monkeypatch, capsys, str(file), "--dry-run", "-m", "dry", *comp_setup["label"],
                                  'data.competition=""')
    assert code == 0 and "data.competition is empty" in err and "would be" not in err


def test_submit_script_as_a_subprocess(comp_setup, tmp_path):
    file = _write(tmp_path / "bad.csv", _valid(comp_setup["ids"], "label")[:-1])
    res = run_script("submit.py", str(file), "-m", "x", *comp_setup["label"])
    assert_user_error(res, "lacks 1 test id")
    res = run_script("submit.py", str(file), *comp_setup["label"])
    assert res.returncode == 2 and "-m/--message" in res.stderr  # argparse: the message is required
    assert not comp_setup["subs"].exists()


def test_an_empty_message_or_competition_is_refused(comp_setup, tmp_path, monkeypatch, capsys):
    argv_log = install_stand_in(tmp_path, monkeypatch)
    file = _write(tmp_path / "ok.csv", _valid(comp_setup["ids"], "label"))
    code, err = submit_in_process(monkeypatch, capsys, str(file), "-m", " ", *comp_setup["label"])
    assert "-m MESSAGE is empty" in _one_error(code, err)
    code, err = submit_in_process(monkeypatch, capsys, str(file), "-m", "x", *comp_setup["label"],
                                  "data.competition=''")
    assert "data.competition is empty" in _one_error(code, err)
    assert not argv_log.exists() and not comp_setup["subs"].exists()
    assert load_config(None, comp_setup["label"]).data.competition == COMPETITION


def test_an_older_cli_without_a_ref_is_looked_up_and_a_silent_failure_is_caught(comp_setup, tmp_path, monkeypatch,
                                                                                   capsys):
    file = _write(tmp_path / "ok.csv", _valid(comp_setup["ids"], "label"))
    install_stand_in(tmp_path, monkeypatch, answer=f"Successfully submitted to {COMPETITION}")  # no ref printed
    code, err = submit_in_process(monkeypatch, capsys, str(file), "-m", "ok", *comp_setup["label"])
    assert code == 0, err
    row = pd.read_csv(comp_setup["subs"] / "index.csv", dtype=str).iloc[-1]
    assert row["kaggle_ref"] == "123" and row["status"] == "COMPLETE"  # found by its description

    install_stand_in(tmp_path, monkeypatch, answer="Could not submit to competition")  # older CLIs: exit 0
    code, err = submit_in_process(monkeypatch, capsys, str(file), "-m", "other", *comp_setup["label"])
    assert "failed: Could not submit to competition" in _one_error(code, err)
    assert len(pd.read_csv(comp_setup["subs"] / "index.csv")) == 1  # not recorded
    assert len(list(comp_setup["subs"].glob("*.csv"))) == 2  # index + the first copy only


def test_the_leaderboard_plots_cv_against_public_score_of_every_recorded_submission(tmp_path, monkeypatch, capsys):
    from comp.report.leaderboard import leaderboard
    from comp.submit.kaggle import INDEX_COLUMNS, append_index

    subs = tmp_path / "subs"
    subs.mkdir()
    old = INDEX_COLUMNS[:INDEX_COLUMNS.index("kaggle_answer") + 1]
    (subs / "index.csv").write_text(",".join(old) + "\nt0,a.csv,tiny-comp,c,h,g,accuracy,0.61,old kit,ok\n")
    for ref, cv, status, public, comp in [("1", "0.70", "COMPLETE", "0.68", "tiny-comp"),
                                          ("2", "0.75", "ERROR", "", "tiny-comp"),
                                          ("3", "0.80", "COMPLETE", "0.74", "tiny-comp"),
                                          ("4", "0.90", "COMPLETE", "0.10", "other-comp")]:
        append_index(subs / "index.csv", {"time": f"t{ref}", "competition": comp, "cv_metric": "accuracy",
                                          "cv_score": cv, "message": f"run {ref}", "kaggle_ref": ref,
                                          "status": status, "public_score": public})
    cfg = load_config(None, ["data.competition=tiny-comp", f"predict.submissions_dir={subs}"])
    table = leaderboard(cfg, tmp_path / "lb.png")
    assert list(table["kaggle_ref"]) == ["", "1", "2", "3"] and list(table["public_score"]) == ["", "0.68", "", "0.74"]
    assert (tmp_path / "lb.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    monkeypatch.setattr(sys, "argv", [str(ROOT / "scripts" / "report.py"), "--leaderboard", "-o",
                                      str(tmp_path / "lb2.png"), "data.competition=nowhere",
                                      f"predict.submissions_dir={subs}"])
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "scripts" / "report.py"), run_name="__main__")
    assert "no submission to 'nowhere' recorded" in _one_error(e.value.code, capsys.readouterr().err)
