"""Experiment tracking: every run's scalars, config and figures in TensorBoard, and (train.tracker) in MLflow
or Weights & Biases too.

The interface is four calls, made by comp.train.loop: `start(cfg, fold_dir, fold, main)` → `log_step` (at
each loss read-back: train/loss, train/lr at the global optimizer step) → `log_epoch` (every metrics.csv
column, at the epoch) → `close`; `log_figures` adds the fold figures once scripts/train_fold.py has drawn
them. Only rank 0 writes.

TensorBoard (torch.utils.tensorboard.SummaryWriter, which needs the `tensorboard` package) writes event
files to `<out_dir>/fold<K>/tb/` for every tracker but `none`: local files, nothing is sent. MLflow logs to
`train.tracker_uri` (default: the local file store `<out_dir>/mlruns`), W&B to its own service; both are
optional packages, asked for by name when missing. The resolved config, the git commit and the library
versions go with each run (TensorBoard: add_text).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any

from comp import io
from comp.config import resolve_path, to_yaml
from comp.errors import UserError
from comp.experiment import Experiment
from comp.system import git_commit

LIBRARIES = ("torch", "torchvision", "timm", "numpy", "albumentations", "opencv-python-headless", "scikit-learn")
PIP_NAMES = {"mlflow": "mlflow", "wandb": "wandb"}


def versions() -> dict[str, str]:
    """The installed version of each library in LIBRARIES (`-` when absent)."""
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "-"
    return out


def _require(tracker: str) -> Any:
    """Import the optional package of `tracker`, or say which key asked for it and what to install."""
    try:
        return importlib.import_module(tracker)
    except ImportError:
        raise UserError(f"train.tracker={tracker} needs the {tracker} package: pip install {PIP_NAMES[tracker]} "
                        f"(or set train.tracker=tensorboard)") from None


class Tracker:
    """No tracking (train.tracker=none, or a rank other than 0): every call does nothing."""

    def log_step(self, step: int, values: dict[str, float]) -> None:
        """Scalars at global optimizer step `step` (e.g. {"train/loss": 0.7, "train/lr": 1e-3})."""

    def log_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        """One metrics.csv row: each numeric column as the scalar `epoch/<column>` at step `epoch`."""

    def close(self) -> None:
        """Flush and release the writers (idempotent)."""


class Trackers(Tracker):
    """TensorBoard, plus MLflow or W&B when configured: the same scalars to each.

    The packages are imported at once (a missing one fails before training), but nothing is written until
    the attempt's first epoch is committed (`log_epoch`, called after last.pt): the step scalars wait in
    memory until then, so an attempt that fails or is stopped before it leaves the fold folder as it was."""

    def __init__(self, cfg: Any, fold_dir: Path, fold: int):
        from torch.utils.tensorboard import SummaryWriter  # raises ImportError without the tensorboard package

        self.cfg, self.fold_dir, self.fold, self.writer_cls = cfg, fold_dir, fold, SummaryWriter
        self.module = _require(cfg.train.tracker) if cfg.train.tracker in PIP_NAMES else None
        self.tb: Any = None
        self.mlflow: Any = None
        self.wandb: Any = None
        self.pending: list[tuple[int, dict[str, float]]] = []

    def _open(self) -> None:
        """Create the writers and log the config, commit and versions (once)."""
        cfg, kind = self.cfg, self.cfg.train.tracker
        self.tb = self.writer_cls(log_dir=str(self.fold_dir / "tb"))
        info = {"git_commit": git_commit(), **{f"version/{k}": v for k, v in versions().items()}}
        config_text = to_yaml(cfg)
        self.tb.add_text("config", "\n".join("    " + line for line in config_text.splitlines()))  # markdown code
        self.tb.add_text("run", "  \n".join(f"{k}: {v}" for k, v in info.items()))
        out_dir = resolve_path(cfg.out_dir)
        project = cfg.train.tracker_project or out_dir.name
        name = f"{out_dir.name}/{Experiment(cfg).name(self.fold_dir)}"  # fold0, fold0/seed42, fold0/seed42/stage1
        ids: dict[str, str] = {}
        if kind == "mlflow":
            self.mlflow = self.module
            self.mlflow.set_tracking_uri(cfg.train.tracker_uri or (out_dir / "mlruns").as_uri())
            self.mlflow.set_experiment(project)
            ids["mlflow"] = self.mlflow.start_run(run_name=name).info.run_id
            self.mlflow.set_tags(info)
            self.mlflow.log_text(config_text, "config.yaml")
        elif kind == "wandb":
            from omegaconf import OmegaConf

            self.wandb = self.module.init(project=project, name=name, dir=str(self.fold_dir),
                                          config=OmegaConf.to_container(cfg, resolve=True))
            self.wandb.summary.update(info)
            ids["wandb"] = self.wandb.id
        if ids:  # log_figures reopens the same runs
            io.write_json(self.fold_dir / "tb" / "tracker_ids.json", {**ids, "project": project})

    def _scalars(self, values: dict[str, float], step: int, axis: str) -> None:
        for k, v in values.items():
            self.tb.add_scalar(k, v, step)
        if self.mlflow is not None:
            self.mlflow.log_metrics({k.replace("/", "_"): v for k, v in values.items()}, step=step)
        if self.wandb is not None:
            self.wandb.log({**values, axis: step})

    def log_step(self, step: int, values: dict[str, float]) -> None:
        if self.tb is None:
            self.pending.append((step, values))
        else:
            self._scalars(values, step, "step")

    def log_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        if self.tb is None:
            self._open()
        for step, values in self.pending:
            self._scalars(values, step, "step")
        self.pending.clear()
        values = {f"epoch/{k}": float(v) for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))}
        self._scalars(values, epoch, "epoch")
        self.tb.flush()

    def close(self) -> None:
        self.pending.clear()
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.mlflow is not None:
            self.mlflow.end_run()
            self.mlflow = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def start(cfg: Any, fold_dir: Path, fold: int, main: bool = True) -> Tracker:
    """The tracker of fold `fold`'s run writing to `fold_dir`: a `Trackers` on rank 0 (`main`) unless
    train.tracker=none, else the no-op `Tracker`. Plain values, not the Run: tracking sits below the run's
    state (comp.train.state holds a Tracker), so it never imports it back.

    Raises:
        UserError: train.tracker names a package that is not installed (mlflow, wandb, tensorboard).
    """
    if not main or cfg.train.tracker == "none":
        return Tracker()
    try:
        return Trackers(cfg, fold_dir, fold)
    except ImportError as e:
        if "tensorboard" in str(e).lower():
            raise UserError(f"train.tracker={cfg.train.tracker} writes TensorBoard files and needs the "
                            f"tensorboard package: pip install tensorboard (or set train.tracker=none)") from None
        raise


def log_figures(cfg: Any, fold_dir: Path, paths: list[Path]) -> None:
    """Add the fold figures (PNG files drawn after `fit`, e.g. curves.png and confusion.png) to the fold's
    TensorBoard files as images, and to its MLflow or W&B run (reopened by its id) as artifacts / images.
    Nothing with train.tracker=none."""
    paths = [p for p in paths if p.is_file()]
    if cfg.train.tracker == "none" or not paths:
        return
    import matplotlib.image
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(fold_dir / "tb")) as tb:
        for p in paths:
            tb.add_image(p.stem, matplotlib.image.imread(str(p))[..., :3], dataformats="HWC")
    ids_path = fold_dir / "tb" / "tracker_ids.json"
    ids = json.loads(ids_path.read_text()) if ids_path.is_file() else {}
    if cfg.train.tracker == "mlflow" and "mlflow" in ids:
        mlflow = _require("mlflow")
        mlflow.set_tracking_uri(cfg.train.tracker_uri or (resolve_path(cfg.out_dir) / "mlruns").as_uri())
        with mlflow.start_run(run_id=ids["mlflow"]):
            for p in paths:
                mlflow.log_artifact(str(p))
    if cfg.train.tracker == "wandb" and "wandb" in ids:
        wandb = _require("wandb")
        run = wandb.init(project=ids["project"], id=ids["wandb"], resume="allow", dir=str(fold_dir))
        run.log({p.stem: wandb.Image(str(p)) for p in paths})
        run.finish()
