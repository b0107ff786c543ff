"""The leaderboard (comp.report.leaderboard, scripts/report.py --leaderboard): the CV score against the public
score of every submission recorded for the competition, an older kit's index rows included."""

from __future__ import annotations

from helpers import one_error, run_main

from comp.experiment import load_config
from comp.report.leaderboard import leaderboard
from comp.submit.kaggle import INDEX_COLUMNS, append_index


def test_the_leaderboard_plots_cv_against_public_score_of_every_recorded_submission(tmp_path):
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

    code, _, err = run_main("report.py", "--leaderboard", "-o", str(tmp_path / "lb2.png"), "data.competition=nowhere",
                            f"predict.submissions_dir={subs}")
    assert "no submission to 'nowhere' recorded" in one_error(code, err)
