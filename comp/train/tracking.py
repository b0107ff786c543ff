"""Experiment tracking: every run's scalars, config and figures in TensorBoard, and (train.tracker) in MLflow
or Weights & Biases too.

The interface is four calls, made by comp.train.loop: `start(run)` → `log_step` (at each loss read-back:
train/loss, train/lr at the global optimizer step) → `log_epoch` (every metrics.csv column, at the epoch) →
`close`; `log_figures` adds the fold figures once scripts/train_fold.py has drawn them. Only rank 0 writes.

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
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from comp import io
from comp.config import REPO_ROOT, resolve_path, to_yaml
from comp.errors import UserError

if TYPE_CHECKING:
    from comp.train.state import Run

LIBRARIES = ("torch", "torchvision", "timm", "numpy", "albumentations", "opencv-python-headless", "scikit-learn")
PIP_NAMES = {"mlflow": "mlflow", "wandb": "wandb"}


def git_commit() -> str:
    """The checkout's commit (12 hex digits), `+dirty` when tracked files differ from it; `unknown` outside git."""
    try:
        head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=30)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


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
    """TensorBoard, plus MLflow or W&B when configured: the same scalars to each."""

    def __init__(self, cfg: Any, fold_dir: Path, fold: int):
        from torch.utils.tensorboard import SummaryWriter  # raises ImportError without the tensorboard package

        kind = cfg.train.tracker
        self.tb = SummaryWriter(log_dir=str(fold_dir / "tb"))
        self.mlflow = self.wandb = None
        info = {"git_commit": git_commit(), **{f"version/{k}": v for k, v in versions().items()}}
        config_text = to_yaml(cfg)
        self.tb.add_text("config", "\n".join("    " + line for line in config_text.splitlines()))  # markdown code
        self.tb.add_text("run", "  \n".join(f"{k}: {v}" for k, v in info.items()))
        out_dir = resolve_path(cfg.out_dir)
        project = cfg.train.tracker_project or out_dir.name
        name = f"{out_dir.name}/fold{fold}"
        ids: dict[str, str] = {}
        if kind == "mlflow":
            mlflow = _require("mlflow")
            mlflow.set_tracking_uri(cfg.train.tracker_uri or (out_dir / "mlruns").as_uri())
            mlflow.set_experiment(project)
            self.mlflow = mlflow
            ids["mlflow"] = mlflow.start_run(run_name=name).info.run_id
            mlflow.set_tags(info)
            mlflow.log_text(config_text, "config.yaml")
        elif kind == "wandb":
            wandb = _require("wandb")
            from omegaconf import OmegaConf

            self.wandb = wandb.init(project=project, name=name, dir=str(fold_dir),
                                    config=OmegaConf.to_container(cfg, resolve=True), reinit=True)
            self.wandb.summary.update(info)
            ids["wandb"] = self.wandb.id
        if ids:  # log_figures reopens the same runs
            io.write_json(fold_dir / "tb" / "tracker_ids.json", {**ids, "project": project})

    def log_step(self, step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.tb.add_scalar(k, v, step)
        if self.mlflow is not None:
            self.mlflow.log_metrics({k.replace("/", "_"): v for k, v in values.items()}, step=step)
        if self.wandb is not None:
            self.wandb.log({**values, "step": step})

    def log_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        values = {f"epoch/{k}": float(v) for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))}
        for k, v in values.items():
            self.tb.add_scalar(k, v, epoch)
        self.tb.flush()
        if self.mlflow is not None:
            self.mlflow.log_metrics({k.replace("/", "_"): v for k, v in values.items()}, step=epoch)
        if self.wandb is not None:
            self.wandb.log({**values, "epoch": epoch})

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.mlflow is not None:
            self.mlflow.end_run()
            self.mlflow = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def start(run: Run) -> Tracker:
    """The tracker of `run`: a `Trackers` on rank 0 unless train.tracker=none, else the no-op `Tracker`.

    Raises:
        UserError: train.tracker names a package that is not installed (mlflow, wandb, tensorboard).
    """
    if not run.dist.main or run.cfg.train.tracker == "none":
        return Tracker()
    try:
        return Trackers(run.cfg, run.dir, run.fold)
    except ImportError as e:
        if "tensorboard" in str(e).lower():
            raise UserError(f"train.tracker={run.cfg.train.tracker} writes TensorBoard files and needs the "
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
