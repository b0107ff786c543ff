"""SIIM-FISABIO-RSNA COVID-19 Detection (2021), its classification part: the submission's two kinds of rows
from a 4-class image model's outputs.

The download nests each radiograph as <split>/<StudyInstanceUID>/<SeriesInstanceUID>/<image id>.dcm; the
study labels (train_study_level.csv, id "<study>_study", one-hot negative / typical / indeterminate /
atypical) hold for every image of the study. The sample submission (id, PredictionString) has one row per
test study, "<study>_study" -> "negative P 0 0 1 1 typical P 0 0 1 1 indeterminate P 0 0 1 1 atypical P 0 0 1 1",
and one per test image, "<image>_image" -> "none P 0 0 1 1" (P: the image has no opacity). Opacity boxes are
outside the kit: an image row holds only the "none" term, and its P is the image's predicted P(negative),
the kit's approximation of "no opacity" (a negative study has no boxes; the converse does not hold).
The study's P are its images' outputs combined by predict.aggregate (comp.experiment.oof.aggregate).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from comp.data.siim_covid import (  # noqa: F401  (the layout's tables, imported from here too)
    IMAGE_SUFFIX,
    STUDY_COLUMNS,
    STUDY_SUFFIX,
    STUDY_WORDS,
    image_labels,
    layout_tables,
    study_images,
)
from comp.errors import UserError
from comp.experiment.oof import aggregate


def submission(cfg: Any, comp: Any, probs: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """make_submission for data.layout=siim_covid: the validated frame of test outputs `probs` (N_test, 4)
    in `comp.test` order (`prediction_strings` over data.sample_submission) and the outputs of each of its
    rows (a study's combined, an image's own), in its order."""
    from comp.predict.shapes import read_exact

    sample = read_exact(comp.root / cfg.data.sample_submission, "sample submission")
    images = comp.test.rename(columns={"id": "image", "row": "study"})
    df = prediction_strings(sample, images, probs, cfg.predict.aggregate)
    studies, _, study_probs = aggregate(images["study"].astype(str).to_numpy(), None, probs, cfg.predict.aggregate)
    table = {**{f"{s}{STUDY_SUFFIX}": p for s, p in zip(studies, study_probs, strict=True)},
             **{f"{i}{IMAGE_SUFFIX}": p for i, p in zip(images["image"].astype(str), probs, strict=True)}}
    return df, np.stack([table[i] for i in df[df.columns[0]].str.strip()])


def _p(x: float) -> str:
    return f"{float(x):.6g}"


def prediction_strings(sample: pd.DataFrame, images: pd.DataFrame, probs: np.ndarray, how: str = "mean"
                       ) -> pd.DataFrame:
    """The submission for per-image outputs `probs` (N, 4; softmax probabilities in STUDY_WORDS order, rows
    as `images`, which has columns image and study, e.g. `study_images`): `sample`'s header and row order,
    each "<study>_study" row "negative P 0 0 1 1 typical P ... atypical P 0 0 1 1" from its images' outputs
    combined by `how` (predict.aggregate: mean | max), each "<image>_image" row "none P 0 0 1 1" with P the
    image's P(negative) (module doc: the kit's approximation of "no opacity").

    Raises:
        UserError: `probs` not (len(images), 4) finite in [0, 1]; a sample id with neither suffix, or whose
            study or image has no prediction (naming it); an unknown `how`.
    """
    probs = np.asarray(probs, np.float64)
    if probs.shape != (len(images), len(STUDY_WORDS)) or not np.isfinite(probs).all() or \
            (probs < 0).any() or (probs > 1).any():
        raise UserError(f"SIIM-COVID19 rows need ({len(images)}, 4) probabilities in [0, 1]; got shape "
                        f"{probs.shape}")
    studies, _, study_probs = aggregate(images["study"].astype(str).to_numpy(), None, probs, how)
    by_study = dict(zip(studies, study_probs, strict=True))
    by_image = dict(zip(images["image"].astype(str), probs[:, 0], strict=True))
    id_col, value_col = sample.columns[0], sample.columns[1]
    values = []
    for rid in sample[id_col].astype(str).str.strip():
        if rid.endswith(STUDY_SUFFIX) and rid[:-len(STUDY_SUFFIX)] in by_study:
            p = by_study[rid[:-len(STUDY_SUFFIX)]]
            values.append(" ".join(f"{w} {_p(v)} 0 0 1 1" for w, v in zip(STUDY_WORDS, p, strict=True)))
        elif rid.endswith(IMAGE_SUFFIX) and rid[:-len(IMAGE_SUFFIX)] in by_image:
            values.append(f"none {_p(by_image[rid[:-len(IMAGE_SUFFIX)]])} 0 0 1 1")
        else:
            what = "study" if rid.endswith(STUDY_SUFFIX) else "image" if rid.endswith(IMAGE_SUFFIX) else None
            raise UserError(f"sample submission id {rid!r}: " + (f"no test {what} of that id was predicted" if what
                            else f"neither a '<study>{STUDY_SUFFIX}' nor an '<image>{IMAGE_SUFFIX}' row"))
    out = sample[[id_col]].copy()
    out[value_col] = values
    return out
