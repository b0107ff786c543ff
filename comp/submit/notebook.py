"""The code-competition flow of `scripts/submit.py --notebook`: from a trained experiment to a scored
submission, through the real Kaggle CLI, one checked step at a time.

    1. build the offline package (comp.submit.package; run time estimated on the hidden test size)
    2. kaggle datasets create -p PKG --dir-mode zip     (or `datasets version` when it exists), then
       kaggle datasets status OWNER/SLUG until it is ready
    3. write the kernel folder: kernel-metadata.json (the competition and the dataset as sources,
       internet off, GPU from data.kernel_gpu) and kernel.py, which runs the package's infer.py on the
       mounted competition data into /kaggle/working/submission.csv, or in a served competition
       (data.inference_server) serves the package's predict() (serve.py) to the competition's gateway,
       which writes submission.parquet
    4. kaggle kernels push -p KERNEL, then kaggle kernels status OWNER/KERNEL until COMPLETE or ERROR
    5. kaggle competitions submit C -k OWNER/KERNEL -v VERSION -f submission.csv|.parquet -m MESSAGE, then Kaggle's
       score awaited and recorded in submissions/index.csv (comp.submit.kaggle.record)

The dataset and the notebook belong to the user the CLI is logged in as (comp.kaggle_cli.username),
whichever login it uses. Each step's answer is checked (the CLI exits 0 after "Kernel push error" and
"Dataset creation error"); a failed step is one `error:` line with Kaggle's message and what was already
created on Kaggle. Every status read (dataset, notebook, submission) takes a 404, 429 or 5xx for "not yet"
until its deadline, with a back-off (a brand-new dataset answers 404 for a while: kaggle-cli#890,
colabtools#294, fastkaggle PR #13); a refusal (400, 401, 403) ends the flow at once.
Sources: the CLI's own metadata formats (kaggle/api/kaggle_api_extended.py `kernels_push`,
`dataset_create_new`) and Kaggle's docs for kernel-metadata.json.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from comp import kaggle_cli
from comp.errors import UserError
from comp.experiment import Experiment
from comp.io import write_json, write_text
from comp.log import log
from comp.submit.kaggle import POLL_S, WAIT_S, record

KERNEL_FILE = "kernel.py"
DATASET_WAIT_S = 1800.0  # how long an uploaded dataset may take to be ready (Kaggle unzips and indexes it)
EXISTS_WAIT_S = 300.0  # how long `datasets status` may stay busy (429, 5xx) before the flow gives up
MOUNTED = '''INPUT = Path(os.environ.get("KIT_KAGGLE_INPUT", "/kaggle/input"))  # set elsewhere only by the kit's tests
WORKING = Path(os.environ.get("KIT_KAGGLE_WORKING", "/kaggle/working"))


def mounted(slug, marker):
    """Where Kaggle mounted a source: /kaggle/input/<slug>, or one or two levels deeper."""
    for p in [INPUT / slug, *sorted(INPUT.glob("*/" + slug)), *sorted(INPUT.glob("*/*/" + slug))]:
        if (p / marker).exists():
            return p
    sys.exit(f"{{slug}} is not mounted under {{INPUT}}: add it to the notebook's inputs")
'''  # both kernels' start: where Kaggle mounted the package and the data
KERNEL_PY = '''"""Written by the kit's scripts/submit.py --notebook: predicts {competition}'s test set with the offline
package of dataset {dataset} and writes submission.csv. No internet, nothing installed."""

import os
import subprocess
import sys
from pathlib import Path

''' + MOUNTED + '''

package = mounted({dataset_slug!r}, "infer.py")
data = mounted({competition!r}, ".")
# -o: the CSV is written only when the whole prediction succeeded (never an empty submission.csv)
code = subprocess.run([sys.executable, str(package / "infer.py"), "--data", str(data), "-o",
                       str(WORKING / "submission.csv")]).returncode
sys.exit(code)
'''


SERVED_KERNEL_PY = '''"""Written by the kit's scripts/submit.py --notebook: serves the predict() of the offline
package of dataset {dataset} (its serve.py) to {competition}'s inference gateway ({server}), which calls it
once per test item and writes submission.parquet. No internet, nothing installed."""

import importlib
import os
import sys
from pathlib import Path

''' + MOUNTED + '''

package = mounted({dataset_slug!r}, "serve.py")
data = mounted({competition!r}, ".")
sys.path.insert(0, str(package))
sys.path.append(str(data))  # the competition's kaggle_evaluation package ships in its data folder
import serve  # noqa: E402

module, _, name = {server!r}.rpartition(".")
server = getattr(importlib.import_module(module), name)(serve.predictor(str(data)))  # folds loaded on the 1st call
os.chdir(WORKING)  # the gateway writes submission.parquet where it runs
if os.getenv("KAGGLE_IS_COMPETITION_RERUN"):
    server.serve()
else:
    server.run_local_gateway((str(data),))
'''


def output_file(cfg: Any) -> str:
    """The file the notebook leaves for Kaggle: the gateway's submission.parquet in a served competition
    (data.inference_server), else infer.py's submission.csv."""
    return "submission.parquet" if cfg.data.inference_server else "submission.csv"


def _slug(text: str, most: int = 50) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:most].rstrip("-")


def kernel_folder(cfg: Any, dataset_id: str, kernel_id: str, folder: Path) -> Path:
    """Write `folder`/kernel-metadata.json and kernel.py for `kaggle kernels push -p folder`: kernel.py runs
    the package's infer.py, or with data.inference_server serves its serve.py to the competition's gateway.
    The title is the slug spelt with spaces, so Kaggle derives the same slug from it (kernels_push warns
    otherwise)."""
    slug = kernel_id.split("/", 1)[1]
    meta = {"id": kernel_id, "title": slug.replace("-", " "), "code_file": KERNEL_FILE, "language": "python",
            "kernel_type": "script", "is_private": True, "enable_gpu": bool(cfg.data.kernel_gpu),
            "enable_tpu": False, "enable_internet": False, "dataset_sources": [dataset_id],
            "competition_sources": [cfg.data.competition], "kernel_sources": [], "model_sources": []}
    folder.mkdir(parents=True, exist_ok=True)
    template = SERVED_KERNEL_PY if cfg.data.inference_server else KERNEL_PY
    write_text(folder / KERNEL_FILE, template.format(competition=cfg.data.competition, dataset=dataset_id,
                                                     dataset_slug=dataset_id.split("/", 1)[1],
                                                     server=cfg.data.inference_server))
    write_json(folder / "kernel-metadata.json", meta)
    return folder


def _poll(args: list[str], done: re.Pattern[str], wait_s: float, poll_s: float, what: str) -> re.Match[str]:
    """Run `kaggle <args>` until its output matches `done` (comp.kaggle_cli.poll: a 404, 429 or 5xx answer
    is "not yet", with a back-off); UserError after `wait_s` seconds, KaggleError at once on a refusal."""
    m = kaggle_cli.poll(args, done.search, wait_s, poll_s, what)
    if m is None:
        raise UserError(f"{what} not done after {wait_s:g} s; look again with: {kaggle_cli.describe(args)}")
    return m


def _dataset_exists(dataset: str, poll_s: float) -> bool:
    """Whether `dataset` exists on Kaggle (`kaggle datasets status`): 404 says no; a 429 or 5xx is asked
    again (a busy answer must not make the flow create a dataset that exists).

    Raises:
        KaggleError: a refusal (403, 401, 400). UserError: no answer within EXISTS_WAIT_S.
    """
    args = ["datasets", "status", dataset]
    try:
        seen = kaggle_cli.poll(args, lambda out: True, EXISTS_WAIT_S, poll_s, f"dataset {dataset}", retry=("busy",))
    except kaggle_cli.KaggleError as e:
        if e.kind == "missing":
            return False
        raise
    if seen is None:
        raise UserError(f"Kaggle did not answer {kaggle_cli.describe(args)} within {EXISTS_WAIT_S:g} s")
    return True


def notebook_submit(cfg: Any, message: str, config_path: str | None = None, dataset_id: str | None = None,
                    kernel_id: str | None = None, wait_s: float = WAIT_S, poll_s: float = POLL_S,
                    run_wait_s: float | None = None) -> dict[str, str]:
    """Package, upload, push and run the inference notebook, submit its output, await the score and
    record it. `run_wait_s` bounds the wait for the notebook's run (default data.runtime_limit_hours).

    Raises:
        UserError: not a competition, no owner, a step failing (Kaggle's message and what exists already),
            the notebook failing or not finishing, the submission failing to score (recorded).
    """
    from comp.submit.package import build_package

    if not message.strip():
        raise UserError("-m MESSAGE is empty: say what this submission is")
    competition = cfg.data.competition
    if not competition or cfg.data.source == "demo":
        raise UserError("--notebook needs a Kaggle competition: set data.competition (and data.source=competition)")
    owner = ""
    if not (dataset_id and kernel_id):  # the owner of the defaults: the user the CLI is logged in as
        try:
            owner = kaggle_cli.username()
        except UserError as e:
            raise UserError(f"{e}; or pass both --dataset-id and --kernel-id as OWNER/SLUG") from None
    base = _slug(f"{competition}-{Path(cfg.out_dir).name}", 40)
    kernel_id = kernel_id or f"{owner}/{base}-infer"
    if not re.fullmatch(r"[\w.-]+/[a-z0-9][a-z0-9-]{4,49}", kernel_id):
        raise UserError(f"--kernel-id {kernel_id!r} is not OWNER/SLUG (slug: 5-50 lowercase letters, digits, '-')")
    exp = Experiment(cfg)
    pkg = build_package(exp, exp.sub("package"), dataset_id=dataset_id or f"{owner}/{base}-models", force=True)
    dataset = json.loads((pkg / "dataset-metadata.json").read_text())["id"]
    created: list[str] = []
    try:
        if _dataset_exists(dataset, poll_s):
            kaggle_cli.run(["datasets", "version", "-p", str(pkg), "--dir-mode", "zip", "-m", message, "-q"])
            created.append(f"a new version of dataset {dataset}")
        else:
            kaggle_cli.run(["datasets", "create", "-p", str(pkg), "--dir-mode", "zip", "-q"])
            created.append(f"dataset {dataset}")
        log(f"kaggle: {created[-1]} uploaded")
        _poll(["datasets", "status", dataset], re.compile(r"^\s*ready\s*$", re.M | re.I), DATASET_WAIT_S, poll_s,
              f"dataset {dataset}")
        folder = kernel_folder(cfg, dataset, kernel_id, exp.sub("kernel"))
        pushed = kaggle_cli.run(["kernels", "push", "-p", str(folder)])
        m = re.search(r"Kernel version (\d+) successfully pushed", pushed)
        if not m:
            raise UserError(f"kaggle kernels push -p {folder} did not confirm a version: "
                            f"{kaggle_cli.last_line(pushed)!r}")
        version = int(m.group(1))
        created.append(f"notebook {kernel_id} version {version}")
        log(f"kaggle: {created[-1]} pushed; waiting for its run")
        run_wait = cfg.data.runtime_limit_hours * 3600 if run_wait_s is None else run_wait_s
        status = _poll(["kernels", "status", kernel_id],
                       re.compile(r'has status "(?:KernelWorkerStatus\.)?(COMPLETE|ERROR|CANCEL\w*)"(.*)', re.S),
                       run_wait, poll_s, f"notebook {kernel_id}")
        if status.group(1) != "COMPLETE":
            failure = re.search(r'Failure message: "(.*)"', status.group(2))
            raise UserError(f"notebook {kernel_id} version {version} ended {status.group(1)} on Kaggle"
                            + (f": {failure.group(1)}" if failure else "")
                            + f" (its log: kaggle kernels output {kernel_id} -p DIR)")
        output = kaggle_cli.run(["competitions", "submit", competition, "-k", kernel_id, "-v", str(version),
                                 "-f", output_file(cfg), "-m", message])
    except UserError as e:
        raise UserError(f"{e}; already created on Kaggle: {', '.join(created) or 'nothing'}") from None
    return record(cfg, output, message, f"{kernel_id}/{version}", config_path, kernel=f"{kernel_id} v{version}",
                  wait_s=wait_s, poll_s=poll_s)
