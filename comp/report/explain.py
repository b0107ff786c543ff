"""What the model looked at: Grad-CAM review sheets of each fold on its own validation images, with the
error-analysis tables (comp.report.errors_analysis), as PNG pages and one self-contained HTML page.

Per fold (its `best.pt`, the weights it was validated with) and per true class (multi-label: per label;
regression: all images as one group), three sections:
- `errors`: the most confident mistakes (wrong, highest predicted probability; an ordinal regression
  head's wrong grades, and a regression's values, by largest absolute error; a label's mistakes at 0.5 by
  its largest BCE);
- `unsure`: the least confident correct predictions (none for a regression);
- `random`: a seeded random sample, the unbiased look.
Each image is shown as the model saw it (comp.data.cache.image_loader, `aug.valid`, then
comp.data.loader.to_input) beside its Grad-CAM heat map (Selvaraju et al., ICCV 2017), from the
`grad-cam` package (pytorch-grad-cam), for the logit of the prediction: the predicted class (softmax);
the one logit of a binary model, negated when the negative class is predicted (what raises P(predicted));
the label's own logit (multi-label); the value (a regression head). The CAM layer is the output of
`model.forward_features`, the last feature map before global pooling, for the kit's ResNets (its `layer4`)
and timm models alike (`cam_target`); token maps (ViT) and NHWC maps (Swin) are reshaped to (B, C, h, w).
A chest X-ray model lighting up the burned-in hospital marker instead of the lungs shows here.

MIL rows (mil.source set: a row is a series, a study, a breast's views or a slide's tiles; comp.models.mil):
the CAM is taken through the full MIL forward pass, so it explains the pooled row prediction: the row's N
instances go through the backbone as one batch, the CAM layer is the backbone's feature map
(`forward_features`, or a token ViT's last `norm1`), and the gradient of the row's logit reaches every
instance through the pool (`instance_cams`). Each row is shown as the TOP_INSTANCES instances that weigh
most (`MilModel.instance_weights`: attention weights; max: the share of features an instance wins; mean,
gru, transformer: uniform, then the first ones in slice order), a strip of the instances over a strip of
their heat maps, each with its index and weight. The duplicate search (pHash of single images) is skipped
for MIL rows, with a log line and a note on the page.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from comp.data.augment import build_transform
from comp.data.competition import Competition, load_competition
from comp.data.loader import IMAGENET, ImageDataset, to_input
from comp.data.mil_cache import sample_loader
from comp.device import pick_device
from comp.errors import UserError
from comp.experiment import Experiment
from comp.experiment.model import input_config
from comp.experiment.oof import oof_task
from comp.io import write_text
from comp.log import log
from comp.models.mil import MilModel
from comp.report import errors_analysis as ea
from comp.report.cam import grad_cam, instance_cams, overlay, top_instances
from comp.report.review import SECTIONS, review_rows, section_titles
from comp.report.sheets import data_uri, sheet, strip

PER = {"multilabel": " per label", "regression": ""}
PER.update({k: " per class" for k in ("multiclass", "binary", "ordinal")})


def render(cfg: Any, comp: Competition, model: nn.Module, rows: pd.DataFrame, device: torch.device,
           load: Any = None, norm: Any = IMAGENET) -> list[dict]:
    """Each row's image as the model saw it and its Grad-CAM overlay (`review_rows`' cam and sign): dicts of
    id, section, truth, pred (as shown), ok, image and heat ((H, W, 3) uint8). `load`: the image loader
    (default `sample_loader(cfg, comp)`). A MIL model's rows (`instance_cams`): image and heat are strips of
    its TOP_INSTANCES heaviest instances, with `instances` (their indices), `weights` and `n` (instances in
    the row), and `images` / `heats`, the instances at their size."""
    paths = dict(zip(comp.train["id"], comp.train["path"], strict=True))
    missing = [i for i in rows["id"] if i not in paths]
    if missing:
        raise UserError(f"OOF id {missing[0]!r} is not in the training data (data changed since training?)")
    ds = ImageDataset([paths[i] for i in rows["id"]], None, cfg.image_size,
                      build_transform(cfg.aug.valid, "aug.valid"), load=load or sample_loader(cfg, comp))
    model = model.to(device)
    items = []
    for start in range(0, len(ds), cfg.batch_size):
        idx = range(start, min(start + cfg.batch_size, len(ds)))
        xb = torch.stack([ds[i][0] for i in idx])  # (B, 3, H, W) uint8
        x = to_input(xb, device, cfg.model.in_chans, norm=norm)
        part = rows.iloc[list(idx)]
        targets, signs = part["cam"].astype(int).tolist(), part["sign"].astype(int).tolist()
        if isinstance(model, MilModel):
            if xb.ndim == 4:  # a MIL model on single images (mil.source none cannot train one): one instance
                xb, x = xb.unsqueeze(1), x.unsqueeze(1)
            cams, weights = instance_cams(model, x, targets, signs)
        else:
            cams = grad_cam(model, x, targets, signs)
        for b, (_, r) in enumerate(part.iterrows()):
            it = {"id": r["id"], "section": r["section"], "truth": r["truth"], "pred": r["pred"], "ok": r["ok"]}
            if isinstance(model, MilModel):
                top = top_instances(weights[b])
                imgs = [xb[b, j].permute(1, 2, 0).numpy() for j in top]
                heats = [overlay(im, cams[b, j]) for im, j in zip(imgs, top, strict=True)]
                it.update(image=strip(imgs), heat=strip(heats), images=imgs, heats=heats, instances=top.tolist(),
                          weights=weights[b][top].tolist(), n=int(xb.shape[1]))
            else:
                img = xb[b].permute(1, 2, 0).numpy()
                it.update(image=img, heat=overlay(img, cams[b]))
            items.append(it)
    return items


def _card(it: dict) -> str:
    cls = "" if it["ok"] is None else "ok" if it["ok"] else "bad"
    mil = "weights" in it  # a MIL row: strips of its heaviest instances, their indices and weights
    inst = ("<br>instances " + ", ".join(f"#{i} (w {w:.3f})" for i, w in zip(it["instances"], it["weights"],
                                                                            strict=True))
            + f" of {it['n']}") if mil else ""
    return (f'<figure{" class=mil" if mil else ""}><img src="{data_uri(it["image"])}" alt="image">'
            f'{"<br>" if mil else ""}<img src="{data_uri(it["heat"])}" '
            f'alt="Grad-CAM"><figcaption>{html.escape(str(it["id"]))}<br>truth {html.escape(it["truth"])} · '
            f'<span class="{cls}">pred {html.escape(it["pred"])}</span>{inst}</figcaption></figure>')


def _table(df: pd.DataFrame, rows: int = 50) -> str:
    if df.empty:
        return "<p>none</p>"
    more = f"<p>first {rows} of {len(df)} rows; all in the CSV</p>" if len(df) > rows else ""
    return df.head(rows).to_html(index=False, escape=True, float_format=lambda v: f"{v:.4f}", border=0) + more


def _pairs(dups: pd.DataFrame, images: dict[tuple[str, str], np.ndarray], rows: int = 24) -> str:
    """The first duplicate pairs, both images side by side with their labels (`images`: (set, id) -> image)."""
    out = []
    for _, r in dups.head(rows).iterrows():
        cap = (f"{html.escape(str(r['id_a']))} ({r['set_a']}, {html.escape(str(r['label_a']) or '?')}) · "
               f"{html.escape(str(r['id_b']))} ({r['set_b']}, {html.escape(str(r['label_b']) or '?')}) · "
               f"distance {r['distance']}{' · <span class=bad>labels differ</span>' if r['conflict'] else ''}")
        a, b = images[(r["set_a"], r["id_a"])], images[(r["set_b"], r["id_b"])]
        out.append(f'<figure><img src="{data_uri(a)}" alt="a"><img src="{data_uri(b)}"'
                   f' alt="b"><figcaption>{cap}</figcaption></figure>')
    return "".join(out)


CSS = ("body{font-family:sans-serif;margin:1em}figure{display:inline-block;margin:4px;border:1px solid #ccc;"
       "padding:4px;font-size:12px;vertical-align:top}figure img{width:160px;height:160px;object-fit:contain;"
       "image-rendering:pixelated}figure.mil img{width:auto}.ok{color:green}.bad{color:red}"
       "table{border-collapse:collapse;font-size:12px}"
       "td,th{padding:2px 6px;border-bottom:1px solid #ddd}")
TABLE_TITLES = {"top_losses": "Top losses (all folds' OOF)", "confused_pairs": "Most confused class pairs",
                "group_metrics": "Per patient (folds.csv group)", "label_issues": "Label issue candidates "
                "(cleanlab confident learning on the OOF)", "duplicates": "Exact and near-duplicate images (pHash)"}


def html_page(title: str, folds: dict[int, list[dict]], tables: dict[str, pd.DataFrame],
              dup_images: dict[tuple[str, str], np.ndarray], notes: dict[str, str] | None = None,
              titles: dict[str, str] | None = None) -> str:
    """One self-contained HTML page (images as base64 data URIs): the sheets, then the tables, then a line
    for each table the task does not have (`notes`: name -> why). `titles`: the sections' headings
    (comp.report.review.section_titles; default SECTIONS)."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for k, items in folds.items():
        body.append(f"<h2>fold {k}</h2>")
        for s, name in (titles or SECTIONS).items():
            cards = "".join(_card(it) for it in items if it["section"] == s)
            body.append(f'<h3>{name}</h3><div class="sheet">{cards or "<p>none</p>"}</div>')
    for name, df in tables.items():
        body.append(f"<h2>{TABLE_TITLES.get(name, name)}</h2>{_table(df)}")
        if name == "duplicates" and not df.empty:
            body.append(_pairs(df, dup_images))
    for name, why in (notes or {}).items():
        body.append(f"<h2>{TABLE_TITLES.get(name, name)}</h2><p>{html.escape(why)}</p>")
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")


def duplicate_search_items(cfg: Any, comp: Competition, task: Any) -> pd.DataFrame:
    """`find_duplicates`' items: the competition's train and test images, plus data.extra's images (set
    `extra:<source>`) and data.pseudo's external ones (set `pseudo`), unlabelled: a re-encoded or resized
    copy of a training image in external data (other bytes, so not left out by comp.data.duplicates) would
    put its original into the training part of the fold that validates on it; duplicates.csv lists it."""
    from comp.data.competition import unique_ids
    from comp.data.extra import load_extra
    from comp.data.prepare import pseudo_paths

    items = ea.duplicate_items(comp.train, comp.test, task, comp.targets(comp.train))
    extra = load_extra(cfg, comp, stage=1)
    ours = set(items["path"].astype(str))
    pseudo = [p for p in pseudo_paths(cfg) if p not in ours]  # test images pseudo-labelled are already in
    outside = [extra[["id", "path"]].assign(set="extra:" + extra["source"].astype(str)),
               pd.DataFrame({"id": ["pseudo:" + i for i in unique_ids([Path(p) for p in pseudo], "data.pseudo")],
                             "path": pseudo, "set": "pseudo"})]
    outside = [o.assign(label="") for o in outside if len(o)]
    return pd.concat([items, *outside], ignore_index=True) if outside else items


def explain(exp: Experiment | Any, per_class: int = 4, out: Path | None = None, duplicates: bool = True) -> list[Path]:
    """Review sheets and error-analysis tables of the experiment `exp` (or of a config), written to `out`
    (default `<out_dir>/explain`): fold<K>_<section>.png, <table>.csv and review.html.

    Raises:
        UserError: no trained fold, no OOF, a checkpoint that does not match the config, task=multihead.
    """
    if per_class < 1:
        raise UserError(f"--per-class {per_class}: must be >= 1")
    exp = Experiment.of(exp)
    cfg = exp.cfg
    if cfg.task == "multihead":
        raise UserError("scripts/explain.py: review sheets per head are not built for task=multihead yet; "
                        "scripts/report.py draws each head's confusion matrix")
    out = out or exp.sub("explain")
    comp = load_competition(cfg)
    oof = exp.oof()
    task = oof_task(cfg, oof)
    folds_csv = exp.split.csv
    if folds_csv.is_file():
        groups = pd.read_csv(folds_csv, dtype={"id": str, "group": str}, keep_default_na=False)
        oof = oof.merge(groups[["id", "group"]], on="id", how="left")
    oof["group"] = oof["group"].fillna(oof["id"]) if "group" in oof.columns else oof["id"]
    load = sample_loader(cfg, comp)
    device = pick_device(cfg.device)
    written: list[Path] = []
    sheets: dict[int, list[dict]] = {}  # first: a checkpoint that does not match fails before the slow hashing
    for model in exp.load_models(comp.classes):
        k = exp.fold_of(model.path)
        if k in sheets:  # a seed bag: the sheets show the fold's first seed, on the rows the bag's OOF picks
            continue
        mine = oof[oof["fold"] == k]
        if mine.empty:
            log(f"explain: {exp.name(model.path)} has no out-of-fold predictions; skipped")
            continue
        sheets[k] = render(input_config(cfg, model), comp, model.model, review_rows(mine, task, per_class, cfg.seed),
                           device, load, model.norm)
        for s, name in section_titles(task).items():
            chosen = [it for it in sheets[k] if it["section"] == s]
            if chosen:
                title = f"fold {k}: {name} ({per_class}{PER[task.kind]})"
                written.append(sheet(chosen, title, out / f"fold{k}_{s}.png"))
    notes = {}
    if duplicates and cfg.mil.source != "none":  # pHash compares single images, not rows of many
        duplicates = False
        notes["duplicates"] = (f"not searched: mil.source={cfg.mil.source} rows are many images each, and the "
                               f"duplicate search compares single images")
        log(f"explain: duplicates not searched ({notes['duplicates'].split(': ', 1)[1]})")
    items = duplicate_search_items(cfg, comp, task) if duplicates else None
    tables = ea.analyse(oof, task, items, load)
    written += ea.write_tables(tables, out)
    dups = tables.get("duplicates", pd.DataFrame())
    # keyed by (set, id): a test or extra image may share a training image's id (another folder's counter)
    keys = list(zip(items["set"], items["id"], strict=True)) if items is not None else []
    paths = dict(zip(keys, items["path"], strict=True)) if items is not None else {}
    head = dups.head(24)
    shown = ({*zip(head["set_a"], head["id_a"], strict=True), *zip(head["set_b"], head["id_b"], strict=True)}
             if not dups.empty else set())
    if not task.has_classes:
        notes["confused_pairs"] = f"none: task={task.kind} has no classes"
    if task.head == "regression":
        notes["label_issues"] = f"none: task={task.kind} with a regression head has no class probabilities"
    page = html_page(f"{exp.dir.name}: what the model learned", sheets, tables, {i: load(paths[i]) for i in shown},
                     notes, section_titles(task))
    written.append(write_text(out / "review.html", page))
    n = sum(len(v) for v in sheets.values())
    what = "images" if cfg.mil.source == "none" else "rows (their heaviest instances)"
    log(f"explain: {len(sheets)} fold(s), {n} {what} reviewed; {out / 'review.html'}")
    return written
