"""Experiment tracking: every run's scalars, config and figures in TensorBoard, and (train.tracker) in MLflow
or Weights & Biases too.

The interface is four calls, made by comp.train.loop: `start(cfg, fold_dir, fold, main, ids)` → `log_step` (at
each loss read-back: train/loss, train/lr at the global optimizer step) → `log_epoch` (every metrics.csv
column, at the epoch) → `close`; `log_figures` adds the fold figures once scripts/train_fold.py has drawn
them. Only rank 0 writes.

TensorBoard (torch.utils.tensorboard.SummaryWriter, which needs the `tensorboard` package) writes event
files to `<out_dir>/fold<K>/tb/` for every tracker but `none`: local files, nothing is sent. MLflow logs to
`train.tracker_uri` (default: the SQLite store `<out_dir>/mlflow.db`; MLflow 3 refuses its old file store
`mlruns/` unless told otherwise), W&B to its own service; both are optional packages, asked for by name when
missing. The resolved config, the git commit and the library versions go with each run (TensorBoard:
add_text).

One fold is one tracker run however often it is stopped and resumed (KempnerForge#19, ArcticTraining PR
#328): the run ids are chosen when the fold starts (MLflow: `MlflowClient.create_run`; W&B: an id of our own,
`wandb.util.generate_id`) and kept in the fold's state, so every checkpoint carries them and a resume
continues the same runs (`mlflow.start_run(run_id=...)`, `wandb.init(id=..., resume="allow")`, the W&B
resume docs). TensorBoard appends to the same `tb/` folder by itself.
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

    The packages are imported at once (a missing one fails before training), but nothing is written to the
    fold folder until the attempt's first epoch is committed (`log_epoch`, called after last.pt): the step
    scalars wait in memory until then, so an attempt that fails or is stopped before it leaves the fold
    folder as it was. Only a fresh fold's MLflow run is created at once (in the tracking store), so that its
    id is in the first checkpoint."""

    def __init__(self, cfg: Any, fold_dir: Path, fold: int, ids: dict[str, str]):
        from torch.utils.tensorboard import SummaryWriter  # raises ImportError without the tensorboard package

        self.cfg, self.fold_dir, self.fold, self.writer_cls = cfg, fold_dir, fold, SummaryWriter
        self.module = _require(cfg.train.tracker) if cfg.train.tracker in PIP_NAMES else None
        self.tb: Any = None
        self.mlflow: Any = None
        self.wandb: Any = None
        self.pending: list[tuple[int, dict[str, float]]] = []
        out_dir = resolve_path(cfg.out_dir)
        self.project = cfg.train.tracker_project or out_dir.name
        self.name = f"{out_dir.name}/{Experiment(cfg).name(fold_dir)}"  # fold0, fold0/seed42, fold0/seed42/stage1
        self.ids = ids  # the fold state's: filled here on a fresh start, read back on a resume
        if cfg.train.tracker == "mlflow" and "mlflow" not in ids:
            client = self.module.MlflowClient(tracking_uri=mlflow_uri(cfg))
            found = client.get_experiment_by_name(self.project)
            exp_id = found.experiment_id if found is not None else client.create_experiment(
                self.project, artifact_location=mlflow_artifacts(cfg))
            ids["mlflow"] = client.create_run(exp_id, run_name=self.name).info.run_id
        if cfg.train.tracker == "wandb" and "wandb" not in ids:
            ids["wandb"] = self.module.util.generate_id()

    def _open(self) -> None:
        """Create the writers and log the config, commit and versions (once)."""
        cfg, kind = self.cfg, self.cfg.train.tracker
        self.tb = self.writer_cls(log_dir=str(self.fold_dir / "tb"))
        info = {"git_commit": git_commit(), **{f"version/{k}": v for k, v in versions().items()}}
        config_text = to_yaml(cfg)
        self.tb.add_text("config", "\n".join("    " + line for line in config_text.splitlines()))  # markdown code
        self.tb.add_text("run", "  \n".join(f"{k}: {v}" for k, v in info.items()))
        if kind == "mlflow":
            self.mlflow = self.module
            self.mlflow.set_tracking_uri(mlflow_uri(cfg))
            self.mlflow.start_run(run_id=self.ids["mlflow"])  # the fold's run, new or resumed
            self.mlflow.set_tags(info)
            self.mlflow.log_text(config_text, "config.yaml")
        elif kind == "wandb":
            from omegaconf import OmegaConf

            self.wandb = self.module.init(project=self.project, name=self.name, dir=str(self.fold_dir),
                                          id=self.ids["wandb"], resume="allow",
                                          config=OmegaConf.to_container(cfg, resolve=True))
            self.wandb.summary.update(info)
        ids = {k: v for k, v in self.ids.items() if k == kind}
        if ids:  # log_figures reopens the same runs
            io.write_json(self.fold_dir / "tb" / "tracker_ids.json", {**ids, "project": self.project})

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


def mlflow_uri(cfg: Any) -> str:
    """train.tracker_uri, or the local SQLite store `<out_dir>/mlflow.db` (MLflow's recommended local backend;
    MLflow 3 raises on the file store `mlruns/` unless MLFLOW_ALLOW_FILE_STORE is set)."""
    return cfg.train.tracker_uri or f"sqlite:///{resolve_path(cfg.out_dir) / 'mlflow.db'}"


def mlflow_artifacts(cfg: Any) -> str | None:
    """Where a new MLflow experiment keeps its files (config.yaml, figures): `<out_dir>/mlartifacts` with the
    local store (MLflow's own default would be `./mlruns` under the working directory), the server's choice
    with train.tracker_uri."""
    return None if cfg.train.tracker_uri else (resolve_path(cfg.out_dir) / "mlartifacts").as_uri()


def start(cfg: Any, fold_dir: Path, fold: int, main: bool = True, ids: dict[str, str] | None = None) -> Tracker:
    """The tracker of fold `fold`'s run writing to `fold_dir`: a `Trackers` on rank 0 (`main`) unless
    train.tracker=none, else the no-op `Tracker`. Plain values, not the Run: tracking sits below the run's
    state (comp.train.state holds a Tracker), so it never imports it back.

    `ids` is the fold state's {tracker: run id} (saved in every checkpoint): the runs it names are continued,
    a tracker it lacks gets a new run whose id is put into it (module doc).

    Raises:
        UserError: train.tracker names a package that is not installed (mlflow, wandb, tensorboard).
    """
    if not main or cfg.train.tracker == "none":
        return Tracker()
    try:
        return Trackers(cfg, fold_dir, fold, {} if ids is None else ids)
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
        mlflow.set_tracking_uri(mlflow_uri(cfg))
        with mlflow.start_run(run_id=ids["mlflow"]):
            for p in paths:
                mlflow.log_artifact(str(p))
    if cfg.train.tracker == "wandb" and "wandb" in ids:
        wandb = _require("wandb")
        run = wandb.init(project=ids["project"], id=ids["wandb"], resume="allow", dir=str(fold_dir))
        run.log({p.stem: wandb.Image(str(p)) for p in paths})
        run.finish()
