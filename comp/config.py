"""The typed configuration of the kit: schema defaults < YAML file < `KEY=VALUE` overrides (`read_config`).

The schema is a tree of dataclasses read by OmegaConf, which does the typed merging: a key that is
not in the schema, or a value of the wrong type, fails with a `UserError` naming the dotted key; values
that type-check but cannot work are refused here too. What only a higher layer can check (augmentation
and TTA names, the model name, data.extra, every stage of `stages`) is checked by the ONE loader every
script and notebook uses, comp.experiment.load_config, on top of this one. The resolved config is written
next to every run so a run can always be rebuilt from its folder.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from comp.errors import UserError
from comp.schema import (  # noqa: F401  (the schema's names, imported from here since the start)
    COMPILE_MODES,
    MIL_POOLS,
    MIL_SOURCES,
    AugConfig,
    Config,
    DataConfig,
    FoldsConfig,
    ImagesConfig,
    MilConfig,
    ModelConfig,
    OptimConfig,
    PredictConfig,
    TrainConfig,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "demo.yaml"


def _explain(err: Exception, where: str) -> str:
    """One line naming the dotted key and what was wrong with it."""
    key = getattr(err, "full_key", None) or getattr(err, "key", None)
    if not key:  # a plain TypeError: name the override or file it came from
        return f"bad config value {where}: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
    msg = str(err).splitlines()[0] if str(err) else type(err).__name__
    if "not in struct" in msg or "Key '" in msg and "not in" in msg:
        return f"unknown config key '{key}' {where}{_did_you_mean(str(key))}"
    return f"bad value for config key '{key}' {where}: {msg}"


# Other tools' names for the kit's keys (the last part of a dotted key), for the "did you mean" of a typo
ALIASES = {"learning_rate": "lr", "wd": "weight_decay", "img_size": "image_size", "size": "image_size",
           "bs": "batch_size", "batch": "batch_size", "workers": "num_workers", "n_epochs": "epochs",
           "num_epochs": "epochs", "max_epochs": "epochs", "arch": "name", "model_name": "name",
           "folds": "n_folds", "nfolds": "n_folds", "num_folds": "n_folds", "smoothing": "label_smoothing"}


def _did_you_mean(key: str) -> str:
    """`; did you mean 'image_size'?` for a key a letter or two from a schema key (`image_szie`), or one whose
    last part names another key of the schema (`optim.learning_rate` -> `optim.lr` by difflib's ratio)."""
    import difflib

    def keys(node: Any, prefix: str = "") -> list[str]:
        out = []
        for k, v in node.items():
            out += keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
        return out

    known = keys(OmegaConf.to_container(OmegaConf.structured(Config)))
    head, _, last = key.rpartition(".")
    alias = ALIASES.get(last)
    if alias:  # another library's name for one of ours (timm's `lr` is ours too, Keras' `learning_rate` is not)
        named = [k for k in known if k.rsplit(".", 1)[-1] == alias and k.startswith(head)]
        if named:
            return f"; did you mean '{named[0]}'?"
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
    return f"; did you mean '{close[0]}'?" if close else ""


def _yaml_where(err: Exception) -> str:
    """` at line L, column C: <problem>` from a PyYAML error's problem_mark (0-based in PyYAML, 1-based
    here as editors count), else `: <first line of the error>`."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or (str(err).splitlines()[0] if str(err) else type(err).__name__)
    if mark is None:
        return f": {problem}"
    return f" at line {mark.line + 1}, column {mark.column + 1}: {problem}"


def check_values(cfg: Any) -> None:
    """Reject values that type-check but cannot work, naming the key."""
    checks = [
        ("epochs", cfg.epochs >= 1, "must be >= 1"),
        ("batch_size", cfg.batch_size >= 1, "must be >= 1"),
        ("image_size", cfg.image_size >= 8, "must be >= 8"),
        ("num_workers", cfg.num_workers >= 0, "must be >= 0"),
        ("folds.n_folds", cfg.folds.n_folds >= 2, "must be >= 2"),
        ("optim.lr", cfg.optim.lr > 0, "must be > 0"),
        ("optim.name", cfg.optim.name in ("adamw", "sgd"), "must be adamw or sgd"),
        ("optim.schedule", cfg.optim.schedule in ("cosine", "onecycle", "constant"),
         "must be cosine, onecycle or constant"),
        ("train.accum_steps", cfg.train.accum_steps >= 1, "must be >= 1"),
        ("train.sampler", cfg.train.sampler in ("random", "weighted"), "must be random or weighted"),
        ("optim.warmup_epochs", cfg.optim.warmup_epochs >= 0, "must be >= 0"),
        ("optim.min_lr", 0 <= cfg.optim.min_lr <= cfg.optim.lr, "must be between 0 and optim.lr"),
        ("optim.weight_decay", cfg.optim.weight_decay >= 0, "must be >= 0"),
        ("train.ema_decay", 0 <= cfg.train.ema_decay < 1, "must be in [0, 1)"),
        ("train.swa_epochs", 0 <= cfg.train.swa_epochs <= cfg.epochs, "must be between 0 (off) and epochs"),
        ("seeds", len(set(cfg.seeds)) == len(cfg.seeds), "must list distinct seeds"),
        ("train.label_smoothing", 0 <= cfg.train.label_smoothing < 1, "must be in [0, 1)"),
        ("train.clip_grad", cfg.train.clip_grad >= 0, "must be >= 0 (0 = off)"),
        ("train.mixup", cfg.train.mixup >= 0, "must be >= 0 (0 = off)"),
        ("train.cutmix", cfg.train.cutmix >= 0, "must be >= 0 (0 = off)"),
        ("train.early_stop", cfg.train.early_stop >= 0, "must be >= 0 (0 = off)"),
        ("train.recovery_every", cfg.train.recovery_every >= 0, "must be >= 0 (0 = off)"),
        ("train.log_every", cfg.train.log_every >= 1, "must be >= 1"),
        ("train.tracker", cfg.train.tracker in ("none", "tensorboard", "mlflow", "wandb"),
         "must be none, tensorboard, mlflow or wandb"),
        ("model.in_chans", cfg.model.in_chans in (1, 3), "must be 1 or 3"),
        ("mil.source", cfg.mil.source in MIL_SOURCES, f"must be one of {', '.join(MIL_SOURCES)}"),
        ("mil.instances", cfg.mil.instances >= 1, "must be >= 1"),
        ("mil.slices", cfg.mil.slices in (1, 3), "must be 1 (a slice's window channels) or 3 (2.5D)"),
        ("mil.order", cfg.mil.order in ("position", "instance", "name"), "must be position, instance or name"),
        ("mil.tile_size", cfg.mil.tile_size >= 8, "must be >= 8"),
        ("mil.tissue", 0 <= cfg.mil.tissue < 1, "must be in [0, 1)"),
        ("mil.max_tiles", cfg.mil.max_tiles >= 1, "must be >= 1"),
        ("mil.augment", cfg.mil.augment in ("row", "instance"), "must be row or instance"),
        ("mil.pool", cfg.mil.pool in MIL_POOLS, f"must be one of {', '.join(MIL_POOLS)}"),
        ("mil.aux_weight", cfg.mil.aux_weight >= 0, "must be >= 0 (0 = off)"),
        ("mil.join", cfg.mil.source != "views" or len(cfg.mil.join) > 0, "must name the columns of a row's views "
         "with mil.source=views (RSNA Mammography: [patient_id, laterality])"),
        ("train.mixup", cfg.mil.source == "none" or cfg.train.mixup == 0 and cfg.train.cutmix == 0,
         "and train.cutmix must be 0 with mil.source set: they mix single images"),
        ("data.layout", cfg.data.layout in ("csv", "folders", "siim_covid", "visits"),
         "must be csv, folders, siim_covid or visits"),
        ("data.extra", cfg.mil.source == "none" or not cfg.data.extra, "must be empty with mil.source set: its images "
         "would join the training part one image a row, not as rows of many"),
        ("data.duplicates", cfg.mil.source == "none" or not cfg.data.duplicates, "must be empty with mil.source set: "
         "it pairs single images (explain.py does not search MIL rows for duplicates)"),
        ("data.group_unmatched", cfg.data.group_unmatched in ("error", "own"), "must be error or own"),
        ("data.label_rows", cfg.data.label_rows in ("refuse", "first", "aggregate"),
         "must be refuse, first or aggregate"),
        ("data.limit", cfg.data.limit == 0 or cfg.data.limit >= cfg.folds.n_folds,
         "must be 0 (every image) or >= folds.n_folds (each fold needs an image of every class)"),
        ("data.class_values", not cfg.data.class_values or len(cfg.data.class_values) == len(cfg.data.classes),
         "must name one value per entry of data.classes"),
        ("data.positive_class", not cfg.data.positive_class or not cfg.data.classes
         or cfg.data.positive_class in [str(v) for v in [*cfg.data.classes, *cfg.data.class_values]],
         f"is not one of data.classes {list(cfg.data.classes)} (or data.class_values {list(cfg.data.class_values)})"),
        ("data.exclude", isinstance(cfg.data.exclude, str) or OmegaConf.is_list(cfg.data.exclude)
         and all(isinstance(v, (str, int)) for v in cfg.data.exclude),
         "must be a list of image ids or the path of a CSV with an id column"),
        ("data.hidden_test_size", cfg.data.hidden_test_size >= 0, "must be >= 0 (0 = unknown)"),
        ("data.runtime_limit_hours", cfg.data.runtime_limit_hours > 0, "must be > 0"),
        ("data.inference_server", not cfg.data.inference_server
         or re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", cfg.data.inference_server) is not None,
         "must be module.Class (e.g. kaggle_evaluation.rsna_inference_server.RSNAInferenceServer) or empty"),
        ("data.inference_server", not cfg.data.inference_server or cfg.data.code_competition,
         "names a served competition's gateway: set data.code_competition=true too (Kaggle takes no CSV there)"),
        ("images.cache_format", cfg.images.cache_format in ("png", "npy"), "must be png or npy"),
        ("images.dicom_frame", cfg.images.dicom_frame in ("first", "middle", "error"),
         "must be first, middle or error"),
        ("predict.ensemble", cfg.predict.ensemble in ("mean_prob", "mean_logit"),
         "must be mean_prob or mean_logit"),
        ("predict.fold_weights", cfg.predict.fold_weights in ("equal", "cv"), "must be equal or cv"),
        ("predict.output", cfg.predict.output in ("auto", "label", "prob"), "must be auto, label or prob"),
        ("predict.shape", cfg.predict.shape in ("wide", "long"), "must be wide or long"),
        ("predict.long_separator", cfg.predict.shape != "long" or cfg.predict.long_separator != "",
         "must not be empty with predict.shape=long"),
        ("predict.folds", all(0 <= k < cfg.folds.n_folds for k in cfg.predict.folds)
         and len(set(cfg.predict.folds)) == len(cfg.predict.folds),
         f"must list distinct fold numbers 0..{cfg.folds.n_folds - 1} (folds.n_folds={cfg.folds.n_folds})"),
        ("predict.on_bad_image", cfg.predict.on_bad_image in ("fail", "prior"), "must be fail or prior"),
        *((key, _compile_ok(OmegaConf.select(cfg, key)), f"must be false, true or a torch.compile mode "
           f"({', '.join(COMPILE_MODES)})") for key in ("train.compile", "predict.compile")),
    ]
    for key, ok, why in checks:
        if not ok:
            value = OmegaConf.select(cfg, key)
            raise UserError(f"bad value for config key '{key}': {value!r} {why}")
    _check_windows(list(cfg.images.dicom_windows))


def _compile_ok(value: Any) -> bool:
    """train.compile / predict.compile: a bool (true = torch.compile's default mode) or a mode name."""
    return isinstance(value, bool) or isinstance(value, str) and value in COMPILE_MODES


def _check_windows(windows: list[Any]) -> None:
    """images.dicom_windows: 0, 1 or 3 entries, each a name or [center, width] with width >= 1 (the names
    themselves are comp/data/dicom.py's to check: it holds the table)."""
    if len(windows) not in (0, 1, 3):
        raise UserError(f"bad value for config key 'images.dicom_windows': {len(windows)} windows; give 1 (grey) "
                        f"or 3 (one per channel), or none for the file's own")
    for i, w in enumerate(windows):
        if isinstance(w, str):
            continue
        pair = list(w) if OmegaConf.is_list(w) or isinstance(w, (list, tuple)) else None
        ok = pair is not None and len(pair) == 2 and all(isinstance(v, (int, float)) for v in pair)
        if not ok or not pair[1] >= 1:
            shown = OmegaConf.to_container(w) if OmegaConf.is_config(w) else w
            raise UserError(f"bad value for config key 'images.dicom_windows[{i}]': {shown!r} is neither a "
                            f"window name nor [center, width] with width >= 1")


def read_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Any:
    """Build the config: schema defaults, then the YAML at `path` (default configs/demo.yaml), then
    `KEY=VALUE` overrides with dotted keys, its types and value ranges checked. Returns a read-only OmegaConf
    object typed by `Config`. Scripts and notebooks use comp.experiment.load_config, which checks the rest.

    Raises:
        UserError: the file is missing or not YAML, a key is unknown, a value has the wrong type or an
            impossible value, or an override is not of the form KEY=VALUE.
    """
    path = Path(path).expanduser().absolute() if path is not None else DEFAULT_CONFIG
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    base = OmegaConf.structured(Config)
    try:
        loaded = OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError and friends: where, then what
        raise UserError(f"config file {path} is not valid YAML{_yaml_where(e)}") from None
    if not isinstance(loaded, DictConfig):
        raise UserError(f"config file {path} must hold a mapping of keys, got {type(loaded).__name__}")
    try:
        cfg = OmegaConf.merge(base, loaded)
    # TypeError: a list where a mapping belongs; YAMLError: control characters in a value
    except (OmegaConfBaseException, TypeError, ValueError, yaml.YAMLError) as e:
        raise UserError(_explain(e, f"in {path}")) from None
    for item in overrides or []:
        if "=" not in item or item.startswith("="):
            raise UserError(f"override '{item}' is not of the form KEY=VALUE (e.g. epochs=3)")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except (OmegaConfBaseException, TypeError, ValueError, yaml.YAMLError) as e:
            empty = item.endswith("=") and "'None'" in str(e)  # `KEY=` reads as null, not as ""
            hint = f"; an empty string is written {item}\"\" (quoted for the shell: '{item}\"\"')" if empty else ""
            raise UserError(_explain(e, f"in override '{item}'") + hint) from None
    if str(cfg.model.pretrained) in ("False", "false"):  # YAML `pretrained: false` arrives as the string 'False'
        cfg.model.pretrained = None  # no weights, as the key's default says (it was refused as a timm tag)
    check_values(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def resolve_path(value: str) -> Path:
    """A path from the config: absolute as given, relative paths taken from the repo root so scripts
    behave the same from any working directory."""
    p = Path(value).expanduser()
    return Path(os.path.normpath(p if p.is_absolute() else REPO_ROOT / p))


def path_hint(value: str) -> str:
    """For a message about a config path: how a relative `value` was resolved (from the kit's folder,
    not the working directory), or "" for an absolute one."""
    p = Path(value).expanduser()
    return "" if p.is_absolute() else f" ({value!r} is taken relative to the kit's folder {REPO_ROOT})"


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML, the form saved next to every run."""
    return OmegaConf.to_yaml(cfg)


MIL_KEYS = ("mil.source", "mil.folder", "mil.series", "mil.join", "mil.instances", "mil.slices", "mil.order",
            "mil.tile_size", "mil.tissue", "mil.max_tiles", "mil.pool")  # what a multiple-instance row feeds the model


# What a checkpoint's weights mean: the architecture, its input, the classes, and the images and folds it
# was trained on. Paths (data.root, cache location), download settings and the training recipe are left out,
# so the same folds can be predicted from a Kaggle notebook's /kaggle/input or resumed with more epochs.
HASHED_KEYS = ("model.name", "model.in_chans", "image_size", "images.preprocess", "data.layout", "data.train_csv",
               "data.id_column", "data.label_column", "data.train_images", "data.classes", "data.class_values",
               "data.group_pattern", "folds", "data.exclude", "data.limit", "task", "model.head",
               "data.label_columns", "data.group_column", "data.extra", "data.extra_only", "data.duplicates",
               "data.heads", *MIL_KEYS)
# Keys added after checkpoints of the old hash existed: hashed only when not at their default, so those
# checkpoints still load.
HASHED_WHEN_SET = {"data.exclude": [], "data.limit": 0, "task": "multiclass", "model.head": "auto",
                   "data.label_columns": [], "data.group_column": "", "data.extra": [], "data.extra_only": False,
                   "data.duplicates": "", "data.heads": {},
                   **{k: None for k in MIL_KEYS}}  # mil.*: hashed when mil.source is set


def config_hash(cfg: Any, keys: tuple[str, ...] = HASHED_KEYS) -> str:
    """A short hash of the config keys that decide what a checkpoint means (HASHED_KEYS).
    Resuming or predicting with a different hash is refused; other keys (epochs, logging) may change."""
    picked = {}
    for k in keys:
        v = OmegaConf.select(cfg, k)
        v = OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
        if k in HASHED_WHEN_SET and v in (HASHED_WHEN_SET[k], "", None):
            continue
        if k.startswith("mil.") and OmegaConf.select(cfg, "mil.source") in ("none", None):
            continue
        picked[k] = v
    return hashlib.sha256(repr(sorted(picked.items())).encode()).hexdigest()[:12]
