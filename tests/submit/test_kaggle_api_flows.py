"""The kit's Kaggle flows with the real `kaggle` CLI (kaggle 2.x) against a fake of Kaggle's API on loopback
(tests/fake_kaggle.py): prepare's download and submit.py's CSV flow (comp.submit.kaggle: success with its
score recorded, a submission Kaggle fails to score, 403 unaccepted rules, 429 the daily limit, 400 a CSV to
a code competition). The kit's scripts run in-process; the CLI is a process, as the kit calls it. One
module, one server: every test shares it. The notebook flow: test_notebook.py."""

from __future__ import annotations

from pathlib import Path

import kaggle_env
import pandas as pd
import pytest
from fake_kaggle import Competition
from helpers import one_error, run_main, write_tiny_competition
from kaggle_env import CLI

from comp.data.download import ensure_data
from comp.errors import UserError
from comp.experiment import load_config
from comp.submit.kaggle import INDEX_COLUMNS

pytestmark = pytest.mark.skipif(not CLI.is_file(), reason="the kaggle CLI is not installed beside the interpreter")
fake, api, clock = kaggle_env.fake, kaggle_env.api, kaggle_env.clock  # the fake API, the real CLI at it, no sleeps


def _zip_of(folder: Path) -> dict[str, bytes]:
    return {f.relative_to(folder).as_posix(): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def test_prepare_downloads_through_the_real_cli_and_403_leaves_nothing(fake, api, tmp_path):
    fake.competitions["tiny-dl"] = Competition(files=_zip_of(write_tiny_competition(tmp_path / "src")))
    root = tmp_path / "data" / "tiny"
    code, _, err = run_main("prepare.py", "--download", f"data.root={root}", "data.source=competition",
                            "data.competition=tiny-dl", "data.image_ext=.png", "image_size=16",
                            f"out_dir={tmp_path / 'runs'}")
    assert code == 0, err
    assert (root / "train.csv").read_bytes() == (tmp_path / "src" / "train.csv").read_bytes()
    assert len(list((root / "test").iterdir())) == 9 and (tmp_path / "runs" / "folds.csv").is_file()
    paths = [p for m, p, _ in fake.requests]  # the size listed first (`kaggle competitions files`), then the data
    assert paths[:3] == ["/api/v1/competitions.CompetitionApiService/ListDataFiles",
                         "/api/v1/competitions.CompetitionApiService/DownloadDataFiles", "/files/tiny-dl.zip"]

    fake.competitions["tiny-rules"] = Competition(files={"a.csv": b"x"}, rules_accepted=False)
    cfg = load_config(None, [f"data.root={tmp_path / 'data' / 'r'}", "data.competition=tiny-rules",
                             "data.source=competition"])
    with pytest.raises(UserError, match="kaggle competitions download -c tiny-rules .* failed: .*accept this "
                                        "competition's rules"):
        ensure_data(cfg, download=True)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["cache", "tiny"]  # nothing half-made


@pytest.fixture
def csv_setup(tmp_path):
    root = write_tiny_competition(tmp_path / "data")
    ids = pd.read_csv(root / "sample_submission.csv", dtype=str)["id"]
    file = tmp_path / "sub.csv"
    pd.DataFrame({"id": ids, "label": [k % 3 for k in range(len(ids))]}).to_csv(file, index=False)
    subs = tmp_path / "subs"
    return {"file": file, "subs": subs, "overrides": [f"data.root={root}", "data.source=competition",
                                                      f"predict.submissions_dir={subs}", f"out_dir={tmp_path / 'r'}"]}


def test_a_csv_submission_is_scored_and_recorded_under_an_old_index(fake, api, csv_setup):
    fake.competitions["tiny-csv"] = Competition(outcome=("COMPLETE", "0.777", ""), polls=1)
    subs = csv_setup["subs"]
    subs.mkdir()
    old = INDEX_COLUMNS[:INDEX_COLUMNS.index("kaggle_answer") + 1]  # the index an older kit wrote
    (subs / "index.csv").write_text(",".join(old) + "\n" + ",".join(["2026-01-01T00:00:00+00:00", "a.csv", "tiny-csv",
                                                                      "c.yaml", "h", "g", "qwk", "0.5", "first",
                                                                      "Successfully submitted"]) + "\n")
    code, _, err = run_main("submit.py", str(csv_setup["file"]), "-m", "resnet18", "--poll", "0.05",
                            *csv_setup["overrides"], "data.competition=tiny-csv")
    assert code == 0, err
    index = pd.read_csv(subs / "index.csv", dtype=str, keep_default_na=False)
    assert list(index.columns) == INDEX_COLUMNS and len(index) == 2
    assert index.iloc[0]["message"] == "first" and index.iloc[0]["status"] == ""  # the old row, whole
    row = index.iloc[1]
    assert row["kaggle_ref"] == str(fake.submissions[-1]["ref"]) and row["status"] == "COMPLETE"
    assert row["public_score"] == "0.777" and row["error"] == "" and row["message"] == "resnet18"
    assert fake.submissions[-1]["content"] == csv_setup["file"].read_bytes()
    assert len(fake.calls("ListSubmissions")) >= 2  # PENDING first, then COMPLETE


@pytest.mark.parametrize("case", ["scoring error", "rules", "daily limit", "code competition on Kaggle"])
def test_a_failed_submission_is_one_error_line(case, fake, api, csv_setup):
    slug = "tiny-" + case.replace(" ", "-")
    fake.competitions[slug] = {
        "scoring error": Competition(outcome=("ERROR", "", "Submission has 3 rows, expected 9")),
        "rules": Competition(rules_accepted=False), "daily limit": Competition(left_today=0),
        "code competition on Kaggle": Competition(code=True)}[case]
    code, _, err = run_main("submit.py", str(csv_setup["file"]), "-m", "x", "--poll", "0.05",
                            *csv_setup["overrides"], f"data.competition={slug}")
    line = one_error(code, err)
    index = csv_setup["subs"] / "index.csv"
    if case == "scoring error":  # made, so recorded, and reported
        assert "failed to score: Submission has 3 rows, expected 9" in line
        row = pd.read_csv(index, dtype=str, keep_default_na=False).iloc[-1]
        assert row["status"] == "ERROR" and row["error"] == "Submission has 3 rows, expected 9"
        return
    assert f"kaggle competitions submit {slug}" in line
    assert {"rules": "accept this competition's rules before submitting",
            "daily limit": "daily Submission allowance",
            "code competition on Kaggle": "only accepts submissions from notebooks"}[case] in line
    assert not index.exists() and not list(csv_setup["subs"].glob("*.csv"))  # nothing recorded or kept


def test_a_csv_to_a_code_competition_is_refused_before_sending(fake, api, csv_setup):
    code, _, err = run_main("submit.py", str(csv_setup["file"]), "-m", "x", *csv_setup["overrides"],
                            "data.competition=tiny-code", "data.code_competition=true")
    line = one_error(code, err)
    assert "is a code competition" in line and "scripts/submit.py --notebook -m x" in line
    assert fake.requests == []


def test_the_score_is_awaited_through_404_429_and_5xx(fake, api, clock, csv_setup):
    fake.competitions["tiny-busy"] = Competition(outcome=("ERROR", "", "Submission has 3 rows, expected 9"))
    fake.new_invisible = 1  # the new submission is missing from the list once, and answers 404 once
    fake.fail("ListSubmissions", 503, 429, 500)
    fake.fail("GetSubmission", 503)
    code, _, err = run_main("submit.py", str(csv_setup["file"]), "-m", "busy", "--poll", "1",
                            *csv_setup["overrides"], "data.competition=tiny-busy")
    assert "failed to score: Submission has 3 rows, expected 9" in one_error(code, err)
    row = pd.read_csv(csv_setup["subs"] / "index.csv", dtype=str, keep_default_na=False).iloc[-1]
    assert (row["status"], row["error"]) == ("ERROR", "Submission has 3 rows, expected 9")
    # the list: 503, 429, 500 (waits doubling), not listed, PENDING, ERROR; then Kaggle's message: 503, ERROR
    assert clock.sleeps == [2, 4, 8, 1, 1, 2]


@pytest.mark.parametrize("code", [403, 400])
def test_a_refused_status_read_ends_the_wait_at_once_and_the_submission_is_recorded(code, fake, api, clock,
                                                                                   csv_setup):
    fake.competitions["tiny-refused"] = Competition()
    fake.fail("ListSubmissions", code)
    code_, _, err = run_main("submit.py", str(csv_setup["file"]), "-m", "x", "--poll", "1",
                             *csv_setup["overrides"], "data.competition=tiny-refused")
    assert code_ == 0, err
    row = pd.read_csv(csv_setup["subs"] / "index.csv", dtype=str, keep_default_na=False).iloc[-1]
    assert row["status"] == "PENDING" and row["kaggle_ref"] == str(fake.submissions[-1]["ref"])
    assert row["error"].startswith("status not read: kaggle competitions submissions -c tiny-refused --csv failed")
    assert clock.sleeps == []


def test_a_submission_an_older_cli_named_no_ref_for_is_looked_for_until_it_is_listed(fake, api, clock):
    from comp.submit.kaggle import find_ref

    fake.competitions["tiny-ref"] = Competition()
    fake.submissions.append({"ref": 50_000_999, "competition": "tiny-ref", "status": "PENDING", "reads": 0,
                             "hidden": 2, "description": "old cli", "fileName": "s.csv", "date": "2026-11-29"})
    fake.fail("ListSubmissions", 429)
    assert find_ref("tiny-ref", "old cli", wait_s=60, poll_s=1) == 50_000_999
    assert clock.sleeps == [2, 1, 1]
    assert find_ref("tiny-ref", "never made", wait_s=3, poll_s=1) is None and clock.now == 4 + 3
