"""The experiment: one config and the run folder (`out_dir`) it owns. Every path inside that folder is built
here, and every read of it goes through here (tests/test_layout.py fails when a file name below is spelled
anywhere else):

    <out_dir>/
        folds.csv, folds.json     the split, made once and read by every run of the experiment
        image_problems.csv        prepare's list of the images that cannot be used
        thresholds.json           the OOF-fitted decoding (qwk cut-points, a binary decision threshold)
        cv.csv                    the report's CV table
        config.yaml               a blend's, a stack's or a package's own config
        test_probs.csv            a blend's or a stack's test outputs (it has no checkpoints)
        blend.json, stack.json    what a blend or a stack was made of
        submission.csv            a blend's or a stack's validated submission
        fold<K>/                  fold K: its training run, or a seed bag's seeds below it
            [seed<S>/][stage<i>/] one training run (`RunFiles`): config.yaml, best.pt, last.pt, recovery.pt,
                                  metrics.csv, oof.csv, sources.json, done.json (a finished stage)
            oof.csv               the fold's out-of-fold predictions (a seed bag's: the mean of its seeds')
            oof_tta.csv, .json    the same predicted with the TTA views (comp.predict.oof_tta)

A seed bag (`seeds`) trains fold K once per seed into `fold<K>/seed<S>/`; the stages of a multi-stage recipe
(`stages`) before the last train into `stage<i>/` below the run's folder, the last into the run's folder
itself, so every reader sees the final stage. The figures a report draws (`*.png`) and TensorBoard's `tb/`
are named by their writers (comp.report, comp.train.tracking) inside the folders given here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from comp.config import read_config, resolve_path
from comp.data.folds import SplitFiles
from comp.errors import UserError
from comp.experiment.model import FoldModel, check_agree, check_config, load_model

# Every file name of the layout, by what it holds: the only place they are spelled (tests/test_layout.py)
FILES = {"best": "best.pt", "last": "last.pt", "recovery": "recovery.pt", "oof": "oof.csv",
         "oof_tta": "oof_tta.csv", "oof_tta_meta": "oof_tta.json", "metrics": "metrics.csv", "config": "config.yaml",
         "sources": "sources.json", "done": "done.json", "folds": "folds.csv", "folds_meta": "folds.json",
         "thresholds": "thresholds.json", "test_probs": "test_probs.csv", "blend": "blend.json",
         "stack": "stack.json", "cv": "cv.csv", "image_problems": "image_problems.csv",
         "submission": "submission.csv", "visits_cv": "cv.json"}


@dataclass(frozen=True)
class RunFiles:
    """The files of one run folder (or of a fold folder: a seed bag's OOF)."""

    dir: Path

    @property
    def best(self) -> Path:
        """The weights of the best epoch, the ones predicted with (no optimizer state)."""
        return self.dir / FILES["best"]

    @property
    def last(self) -> Path:
        """The whole training state at the end of the last epoch: what a resume reads."""
        return self.dir / FILES["last"]

    @property
    def recovery(self) -> Path:
        """The whole training state mid-epoch (train.recovery_every, a stop signal)."""
        return self.dir / FILES["recovery"]

    @property
    def oof(self) -> Path:
        """The out-of-fold predictions of the best epoch (a fold's: a seed bag's mean)."""
        return self.dir / FILES["oof"]

    @property
    def oof_tta(self) -> Path:
        """The fold's out-of-fold predictions made with the TTA views (comp.predict.oof_tta)."""
        return self.dir / FILES["oof_tta"]

    @property
    def oof_tta_meta(self) -> Path:
        """What the TTA out-of-fold file was made from (its digest)."""
        return self.dir / FILES["oof_tta_meta"]

    @property
    def metrics(self) -> Path:
        """One row per epoch: losses, every metric, learning rate, speed."""
        return self.dir / FILES["metrics"]

    @property
    def config(self) -> Path:
        """The run's resolved config."""
        return self.dir / FILES["config"]

    @property
    def sources(self) -> Path:
        """The training images per source (competition, data.extra, pseudo-labels)."""
        return self.dir / FILES["sources"]

    @property
    def done(self) -> Path:
        """A finished stage before the last of a multi-stage recipe."""
        return self.dir / FILES["done"]

    def started(self) -> bool:
        """A training checkpoint is there (the run was started and saved once at least)."""
        return self.last.exists() or self.recovery.exists()

    def trained(self) -> bool:
        """The run has a checkpoint to predict from."""
        return self.best.is_file()


class Experiment:
    """One experiment: its config (`cfg`, as loaded) and its folder (`dir`, the config's out_dir unless given).

    Made once from a config (`Experiment(cfg)`) or from a folder (`Experiment.open(path)`: a trained
    experiment, a blend, a stack, a package), then asked for paths (module doc), checkpoints, OOF frames
    and the CV score."""

    def __init__(self, cfg: Any, folder: str | Path | None = None):
        self.cfg = cfg
        self.dir = Path(folder) if folder is not None else resolve_path(cfg.out_dir)

    def __repr__(self) -> str:
        return f"Experiment({str(self.dir)!r})"

    @classmethod
    def of(cls, exp_or_cfg: Experiment | Any) -> Experiment:
        """`exp_or_cfg` itself when it is an Experiment, else the experiment of that config: what the library
        functions a notebook calls take (an experiment, or the config of one)."""
        return exp_or_cfg if isinstance(exp_or_cfg, Experiment) else cls(exp_or_cfg)

    @staticmethod
    def config_in(folder: str | Path) -> Path:
        """The config file an experiment folder of its own keeps (a blend's, a stack's, a package's)."""
        return Path(folder) / FILES["config"]

    @classmethod
    def open(cls, folder: str | Path) -> Experiment:
        """The experiment in `folder`, with the config saved in it (its own config.yaml, or that of its first
        run: `fold<K>/config.yaml`, `fold<K>/seed<S>/config.yaml`), out_dir pointed at the folder.

        Raises:
            UserError: no such folder, or one with no saved config (not made by this kit)."""
        folder = Path(folder).expanduser().absolute()
        if not folder.is_dir():
            raise UserError(f"experiment folder {folder} does not exist")
        name = FILES["config"]
        saved = [folder / name, *sorted(folder.glob(f"fold*/{name}")), *sorted(folder.glob(f"fold*/seed*/{name}"))]
        found = next((p for p in saved if p.is_file()), None)
        if found is None:
            raise UserError(f"{folder} holds no {name} (its own or a fold's): not an experiment made by this kit")
        return cls(read_config(found, [f"out_dir={folder}", "stage=0"]), folder)

    # --- the experiment's own files -------------------------------------------------------------------
    def file(self, what: str) -> Path:
        """`<out_dir>/<name>` of an experiment-level file of FILES: folds, folds_meta, thresholds, cv,
        config, test_probs, blend, stack, image_problems, visits_cv (comp.train.tabular's summary)."""
        return self.dir / FILES[what]

    @property
    def split(self) -> SplitFiles:
        """folds.csv and folds.json, for comp.data.folds."""
        return SplitFiles(self.file("folds"), self.file("folds_meta"))

    def own_outputs(self) -> Path | None:
        """A blend's or a stack's saved test outputs (it has no checkpoints to predict with), else None."""
        made = self.file("blend").is_file() or self.file("stack").is_file()
        return self.file("test_probs") if made else None

    # --- runs and checkpoints ---------------------------------------------------------------------------
    @property
    def seeds(self) -> list[int]:
        """The seeds of a seed bag (`seeds`), or [] without one."""
        return [int(s) for s in self.cfg.seeds]

    def fold(self, k: int) -> RunFiles:
        """`fold<K>/`: the run of fold K (no seed bag), and the fold's OOF in any case."""
        return RunFiles(self.dir / f"fold{k}")

    def run(self, k: int, seed: int | None = None, stage: int = 0) -> RunFiles:
        """`fold<K>[/seed<S>][/stage<i>]/`: one training run (seed None: not in a bag; stage 0: the last)."""
        d = self.fold(k).dir
        d = d / f"seed{int(seed)}" if seed is not None else d
        return RunFiles(d / f"stage{int(stage)}" if stage else d)

    def run_of(self, cfg: Any, k: int) -> RunFiles:
        """The run that `cfg` (this experiment's config, or one of its stages' or seeds') trains for fold K.

        Raises:
            UserError: a bag whose `seeds` do not include `seed` (the run would belong to no bag)."""
        seeds = [int(s) for s in cfg.seeds]
        if seeds and int(cfg.seed) not in seeds:
            raise UserError(f"seed={cfg.seed} is not one of the bag's seeds={seeds}; train a seed of the bag "
                            f"(scripts/train_fold.py --seed S), or add it to seeds")
        return self.run(k, int(cfg.seed) if seeds else None, int(cfg.stage))

    def runs(self, k: int) -> list[RunFiles]:
        """The final runs of fold K: one per seed of the bag in `seeds` order, or the fold's own."""
        return [self.run(k, s) for s in self.seeds] if self.seeds else [self.fold(k)]

    def checkpoints(self, k: int) -> list[Path]:
        """The best.pt files fold K is predicted from (`runs`), trained or not: the one rule for seed bags
        and stages."""
        return [r.best for r in self.runs(k)]

    def name(self, path: Path) -> str:
        """How a log line names the run of a checkpoint or folder: `fold0`, `fold0/seed42`."""
        d = path.parent if path.suffix else path
        try:
            return d.relative_to(self.dir).as_posix()
        except ValueError:
            return d.name

    def fold_of(self, path: Path) -> int:
        """The fold number of a checkpoint or folder inside this experiment."""
        return int(self.name(path).split("/")[0].removeprefix("fold"))

    def trained(self) -> list[Path]:
        """The `best.pt` of each fold to ensemble, in fold order (a seed bag's seeds in `seeds` order): every
        fold of `folds.n_folds`, or those named by `predict.folds` (a partial ensemble is never made silently;
        a partial bag only when `seeds` names the trained ones).

        Raises:
            UserError: a fold to ensemble has no best.pt, or a seed of its bag has none (naming which are trained
                and how to ask for them)."""
        cfg, n = self.cfg, int(self.cfg.folds.n_folds)
        wanted = list(cfg.predict.folds) or list(range(n))
        paths = {k: self.checkpoints(k) for k in range(n)}
        if self.seeds:
            have = {k: [s for s, p in zip(self.seeds, ps, strict=True) if p.is_file()] for k, ps in paths.items()}
            short = [k for k in wanted if 0 < len(have[k]) < len(self.seeds)]
            if short:
                k = short[0]
                lack = [s for s in self.seeds if s not in have[k]]
                raise UserError(f"fold {k} of the seed bag seeds={self.seeds} lacks seed(s) {lack} (no "
                                f"{self.run(k, lack[0]).best}): train it (scripts/train_fold.py --fold {k} --seed "
                                f"{lack[0]}), or ensemble the trained seeds with seeds=[{','.join(map(str, have[k]))}]")
        trained = [k for k, ps in paths.items() if all(p.is_file() for p in ps)]
        missing = [k for k in wanted if k not in trained]
        if not trained:
            raise UserError(f"no trained fold in {self.dir} (no fold*/{FILES['best']}); run scripts/train_fold.py "
                            f"--fold 0 first")
        if missing:
            ask = f"predict.folds=[{','.join(map(str, trained))}]"
            key = "predict.folds" if cfg.predict.folds else "folds.n_folds"
            raise UserError(f"{len(trained)} of {n} folds trained in {self.dir} (folds {trained}); fold(s) {missing} "
                            f"of {key} have no {FILES['best']}: train them (scripts/train_fold.py --fold "
                            f"{missing[0]}), or ensemble the trained ones with {ask}")
        return [p for k in wanted for p in paths[k]]

    def trained_folds(self) -> list[int]:
        """The folds every model of which (each seed of a bag) has a best.pt, in fold order."""
        return [k for k in range(int(self.cfg.folds.n_folds)) if all(p.is_file() for p in self.checkpoints(k))]

    def histories(self) -> list[pd.DataFrame]:
        """Every final run's metrics.csv (each seed's in a bag), in fold order.

        Raises:
            UserError: no run has one (nothing trained)."""
        n = int(self.cfg.folds.n_folds)
        found = [r.metrics for k in range(n) for r in self.runs(k) if r.metrics.is_file()]
        if not found:
            raise UserError(f"{self.dir} holds no trained fold (no fold*/{FILES['metrics']})")
        return [pd.read_csv(p) for p in found]

    # --- trained models -------------------------------------------------------------------------------
    def load_model(self, path: Path) -> FoldModel:
        """One trained model of this experiment, its weights and meaning read from its checkpoint
        (comp.experiment.model.load_model)."""
        return load_model(path)

    def load_models(self, classes: list[str] | None = None, paths: list[Path] | None = None) -> list[FoldModel]:
        """The models to ensemble (`paths`, default `trained()`), checked to agree with each other on what
        they see and predict, and with this experiment's config (and the data's `classes` when given).

        Raises:
            UserError: see `trained`, comp.experiment.model.check_agree and check_config."""
        models = [load_model(p) for p in (paths if paths is not None else self.trained())]
        check_agree(models)
        for m in models:
            check_config(m, self.cfg, classes)
        return models

    # --- out-of-fold predictions ------------------------------------------------------------------------
    def oof_files(self, kind: str = "oof") -> list[Path]:
        """The `kind` file (oof: training's, oof_tta: comp.predict.oof_tta's) of every fold that has one."""
        n = int(self.cfg.folds.n_folds)
        return [p for k in range(n) if (p := getattr(self.fold(k), kind)).is_file()]

    def oof(self, kind: str = "oof") -> pd.DataFrame:
        """Every fold's OOF rows concatenated (id, targets, outputs, [row], fold), in fold order.

        Raises:
            UserError: no fold has one yet."""
        paths = self.oof_files(kind)
        if not paths:
            raise UserError(f"no fold of {self.dir} has an {FILES[kind]} yet; train a fold first")
        return read_oof(paths, [self.fold_of(p) for p in paths])

    def cv(self) -> tuple[pd.DataFrame, float, int]:
        """Per-fold scores of every metric and the competition metric over every OOF row pooled (the CV
        score), with the number of folds found (comp.experiment.oof.cv_table).

        Raises:
            UserError: no fold has an oof.csv yet."""
        from comp.experiment.oof import cv_table

        return cv_table(self.cfg, self.oof())

    # --- side folders -------------------------------------------------------------------------------------
    def sub(self, name: str) -> Path:
        """A folder of the experiment's side work: package, explain, tune, lr_find (`<out_dir>/<name>`)."""
        return self.dir / name


def read_oof(paths: list[Path], folds: list[int]) -> pd.DataFrame:
    """OOF files concatenated, each with its fold number in a `fold` column."""
    return pd.concat([pd.read_csv(p, dtype={"id": str}).assign(fold=k) for p, k in zip(paths, folds, strict=True)],
                     ignore_index=True)
