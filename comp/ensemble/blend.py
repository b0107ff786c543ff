"""Blending experiments (scripts/blend.py): several experiments' OOF and test predictions → one blended
experiment with an honest CV, its OOF files and a validated submission.

Members must share the folds (`<out_dir>/folds.csv`: the same ids in the same folds), the task and the
targets, and every fold must have its oof.csv. Each candidate method (comp.ensemble.methods) is scored on the
OOF rows twice: honestly (fitted on K-1 folds, scored on the held-out fold) and in-sample. The chosen one
(`--method`, else the best honest CV) is written as an experiment of its own in the output folder:
`fold<K>/oof.csv` (its honest, cross-fitted OOF, so `report.py` and a later blend score it out of fold),
`folds.csv` (copied), `config.yaml` (the first member's, `out_dir` pointed here), `test_probs.csv` (the
blended test outputs, refitted on every OOF row; a later blend reads it instead of predicting), `blend.json`
(members, table, weights, decoding) and `submission.csv`, built and validated by comp.predict.submission.
With metric=qwk the grades are decoded with cut-points refitted on the blend's OOF
(comp.predict.thresholds.choose), with f1/pf1 (task=binary) by a decision threshold refitted on it
(comp.predict.cutoff.choose), each kept when its honest gain is positive, as for a single experiment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from comp import io
from comp.config import resolve_path
from comp.data.competition import Competition, load_competition
from comp.ensemble import methods as bl
from comp.errors import UserError
from comp.experiment import Experiment, load_config
from comp.experiment.oof import aggregate, oof_probs, oof_targets, oof_task, prob_columns, write_oof
from comp.metrics import higher_is_better, score
from comp.predict import cutoff, thresholds
from comp.predict.predict import predict_test, save_probs
from comp.predict.submission import decoded_submission, score_holdout, to_csv_text
from comp.tasks import Task


@dataclass
class Member:
    name: str  # its out_dir's folder name
    exp: Experiment
    oof: pd.DataFrame  # every fold's OOF rows, sorted by id
    task: Task

    @property
    def cfg(self) -> Any:
        return self.exp.cfg

    @property
    def out_dir(self) -> Path:
        return self.exp.dir


def load_member(cfg: Any) -> Member:
    """One experiment: its config and every fold's OOF (UserError when a fold has none)."""
    exp = Experiment(cfg)
    oof = exp.oof()
    folds = sorted(oof["fold"].unique())
    if len(folds) != cfg.folds.n_folds:
        missing = sorted(set(range(cfg.folds.n_folds)) - set(folds))
        raise UserError(f"{exp.dir}: fold(s) {missing} have no out-of-fold predictions; train every fold before "
                        f"blending")
    return Member(exp.dir.name, exp, oof.sort_values("id", kind="stable").reset_index(drop=True),
                  oof_task(cfg, oof))


def load_members(configs: list[str], overrides: list[str]) -> list[Member]:
    """The experiments of the config files (KEY=VALUE overrides applied to each), checked to blend."""
    if len(configs) < 2:
        raise UserError(f"blending needs at least two experiments' configs; got {configs!r}")
    members = [load_member(load_config(c, overrides)) for c in configs]
    seen: dict[Path, str] = {}
    for c, m in zip(configs, members, strict=True):
        if m.out_dir.resolve() in seen:  # one experiment's OOF twice: a "blend" that only reweights it
            raise UserError(f"{seen[m.out_dir.resolve()]!r} and {c!r} name the same experiment ({m.out_dir}); "
                            f"blend different experiments (another out_dir each)")
        seen[m.out_dir.resolve()] = c
    check_compatible(members)
    return members


def _folds_frame(m: Member) -> pd.DataFrame:
    path = m.exp.split.csv
    if not path.is_file():
        raise UserError(f"{m.out_dir} has no {path.name}; it was not trained with this kit (scripts/prepare.py)")
    return pd.read_csv(path, dtype={"id": str}, usecols=["id", "fold"]).sort_values("id").reset_index(drop=True)


def check_compatible(members: list[Member]) -> None:
    """Refuse members that cannot be blended: other folds (ids or assignment in folds.csv), another task,
    other output columns, other OOF rows or other targets; each message names both out_dirs."""
    a = members[0]
    fa = _folds_frame(a)
    for b in members[1:]:
        both = f"{a.out_dir} and {b.out_dir}"
        fb = _folds_frame(b)
        if not (fa["id"].equals(fb["id"]) and fa["fold"].equals(fb["fold"])):
            n = len(set(fa["id"]) ^ set(fb["id"]))
            why = f"{n} id(s) differ" if n else f"{int((fa['fold'] != fb['fold']).sum())} id(s) in another fold"
            raise UserError(f"{both} were trained on different folds (folds.csv: {why}); blend experiments of one "
                            f"split (folds.seed, folds.n_folds and the data alike)")
        if (a.task.kind, a.task.head, a.task.names) != (b.task.kind, b.task.head, b.task.names):
            raise UserError(f"{both} predict different tasks ({a.task.kind}/{a.task.head} {a.task.names} vs "
                            f"{b.task.kind}/{b.task.head} {b.task.names})")
        if a.cfg.metric != b.cfg.metric:
            raise UserError(f"{both} are scored by different metrics ({a.cfg.metric!r} vs {b.cfg.metric!r})")
        if prob_columns(a.oof) != prob_columns(b.oof) or not a.oof[["id", "fold"]].equals(b.oof[["id", "fold"]]):
            raise UserError(f"{both} have different OOF rows or output columns; retrain on the same folds")
        if not np.allclose(oof_targets(a.oof).astype(np.float64), oof_targets(b.oof).astype(np.float64)):
            raise UserError(f"{both} have different targets in their OOF files; blend experiments of one data set")


@dataclass
class Result:
    table: pd.DataFrame  # one row per member and per method: name, kind, cv_honest, cv_in_sample, weights
    method: str  # the chosen method
    oof: np.ndarray  # (N, K) its honest OOF outputs
    decoding: dict[str, Any] | None  # qwk cut-points or a binary f1/pf1 threshold refitted on its OOF
    weights: list[float]  # the `weighted` method's weights fitted on every OOF row
    corr: np.ndarray  # (M, M) members' OOF correlation


def scorer(m: Member) -> Callable[[np.ndarray], float]:
    """The competition metric of OOF outputs (N, K) in the member's row order, at the submission's level."""
    cfg, task, y = m.cfg, m.task, oof_targets(m.oof)
    rows = m.oof["row"].to_numpy() if "row" in m.oof.columns else None

    def f(out: np.ndarray) -> float:
        yy, oo = (y, out) if rows is None else aggregate(rows, y, out, cfg.predict.aggregate, task.positive)[1:]
        return score(cfg.metric, yy, oo, task=task, min_tpr=cfg.pauc_min_tpr)

    return f


def uses_cuts(m: Member) -> bool:
    return m.cfg.metric == "qwk" and m.cfg.predict.thresholds and m.task.kind in ("ordinal", "multiclass")


def uses_cutoff(m: Member) -> bool:
    return m.cfg.metric in ("f1", "pf1") and m.cfg.predict.thresholds and m.task.kind == "binary"


def _cutoff(m: Member, y: np.ndarray, out: np.ndarray, folds: np.ndarray) -> dict[str, Any]:
    """comp.predict.cutoff.choose on the positive class's OOF probability, in thresholds.json's form."""
    truth = (np.asarray(y) == m.task.positive).astype(np.int64)
    return {**cutoff.choose(m.cfg.metric, truth, out[:, m.task.positive], folds), "num_classes": 2,
            "positive": m.task.positive}


def evaluate(members: list[Member], method: str = "auto") -> Result:
    """Every member's CV and every applicable method's honest and in-sample CV; the chosen method's OOF."""
    m0 = members[0]
    task, cfg, y, folds = m0.task, m0.cfg, oof_targets(m0.oof), m0.oof["fold"].to_numpy()
    outs = [oof_probs(m.oof).astype(np.float64) for m in members]
    f = scorer(m0)
    rows = [{"name": m.name, "kind": "member", "cv_honest": f(o), "cv_in_sample": f(o), "weights": ""}
            for m, o in zip(members, outs, strict=True)]
    if method != "auto" and (why := bl.applicable(method, task, cfg.metric)):
        raise UserError(f"--method {method}: {why}")
    candidates = [k for k in bl.METHODS if bl.applicable(k, task, cfg.metric) is None]
    w = bl.weights(outs, y, task)
    honest, decodings = {}, {}
    for k in candidates if method == "auto" else [method]:
        honest[k] = bl.honest(k, outs, y, folds, task)
        fitted = bl.in_sample(k, outs, y, task)
        cv_h, cv_i = f(honest[k]), f(fitted)
        if uses_cuts(m0):  # grades cut at points refitted on the blend's OOF (honest: cross-fitted)
            c = len(task.names)
            t = decodings[k] = thresholds.choose(y, honest[k], folds, c)
            cv_h = t["kappa_honest"] if t["method"] == "cuts" else t["kappa_argmax"]
            cv_i = thresholds.choose(y, fitted, folds, c)["kappa"]
        elif uses_cutoff(m0):  # a binary decision threshold refitted on the blend's OOF (comp.predict.cutoff)
            t, truth = _cutoff(m0, y, honest[k], folds), np.asarray(y) == task.positive
            decodings[k] = t
            cv_h = t["score_honest"] if t["method"] == "cutoff" else t["score_baseline"]
            cv_i = cutoff.choose(cfg.metric, truth, fitted[:, task.positive], folds)["score_tuned"]
        rows.append({"name": f"blend:{k}", "kind": "blend", "cv_honest": cv_h, "cv_in_sample": cv_i,
                     "weights": " ".join(f"{v:.3f}" for v in w) if k == "weighted" else ""})
    table = pd.DataFrame(rows)
    if method == "auto":
        blends = table[table["kind"] == "blend"].dropna(subset=["cv_honest"])
        best = blends["cv_honest"].idxmax() if higher_is_better(cfg.metric) else blends["cv_honest"].idxmin()
        method = table.loc[best, "name"].split(":", 1)[1]
    return Result(table, method, honest[method], decodings.get(method), [float(v) for v in w],
                  bl.correlation(outs, task))


def read_test_probs(path: Path, comp: Competition, task: Task) -> np.ndarray:
    """(N_test, K) outputs saved by `predict.py --save-probs` or a blend (id + output columns, or a bare
    .npy in the test order), in `comp.test` order."""
    if not path.is_file():
        raise UserError(f"test probabilities file not found: {path}")
    if path.suffix == ".npy":
        arr = np.load(path)
        if arr.shape != (len(comp.test), task.num_outputs):
            raise UserError(f"{path} holds an array of shape {arr.shape}; the test set needs "
                            f"{(len(comp.test), task.num_outputs)}")
        return arr.astype(np.float64)
    df = pd.read_csv(path, dtype={"id": str})
    cols = task.output_columns()
    if "id" not in df.columns or list(prob_columns(df)) != cols:
        raise UserError(f"{path} has columns {list(df.columns)}; expected id and {cols}")
    df = df.set_index("id").reindex(comp.test["id"].astype(str))
    if df.isna().any().any():
        raise UserError(f"{path} lacks test id(s), e.g. {df.index[df.isna().any(axis=1)][0]!r}")
    return df[cols].to_numpy(np.float64)


def test_outputs(members: list[Member], probs_files: list[str]) -> tuple[list[np.ndarray], Competition]:
    """Each member's (N_test, K) test outputs in the first member's `comp.test` order: from its probabilities
    file (`probs_files`, in member order, '' for none; a blend's own test_probs.csv is found by itself), else
    predicted by its folds × TTA (comp.predict.predict_test)."""
    if probs_files and len(probs_files) != len(members):
        raise UserError(f"--test-probs given {len(probs_files)} time(s) for {len(members)} experiments; give one "
                        f"per experiment, in the same order ('' to predict that one)")
    comp = load_competition(members[0].cfg)
    outs = []
    for i, m in enumerate(members):
        own = m.exp.own_outputs()  # a blend's or a stack's own test outputs (it has no checkpoints to predict with)
        given = probs_files[i] if probs_files else ""
        if given or own:
            outs.append(read_test_probs(Path(given) if given else own, comp, m.task))
            continue
        mine = load_competition(m.cfg)
        if list(mine.test["id"].astype(str)) != list(comp.test["id"].astype(str)):
            raise UserError(f"{m.out_dir} and {members[0].out_dir} read different test images; blend one data set")
        outs.append(predict_test(m.exp, mine).astype(np.float64))
    return outs, comp


def blend_test(members: list[Member], test_outs: list[np.ndarray], method: str) -> np.ndarray:
    """(N_test, K): the method fitted on every OOF row, applied to the members' test outputs."""
    y = oof_targets(members[0].oof)
    outs = [oof_probs(m.oof).astype(np.float64) for m in members]
    return bl.fit(method, outs, y, members[0].task)(test_outs)


def submission(members: list[Member], comp: Competition, probs: np.ndarray,
               decoding: dict[str, Any] | None) -> tuple[pd.DataFrame, str, float | None]:
    """The blend's submission, built and validated as make_submission builds any other: (frame, CSV text,
    held-out score or None)."""
    cfg, comp, _, df = decoded_submission(members[0].cfg, comp, probs, decoding)
    return df, to_csv_text(df), score_holdout(cfg, comp, df)


def default_out(members: list[Member]) -> Path:
    return resolve_path("runs/blend-" + "-".join(m.name for m in members))


def check_out(out: Path, members: list[Member], force: bool) -> Path:
    """The output folder, refused when it exists (unless `force`) or is a member's own out_dir."""
    if any(out == m.out_dir for m in members):
        raise UserError(f"--out {out} is a member's own out_dir; name another folder")
    if out.exists() and not force:
        raise UserError(f"output folder {out} exists; name another with --out, or pass --force to overwrite it")
    io.check_dir(out.parent, "--out")
    return out


def write(out: Path, members: list[Member], res: Result, test_probs: np.ndarray, comp: Competition,
          csv_text: str, into: Path | None = None) -> None:
    """The blend as the experiment `out` (module doc), its files written in `into` (default `out`; the
    script passes comp.io.atomic_dir's partial folder, renamed to `out` once all is written); every file
    through comp.io."""
    m0, final = members[0], out
    blend = Experiment(m0.cfg, into or out)  # the blend's files, written where `into` says
    ids, y = m0.oof["id"].tolist(), oof_targets(m0.oof)
    rows = m0.oof["row"].astype(str).tolist() if "row" in m0.oof.columns else None
    for k in sorted(m0.oof["fold"].unique()):
        sel = (m0.oof["fold"] == k).to_numpy()
        write_oof(blend.fold(k).oof, [i for i, s in zip(ids, sel, strict=True) if s], y[sel],
                  res.oof[sel], m0.task, None if rows is None else [r for r, s in zip(rows, sel, strict=True) if s])
    for what in ("folds_meta", "folds"):
        if m0.exp.file(what).is_file():
            io.write_bytes(blend.file(what), m0.exp.file(what).read_bytes(), what="blend")
    cfg = OmegaConf.to_container(m0.cfg)
    cfg["out_dir"] = str(final)  # the blend is an experiment of its own: report.py --config out/config.yaml
    io.write_text(blend.file("config"), OmegaConf.to_yaml(cfg), what="blend")
    save_probs(blend.file("test_probs"), comp.test["id"].astype(str).tolist(), test_probs.astype(np.float32), m0.task)
    io.write_json(blend.file("blend"), {
        "members": [{"name": m.name, "out_dir": str(m.out_dir)} for m in members], "method": res.method,
        "metric": m0.cfg.metric, "weights": res.weights, "table": res.table.to_dict(orient="records"),
        "correlation": res.corr.tolist(), "decoding": res.decoding}, what="blend")
    io.write_text(blend.file("submission"), csv_text, what="blend")
