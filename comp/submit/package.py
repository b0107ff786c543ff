"""An offline package for code competitions: one folder, uploaded as a Kaggle dataset, that predicts the
hidden test set in a notebook with no internet and nothing to install.

    <DIR>/infer.py              python infer.py --data /kaggle/input/<competition> -o submission.csv
    <DIR>/serve.py              predict() for a served competition's gateway (comp.submit.serve)
    <DIR>/config.yaml           the experiment's resolved config
    <DIR>/fold<K>/best.pt       each fold's validated weights (the EMA when that was validated), without
                                optimizer state: about a third of a training checkpoint
    <DIR>/thresholds.json       metric=qwk: the OOF-tuned cut-points
    <DIR>/comp/                 the kit's own code, the same that scripts/predict.py runs, with its LICENSE
    <DIR>/vendor/omegaconf/     appended to sys.path, so only used when the image lacks it
    <DIR>/dataset-metadata.json for `kaggle datasets create -p <DIR> --dir-mode zip`

Kaggle's Python image has torch, timm, albumentations, OpenCV, pandas, scikit-learn, PyYAML, tqdm and
safetensors, but omegaconf is not in its requirements (Kaggle/docker-python kaggle_requirements.txt), and
comp.config is built on it. It is pure Python (~0.5 MB, BSD-3, antlr4 vendored inside it since 2.4), so
it travels with the package rather than having the entry point re-implement the config schema: the
package runs exactly the code that made the local CSV. infer.py reads the same config, points data.root
at the competition's input and out_dir at the package, and turns the image cache off (the input folder
is read-only), and gives an unreadable test image the training class prior (predict.on_bad_image=prior, a
warning naming it: a hidden test set cannot be fixed by hand, and a failed notebook is a lost submission).
It reproduces scripts/predict.py's CSV byte for byte on the same device.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from comp import io, kaggle_cli
from comp.config import REPO_ROOT, resolve_path
from comp.errors import UserError
from comp.experiment import Experiment, load_config
from comp.experiment import checkpoint as ckpt_io
from comp.log import log
from comp.predict import thresholds
from comp.predict.predict import check_probs_path, save_probs

RUNTIME_WARN_SHARE = 0.5  # warn when the estimated run passes half the limit: Kaggle's GPUs are often slower
# than the packaging machine, and a notebook that times out on the hidden rerun scores nothing

INFER_PY = '''#!/usr/bin/env python
"""Offline inference of a packaged experiment (written by the kit's scripts/package.py):

    python infer.py [--data ROOT] [-o submission.csv] [--save-probs PATH] [KEY=VALUE ...]

ROOT is the competition's data (default /kaggle/input/<data.competition>). Only this folder is needed:
no network, no install; logs go to stderr, the validated CSV to -o FILE (written only when the whole
prediction succeeded, so a failed run never leaves an empty submission.csv behind), else to stdout."""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.dont_write_bytecode = True  # the Kaggle input folder is read-only
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no internet: albumentations' version check would fail
sys.path.insert(0, str(HERE))  # this folder's comp/ before any installed copy
sys.path.append(str(HERE / "vendor"))  # omegaconf, only where the image has none

from comp.submit.package import infer_main  # noqa: E402

if __name__ == "__main__":
    infer_main(HERE)
'''


SERVE_PY = '''"""predict() for a served code competition (written by the kit's scripts/package.py). In the notebook:

    import sys; sys.path.insert(0, "/kaggle/input/<this dataset>")
    import serve
    server = <Comp>InferenceServer(serve.predictor("/kaggle/input/<competition>"))

`serve.predict` is the same with the default data folder /kaggle/input/<data.competition>. The folds are
loaded on the first call, once; each call answers one item: predict(id, path(s)) -> a one-row DataFrame."""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.dont_write_bytecode = True  # the Kaggle input folder is read-only
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no internet: albumentations' version check would fail
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # this folder's comp/ before any installed copy
if str(HERE / "vendor") not in sys.path:
    sys.path.append(str(HERE / "vendor"))  # omegaconf, only where the image has none

from comp.submit.serve import Served  # noqa: E402


def predictor(data=None, *overrides):
    """A predict() over the competition's data folder `data`, with KEY=VALUE `overrides`."""
    return Served(HERE, data, overrides)


predict = predictor()
'''


RESUME_ONLY = ("optimizer", "scaler", "rng", "partial", "swa", "history")  # what prediction never reads


def _slim(ck: dict[str, Any]) -> dict[str, Any]:
    """A fold checkpoint reduced to what prediction needs: the validated weights and the metadata (what the
    model sees and predicts: comp.experiment.model)."""
    weights = ck["ema"] if ck.get("eval_weights") == "ema" and ck.get("ema") is not None else ck["model"]
    meta = {k: v for k, v in ck.items() if k not in (*RESUME_ONLY, "model", "ema", "eval_weights")}
    return {**meta, "model": weights, "ema": None, "eval_weights": "model"}


def _vendor_omegaconf(dest: Path) -> None:
    """Copy the installed omegaconf (and antlr4 for omegaconf < 2.4, which did not vendor it) to `dest`."""
    import omegaconf

    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    src = Path(omegaconf.__file__).parent
    shutil.copytree(src, dest / "omegaconf", ignore=ignore)
    if not (src / "vendor" / "antlr4").is_dir():
        import antlr4

        shutil.copytree(Path(antlr4.__file__).parent, dest / "antlr4", ignore=ignore)
    try:
        lic = next(f for f in metadata.distribution("omegaconf").files or [] if "LICENSE" in f.name.upper())
        shutil.copyfile(lic.locate(), dest / "omegaconf" / "LICENSE")
    except (StopIteration, metadata.PackageNotFoundError, OSError):
        pass


def _metadata(cfg: Any, dataset_id: str | None) -> dict[str, Any]:
    """dataset-metadata.json: title 6-50 characters, id owner/slug (slug: lowercase letters, digits, -); the
    owner, unless `dataset_id` names one, is the user the Kaggle CLI is logged in as."""
    name = f"{cfg.data.competition or 'comp'}-{Path(cfg.out_dir).name}-models"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:50].rstrip("-")
    if dataset_id is None:
        try:
            owner = kaggle_cli.username()  # whichever way the CLI is logged in (a token names no user)
        except UserError as e:
            owner = "INSERT_KAGGLE_USERNAME"
            log(f"dataset-metadata.json: the owner is {owner} ({e}); pass --id OWNER/SLUG, or edit it before "
                f"`kaggle datasets create`")
        dataset_id = f"{owner}/{slug}"
    elif not re.fullmatch(r"[\w.-]+/[a-z0-9][a-z0-9-]{2,49}", dataset_id):
        raise UserError(f"--id {dataset_id!r} is not owner/slug (slug: 3-50 lowercase letters, digits and '-')")
    title = f"{cfg.data.competition or 'comp'} {Path(cfg.out_dir).name} models"[:50]
    return {"title": title.ljust(6, "_"), "id": dataset_id, "licenses": [{"name": "CC0-1.0"}]}


def _sample_root(cfg: Any, k: int, dest: Path) -> Path | None:
    """A view of data.root whose test set is its first `k` test ids: the other entries symlinked, the ids
    CSV (data.test_csv and/or data.sample_submission, at the top of data.root) cut. None when the test ids
    come from no top-level CSV (then no estimate is made)."""
    root, d = resolve_path(cfg.data.root), cfg.data
    names = [n for n in (d.test_csv, d.sample_submission) if n]
    if not names or any(Path(n).parent != Path(".") or not (root / n).is_file() for n in names):
        return None
    import pandas as pd

    first = pd.read_csv(root / names[0], dtype=str, keep_default_na=False, encoding="utf-8-sig")
    keep = set(first[d.id_column].head(k))
    dest.mkdir(parents=True)
    for entry in root.iterdir():
        if entry.name not in names:
            (dest / entry.name).symlink_to(entry)
    for n in names:
        df = pd.read_csv(root / n, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        df[df[d.id_column].isin(keep)].to_csv(dest / n, index=False)
    return dest


def estimate_runtime(cfg: Any, pkg: Path, sample: int = 32) -> float | None:
    """Seconds the packaged infer.py should take on the hidden test set (data.hidden_test_size images),
    from two timed runs on this machine, on 1 and on `sample` public test images: the fixed cost (start,
    imports, loading the folds) plus the per-image cost times the hidden size. Logged with a warning when
    it passes RUNTIME_WARN_SHARE of data.runtime_limit_hours. Kaggle's accelerators (T4, P100) are often
    slower than the machine packaging, hence the margin. None when it cannot be measured (no hidden size,
    no top-level test ids CSV).

    Raises:
        UserError: infer.py fails on the sample (its last stderr line); in a served competition
            (data.inference_server) a warning instead, and None: its public test listing may name images
            the download does not hold.
    """
    import subprocess
    import tempfile
    import time

    hidden = cfg.data.hidden_test_size
    if hidden <= 0:
        log("run time not estimated: data.hidden_test_size is 0 (unknown)")
        return None
    times = {}
    with tempfile.TemporaryDirectory(prefix="runtime-") as tmp:
        for k in (1, sample):
            root = _sample_root(cfg, k, Path(tmp) / f"k{k}")
            if root is None:
                log("run time not estimated: the test ids are not in a CSV at the top of data.root")
                return None
            start = time.perf_counter()
            res = subprocess.run([sys.executable, str(pkg / "infer.py"), "--data", str(root),
                                  "data.solution_csv=''"], capture_output=True, text=True, cwd=tmp)
            times[k] = time.perf_counter() - start
            if res.returncode != 0:
                lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
                why = (f"{pkg / 'infer.py'} failed on a sample of {k} test image(s): "
                       f"{lines[-1] if lines else res.returncode}")
                if cfg.data.inference_server:  # served: the test items come with the gateway's calls, and the
                    log(f"warning: run time not estimated: {why}")  # public listing may name absent images
                    return None
                raise UserError(why)
            k_real = res.stdout.count("\n") - 1  # rows written (header excluded)
            if k == sample:
                sample = max(k_real, 2)
    per_image = max(times[max(times)] - times[1], 0.0) / (sample - 1)
    estimate = times[1] + per_image * (hidden - 1)
    limit = cfg.data.runtime_limit_hours * 3600
    msg = (f"estimated run time of infer.py on {hidden} hidden test images: {estimate / 3600:.2f} h "
           f"({times[1]:.1f} s fixed + {per_image * 1000:.1f} ms/image, on this machine); limit "
           f"{cfg.data.runtime_limit_hours:g} h")
    if estimate > RUNTIME_WARN_SHARE * limit:
        log(f"warning: {msg}: over {RUNTIME_WARN_SHARE:.0%} of the limit; Kaggle's notebook may time out "
            f"(fewer folds or TTA views, a smaller image_size, or data.kernel_gpu=true)")
    else:
        log(msg)
    return estimate


def build_package(exp: Experiment | Any, out: Path | None = None, dataset_id: str | None = None, force: bool = False,
                  estimate: bool | None = None) -> Path:
    """Gather the folds, config and thresholds of the experiment `exp` (or of a config) and the kit's code into
    `out` (default `<out_dir>/package`), built in a temporary folder and renamed when complete. With
    `estimate` (default: for a code competition with data.hidden_test_size set) the run time on the hidden
    test set is estimated (estimate_runtime).

    Raises:
        UserError: no trained fold, a fold trained with another config, `out` exists (without `force`).
    """
    exp = Experiment.of(exp)
    cfg = exp.cfg
    out = io.check_dir(Path(out) if out is not None else exp.sub("package"), "-o" if out is not None else "out_dir")
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"{out} already exists; pass --force to replace it, or -o another folder")
    models = exp.load_models()  # they agree with each other and with this config on what they see
    trained = exp.trained_folds()
    if len(trained) < cfg.folds.n_folds:
        log(f"packaging {len(trained)} of {cfg.folds.n_folds} folds (the others are not trained)")
    decoding = thresholds.fit_decoding(exp, len(models[0].classes))

    out.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_dir(out, "package") as tmp:  # a leftover of a killed run is cleared first
        pkg = Experiment(cfg, tmp)  # the package is an experiment folder of its own: its runs as the experiment's
        for m in models:
            ckpt_io.save(_slim(ckpt_io.load(m.path)), tmp / m.path.relative_to(exp.dir))
        # inference never needs the held-out answers (data.solution_csv): the package drops them
        shipped = OmegaConf.to_container(cfg, resolve=True)
        shipped["data"]["solution_csv"] = ""
        pkg.file("config").write_text(OmegaConf.to_yaml(shipped))
        if decoding is not None:
            shutil.copyfile(exp.file("thresholds"), pkg.file("thresholds"))
        shutil.copytree(REPO_ROOT / "comp", tmp / "comp", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        if (REPO_ROOT / "LICENSE").is_file():  # the kit's code travels under its licence (Apache-2.0)
            shutil.copyfile(REPO_ROOT / "LICENSE", tmp / "comp" / "LICENSE")
        _vendor_omegaconf(tmp / "vendor")
        (tmp / "infer.py").write_text(INFER_PY)
        (tmp / "serve.py").write_text(SERVE_PY)  # the served form: predict() for Kaggle's inference gateway
        (tmp / "dataset-metadata.json").write_text(json.dumps(_metadata(cfg, dataset_id), indent=2) + "\n")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log(f"package: {out} ({len(models)} model(s) of {len(trained)} fold(s), {size / 2**20:.1f} MiB)")
    if estimate or (estimate is None and cfg.data.code_competition and cfg.data.hidden_test_size > 0):
        estimate_runtime(cfg, out)
    log(f"upload:  kaggle datasets create -p {out} --dir-mode zip   (later: kaggle datasets version -p {out} "
        f"--dir-mode zip -m MESSAGE)")
    data = f"/kaggle/input/{cfg.data.competition or '<competition>'}"
    if cfg.data.inference_server:  # a served competition: the gateway calls the package's predict()
        log(f"in the notebook: sys.path.insert(0, '/kaggle/input/<dataset>'); import serve; "
            f"{cfg.data.inference_server.rsplit('.', 1)[1]}(serve.predictor('{data}')), then .serve() on "
            f"Kaggle's rerun, else .run_local_gateway(...) (docs/code-competitions.md)")
    else:
        log(f"in the notebook: !python /kaggle/input/<dataset>/infer.py --data {data} -o submission.csv")
    return out


def packaged_config(here: Path, data: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                    what: str = "--data") -> Any:
    """The config a package's entry point (infer.py, serve.py) runs with: the shipped config.yaml with
    data.root at `data` (default /kaggle/input/<data.competition>), out_dir at the package `here`, the image
    cache off (Kaggle's input folder is read-only) and predict.on_bad_image=prior, then `overrides`.

    Raises:
        UserError: `data` is not a folder (named as `what`), or a bad override.
    """
    packaged = load_config(Experiment.config_in(here))
    data = data or f"/kaggle/input/{packaged.data.competition}"
    if not Path(data).is_dir():
        raise UserError(f"{what} {data}: no such folder; pass the competition's data folder")
    return load_config(Experiment.config_in(here), [f"data.root={Path(data).resolve()}", f"out_dir={here}",
                                                   "images.cache=false", "predict.on_bad_image=prior",
                                                   *overrides])


def infer_main(here: Path, argv: list[str] | None = None) -> None:
    """The packaged entry point (infer.py): predict the test set under --data with this folder's folds."""
    from comp.cli import main

    p = argparse.ArgumentParser(description=INFER_PY.split('"""')[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="the competition's data folder (default /kaggle/input/<competition>)")
    p.add_argument("-o", "--output", default=None, metavar="FILE",
                   help="write the CSV to FILE, atomically and only on success (default: stdout)")
    p.add_argument("--save-probs", default=None, metavar="PATH", help="also write the test probabilities (.csv/.npy)")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one error line")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. batch_size=16")

    def run(args: argparse.Namespace) -> None:
        from comp.predict.submission import make_submission

        if args.save_probs:
            check_probs_path(args.save_probs)
        cfg = packaged_config(here, args.data, args.overrides)
        sub = make_submission(Experiment(cfg, here))  # the folds' own inputs, read from their checkpoints
        if args.save_probs:
            save_probs(Path(args.save_probs), sub.ids, sub.probs, sub.task)
        if sub.score is not None:
            log(f"held-out {cfg.metric}: {sub.score:.4f}")
        if args.output:
            io.write_text(args.output, sub.text, what="submission")
            log(f"submission: {args.output} ({len(sub.frame)} rows)")
        else:
            sys.stdout.write(sub.text)

    main(run, p, argv)
