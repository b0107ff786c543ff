"""task=multihead end to end, one image per row, as a user runs it: replicas of RSNA 2023 Abdominal Trauma's
train.csv (13 one-hot columns, five targets) with the shipped configs/rsna2023_abdominal_trauma.yaml and a wide
submission, and of RSNA 2024 Lumbar Spine's (a column per condition x level holding Normal/Mild, Moderate,
Severe, some blank) with its long submission `<study_id>_<condition>_<level>` x normal_mild, moderate,
severe: prepare.py -> train_fold.py -> predict.py (RSNA 2023: both folds x two TTA views averaged, each head
still a distribution), the CSV on stdout validated against the sample and scored by the competition's metric
(comp.study_metrics) against held-out answers."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from helpers import FAST, ROOT, run_main

from comp import study_metrics as sm

TRAUMA = {t: classes for t, (classes, _) in sm.TRAUMA_TARGETS.items()}
LEVELS = ["l1_l2", "l4_l5"]
CONDITIONS = ["spinal_canal_stenosis", "left_neural_foraminal_narrowing", "right_subarticular_stenosis"]
SEVERITY = ["Normal/Mild", "Moderate", "Severe"]  # train.csv's spelling; the submission's: normal_mild, ...


def _image(path: Path, level: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((20, 20, 3), 40 + 60 * level, np.uint8))


def write_trauma(root: Path, n: int = 16, n_test: int = 4) -> None:
    """RSNA 2023's train.csv columns (patient_id, the 13 one-hot columns, any_injury), one PNG per patient in
    train_images/ and test_images/, sample_submission.csv, and solution.csv (the test patients' answers)."""
    rows = []
    for k in range(n + n_test):
        level = k % 3
        row = {"patient_id": 10000 + k}
        for j, (t, classes) in enumerate(TRAUMA.items()):
            hit = min(level, len(classes) - 1) if (k + j) % 2 == 0 else 0
            row.update({f"{t}_{c}": int(j == hit) for j, c in enumerate(classes)})
        row["any_injury"] = int(level > 0)
        rows.append(row)
        _image(root / ("train_images" if k < n else "test_images") / f"{row['patient_id']}.png", level)
    table = pd.DataFrame(rows)
    table.iloc[:n].to_csv(root / "train.csv", index=False)
    table.iloc[n:].drop(columns="any_injury").to_csv(root / "solution.csv", index=False)
    cols = [f"{t}_{c}" for t, classes in TRAUMA.items() for c in classes]
    table.iloc[n:][["patient_id"]].assign(**{c: 1.0 / 3 for c in cols}).to_csv(root / "sample_submission.csv",
                                                                                 index=False)


def write_lumbar(root: Path, n: int = 16, n_test: int = 3) -> list[str]:
    """RSNA 2024's train.csv layout (study_id, one column per condition x level holding its severity, a few
    blank), one PNG per study, the long sample_submission.csv (row_id, normal_mild, moderate, severe), the
    test studies' answers as train.csv holds them (solution.csv) and in the host's long form. Returns the
    targets."""
    targets = [f"{c}_{lv}" for c in CONDITIONS for lv in LEVELS]
    rows, solution = [], []
    for k in range(n + n_test):
        level = k % 3
        row = {"study_id": 4000000 + k}
        for j, t in enumerate(targets):
            row[t] = "" if (k + j) % 11 == 0 else SEVERITY[(level + (j % 2)) % 3]
        rows.append(row)
        _image(root / ("train_images" if k < n else "test_images") / f"{row['study_id']}.png", level)
        if k >= n:
            for t in targets:
                sev = SEVERITY.index(row[t]) if row[t] else 0
                solution.append({"row_id": f"{row['study_id']}_{t}",
                                 **{c: int(i == sev) for i, c in enumerate(sm.LUMBAR_LEVELS)}})
    pd.DataFrame(rows[:n]).to_csv(root / "train.csv", index=False)
    pd.DataFrame(rows[n:]).to_csv(root / "solution.csv", index=False)  # the test studies' answers, train.csv's form
    sol = pd.DataFrame(solution)
    sol.to_csv(root / "solution_long.csv", index=False)
    sol.assign(normal_mild=1 / 3, moderate=1 / 3, severe=1 / 3).to_csv(root / "sample_submission.csv", index=False)
    return targets


def _run(config: list[str], ov: list[str], folds: tuple[int, ...] = (0,)) -> tuple[str, str]:
    """prepare.py, train_fold.py --fold K for each of `folds`, predict.py; the CSV predict.py writes to stdout,
    and its stderr."""
    steps = [("prepare.py", []), *(("train_fold.py", ["--fold", str(k)]) for k in folds), ("predict.py", [])]
    for script, extra in steps:
        code, out, err = run_main(script, *config, *extra, *ov)
        assert code == 0, f"{script} exited {code}:\n{err[-3000:]}"
    return out, err


def test_rsna2023_trauma_replica_prepare_fold_predict_wide(tmp_path):
    root = tmp_path / "data"
    write_trauma(root)
    ov = [*FAST, "batch_size=4", f"data.root={root}", f"out_dir={tmp_path / 'runs'}", "aug.tta=[identity,vflip]",
          f"images.cache_dir={tmp_path / 'cache'}", "train.mixup=0.4", "data.solution_csv=solution.csv",
          "mil.source=none", "data.image_ext=.png"]  # the heads on one PNG per patient
    out, err = _run(["--config", str(ROOT / "configs" / "rsna2023_abdominal_trauma.yaml")], ov, folds=(0, 1))
    assert "ensemble: 2 of 2 folds" in err and "x 2 TTA view(s)" in err, err[-2000:]  # averaged per head
    sub = pd.read_csv(io.StringIO(out))
    sample = pd.read_csv(root / "sample_submission.csv")
    assert list(sub.columns) == list(sample.columns) and list(sub["patient_id"]) == list(sample["patient_id"])
    for t, classes in TRAUMA.items():  # one distribution per target
        assert np.allclose(sub[[f"{t}_{c}" for c in classes]].sum(axis=1), 1, atol=1e-4)
    oof = pd.read_csv(tmp_path / "runs" / "fold0" / "oof.csv")
    assert "prob_spleen_high" in oof.columns and "target_spleen_high" in oof.columns
    score = sm.abdominal_trauma_score(pd.read_csv(root / "solution.csv"), sub)
    assert np.isfinite(score) and score > 0
    assert f"held-out rsna2023_trauma: {score:.4f}" in err  # the kit's hold-out score is the host's formula
    history = pd.read_csv(tmp_path / "runs" / "fold0" / "metrics.csv")
    assert {"rsna2023_trauma", "log_loss"} <= set(history.columns)
    config = ["--config", str(ROOT / "configs" / "rsna2023_abdominal_trauma.yaml")]
    code, out, err = run_main("report.py", *config, *ov)  # the CV table and a confusion matrix per head
    assert code == 0 and "task=multihead: heads" in out and "(lower is better)" in out, err[-2000:]
    for t in TRAUMA:
        assert (tmp_path / "runs" / f"oof_confusion_{t}.png").is_file()
    code, _, err = run_main("explain.py", *config, *ov)  # not built per head: one line
    assert code == 2 and "task=multihead" in err.strip().splitlines()[-1]


def test_rsna2024_lumbar_replica_long_submission(tmp_path):
    root = tmp_path / "data"
    targets = write_lumbar(root)
    heads = "{" + ", ".join(f"{t}: [normal_mild, moderate, severe]" for t in targets) + "}"
    ov = [*FAST, "batch_size=4", f"data.root={root}", f"out_dir={tmp_path / 'runs'}", "predict.folds=[0]",
          f"images.cache_dir={tmp_path / 'cache'}", "task=multihead", f"data.heads={heads}",
          "data.id_column=study_id", "data.train_images=[train_images]", "data.test_images=[test_images]",
          "predict.shape=long", "metric=rsna2024_lumbar", "aug.tta=[identity]"]
    out, err = _run([], ov)
    sub = pd.read_csv(io.StringIO(out))
    sample = pd.read_csv(root / "sample_submission.csv")
    assert list(sub.columns) == ["row_id", *sm.LUMBAR_LEVELS] and list(sub["row_id"]) == list(sample["row_id"])
    assert np.allclose(sub[list(sm.LUMBAR_LEVELS)].sum(axis=1), 1, atol=1e-4)
    assert np.isfinite(sm.lumbar_spine_score(pd.read_csv(root / "solution_long.csv"), sub))
    # scored against the answers in train.csv's form, to the host's value over the labelled levels (the kit
    # leaves a blank level out, as the hosts' solution has no row for it)
    answers = pd.read_csv(root / "solution.csv", dtype=str, keep_default_na=False)
    blank = {f"{r['study_id']}_{t}" for _, r in answers.iterrows() for t in targets if not r[t]}
    labelled = pd.read_csv(root / "solution_long.csv")
    labelled = labelled[~labelled["row_id"].isin(blank)]
    host = sm.lumbar_spine_score(labelled, sub[sub["row_id"].isin(labelled["row_id"])])
    assert f"held-out rsna2024_lumbar: {host:.4f}" in err, err[-2000:]
    code, _, err = run_main("train_fold.py", "--fold", "1", *ov, "train.sampler=weighted")  # no one class a row
    assert code == 2 and "train.sampler" in err.strip().splitlines()[-1]
    assert np.isfinite(pd.read_csv(tmp_path / "runs" / "fold0" / "metrics.csv")["rsna2024_lumbar"]).all()
