"""The served form of the offline package, for Kaggle's inference-server code competitions (RSNA 2025 and the
newer ones): the notebook does not write a CSV; Kaggle's gateway (the competition's `kaggle_evaluation`
package) calls a `predict()` the notebook serves, one test item at a time, and writes submission.parquet from
the answers:

    import kaggle_evaluation.<comp>_inference_server as s
    server = s.<Comp>InferenceServer(predict)
    if os.getenv("KAGGLE_IS_COMPETITION_RERUN"): server.serve()
    else: server.run_local_gateway((data_paths...))

`predict` here is a `Served` object (the package's serve.py, comp.submit.package.SERVE_PY, makes one): it
loads the folds on its first call, once, with the same code and config infer.py runs
(comp.submit.package.packaged_config, then comp.predict.predict.load_ensemble), and answers each call with
the item's row of the submission, in the sample submission's columns and encoding
(comp.predict.submission.build): the same values infer.py writes
for that id, to float precision (the batches differ). An item that fails (an unreadable image, an exception
in the model, no image for its id) gets the training class prior, decoded as any row, and a warning naming
it: a served run that stops scores nothing. What the gateway passes differs per competition (an id, a path,
a DataFrame of the row: Kaggle's competition pages), so `predict(item, paths=None)` takes each of them.

A MIL experiment (mil.source set, comp.data.mil) answers one MIL row per call (`mil_row`): a series or a
study is its folder (the item's path, else `mil.folder` formatted with the id under data.test_images), a
slide (tiles) its image file, a breast (views) the list of its view files, which the gateway must pass.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comp.errors import UserError
from comp.log import log

SERVED_OVERRIDES = ("num_workers=0",)  # one item per call: loader workers would be started for every call


def train_only(cfg: Any) -> Any:
    """`cfg` with no test listing (data.test_csv, data.sample_submission, data.test_images emptied): what the
    served predictor loads the competition with, for its classes, their values and the training prior. A
    served competition's items come with the gateway's calls, and its public test listing may name images
    its data folder does not hold (the hidden set replaces them on the rerun)."""
    from omegaconf import OmegaConf

    out = cfg.copy()
    OmegaConf.set_readonly(out, False)
    out.data.test_csv, out.data.sample_submission, out.data.test_images = "", "", []
    OmegaConf.set_readonly(out, True)
    return out


class Served:
    """The package's predict(): `Served(here, data, overrides)(item, paths=None)` -> a one-row DataFrame.

    `here` is the package folder, `data` the competition's data folder (default /kaggle/input/<competition>),
    `overrides` KEY=VALUE config overrides (as infer.py takes them). Nothing is read until the first call.
    """

    def __init__(self, here: str | Path, data: str | Path | None = None, overrides: tuple[str, ...] | list[str] = ()):
        self.here, self.data, self.overrides = Path(here), data, tuple(overrides)
        self.loaded: dict[str, Any] | None = None

    def load(self) -> dict[str, Any]:
        """Load the folds, the decoding and the class prior once (the first call does it).

        Raises:
            UserError: what infer.py refuses (no data folder, folds that disagree, a sample that fits no
                encoding); predict.shape=long, which is not served yet.
        """
        if self.loaded is not None:
            return self.loaded
        from comp.data.competition import load_competition
        from comp.device import pick_device
        from comp.experiment import Experiment
        from comp.predict import thresholds
        from comp.predict.predict import class_prior, load_ensemble
        from comp.predict.shapes import read_exact
        from comp.predict.submission import comp_task, output_mode, row_config
        from comp.submit.package import packaged_config

        cfg = packaged_config(self.here, self.data, [*SERVED_OVERRIDES, *self.overrides], what="served data")
        if cfg.predict.shape == "long":
            raise UserError("predict.shape=long is not served yet: the served predict() answers one wide row")
        exp = Experiment(cfg, self.here)
        comp = load_competition(train_only(cfg))  # the test items come with the calls
        rcfg = row_config(cfg)  # items are submission rows (data.submission_id_column when set)
        id_col = rcfg.data.id_column
        if cfg.data.sample_submission and (comp.root / cfg.data.sample_submission).is_file():
            columns = list(read_exact(comp.root / cfg.data.sample_submission, "sample submission").columns)
        else:
            columns = [id_col, cfg.data.label_column]
        if id_col not in columns:
            raise UserError(f"sample submission {comp.root / cfg.data.sample_submission} has no column {id_col!r} "
                            f"(data.id_column); its header is {columns}")
        device = pick_device(cfg.device)
        models, nets = load_ensemble(exp, comp, device)
        decoding = thresholds.fit_decoding(exp, comp.num_classes, comp)
        one = pd.DataFrame({c: ["x" if c == id_col else ""] for c in columns})
        self.loaded = dict(cfg=cfg, rcfg=rcfg, comp=comp, columns=columns, device=device, models=models, nets=nets,
                           decoding=decoding, mode=output_mode(rcfg, comp, one), task=comp_task(rcfg, comp),
                           prior=class_prior(comp, models[0].task).astype(np.float32)[None])
        log(f"served: {len(models)} model(s) loaded; each call answers one row of {columns}")
        return self.loaded

    def __call__(self, item: Any, paths: Any = None) -> pd.DataFrame:
        """One item's submission row.

        Args:
            item: the item's id (str or int), or a DataFrame (pandas or polars) of its row(s) holding the
                id column (data.id_column; data.submission_id_column when set), or with no `paths` an
                existing image file or folder, whose name (a file's without its suffix) is the id.
            paths: the item's image file, a list of them, or a folder of them (e.g. a series), their outputs
                combined by predict.aggregate as the CSV path combines a row's images; None: the test image
                named by the id under data.test_images, as infer.py finds it.

        Returns:
            A one-row pandas DataFrame in the sample submission's columns, in its order.

        Raises:
            UserError: an item without an id. Any failure after that gives the row the prior (a warning).
        """
        s = self.load()
        if paths is None and isinstance(item, (str, os.PathLike)) and Path(item).exists():  # a path alone (RSNA
            paths, item = item, Path(item).name if Path(item).is_dir() else Path(item).stem  # 2025: a series folder)
        item_id = self.item_id(item, s["rcfg"].data.id_column)
        try:
            probs = self.outputs(s, item_id, paths)
        except Exception as e:  # noqa: BLE001  one item's failure must not end the served run (documented)
            log(f"warning: served item {item_id!r}: {type(e).__name__}: {e}; its row is the training class prior")
            probs = s["prior"]
        return self.row(s, item_id, probs)

    @staticmethod
    def item_id(item: Any, id_col: str) -> str:
        """The id of `item`: itself (str, int), or the one value of `id_col` in a pandas / polars DataFrame.

        Raises:
            UserError: a DataFrame without the column, or with several ids in it.
        """
        if isinstance(item, (str, int, np.integer)):
            return str(item).strip()
        columns = list(getattr(item, "columns", []))
        if id_col not in columns:
            raise UserError(f"served item {type(item).__name__} has no id column {id_col!r} (its columns: {columns})")
        ids = list(dict.fromkeys(str(v).strip() for v in item[id_col]))  # polars and pandas Series both iterate
        if len(ids) != 1:
            raise UserError(f"served item holds {len(ids)} ids in {id_col!r} ({ids[:3]}); give one item per call")
        return ids[0]

    def image_paths(self, s: dict[str, Any], item_id: str, paths: Any) -> list[str]:
        """The item's image files (see __call__).

        Raises:
            UserError: no image for the id, an empty folder."""
        from comp.data.layouts import IMAGE_EXTS, _image_files, find_files

        if paths is None:
            cfg, comp = s["cfg"], s["comp"]
            return find_files(comp.root, list(cfg.data.test_images), pd.Series([item_id]), cfg.data.image_ext,
                              Path("served item"), "test_images", None).tolist()
        if isinstance(paths, (str, os.PathLike)):
            p = Path(paths)
            if p.is_dir():
                files = [str(f) for f in _image_files(p)]
                if not files:
                    raise UserError(f"served folder {p} holds no image ({', '.join(sorted(IMAGE_EXTS))})")
                return files
            return [str(p)]
        return [str(p) for p in paths]

    @staticmethod
    def mil_row(s: dict[str, Any], item_id: str, paths: Any) -> str:
        """The MIL row path of an item (module docstring): what comp.data.mil.sources reads.

        Raises:
            UserError: a path of the wrong kind for mil.source (a file for a series, a folder for a slide),
                views without their files, no folder for the id."""
        from comp.data.layouts import find_files
        from comp.data.mil import SEP, find_folders

        cfg, comp, src = s["cfg"], s["comp"], s["cfg"].mil.source
        if src == "views":
            if paths is None or isinstance(paths, (str, os.PathLike)) and Path(paths).is_dir():
                raise UserError(f"served item {item_id!r}: mil.source=views rows need their view files: pass "
                                f"predict(item, paths=[the row's image files])")
            return SEP.join(str(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths))
        if paths is None:
            folders, ids = list(cfg.data.test_images), pd.Series([item_id])
            if src == "tiles":
                return str(find_files(comp.root, folders, ids, cfg.data.image_ext, Path("served item"),
                                      "test_images", None).iloc[0])
            table = pd.DataFrame({cfg.data.id_column: [item_id]})
            return str(find_folders(cfg, comp.root, folders, table, ids, Path("served item"), "test_images",
                                    None).iloc[0])
        if not isinstance(paths, (str, os.PathLike)) or Path(paths).is_dir() != (src != "tiles"):
            want = "its image file" if src == "tiles" else "its folder"
            raise UserError(f"served item {item_id!r}: a mil.source={src} row is {want}, got {paths!r}")
        return str(paths)

    def outputs(self, s: dict[str, Any], item_id: str, paths: Any) -> np.ndarray:
        """(1, K) ensemble outputs of the item: its images' (comp.predict.predict.ensemble_outputs) combined by
        predict.aggregate when there are several."""
        from comp.experiment.oof import aggregate
        from comp.predict.predict import ensemble_outputs

        if s["cfg"].mil.source != "none":  # one MIL row: its instances pooled by the model, nothing to aggregate
            return ensemble_outputs(s["cfg"], s["comp"], s["models"], s["nets"], [self.mil_row(s, item_id, paths)],
                                    s["device"])
        files = self.image_paths(s, item_id, paths)
        probs = ensemble_outputs(s["cfg"], s["comp"], s["models"], s["nets"], files, s["device"])
        if len(files) > 1:
            probs = aggregate(np.zeros(len(files)), None, probs, s["cfg"].predict.aggregate, s["task"].positive)[2]
        return probs

    def row(self, s: dict[str, Any], item_id: str, probs: np.ndarray) -> pd.DataFrame:
        """The submission row of `item_id` for its (1, K) outputs, built and checked as infer.py's rows are."""
        from comp.predict import thresholds
        from comp.predict.checks import validate
        from comp.predict.submission import build

        rcfg, comp, decoding = s["rcfg"], s["comp"], s["decoding"]
        id_col = rcfg.data.id_column
        sample = pd.DataFrame({c: [item_id if c == id_col else ""] for c in s["columns"]})
        view = replace(comp, test=pd.DataFrame({"id": [item_id], "path": [""]}))
        keep = decoding is not None and decoding["method"] != "probs"
        df = build(rcfg, view, probs, thresholds.labels(probs, decoding) if keep else None, sample)
        validate(df, sample, id_col, s["mode"], list(comp.label_values))
        return df.reset_index(drop=True)
