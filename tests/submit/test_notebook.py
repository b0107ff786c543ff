"""The whole code-competition notebook flow (comp.submit.notebook, scripts/submit.py --notebook) with the real
`kaggle` CLI (kaggle 2.x) against a fake of Kaggle's API on loopback (tests/fake_kaggle.py): the models
dataset created (then versioned), the kernel pushed and run, its submission scored and recorded. The pushed
kernel runs here as Kaggle runs it, a process of its own with the network and simplejpeg blocked, and writes
predict.py's CSV; a kernel that fails on Kaggle is one error line naming what was already created."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import kaggle_env
import pandas as pd
import pytest
import torch
from fake_kaggle import USER, Competition, FakeKaggle
from helpers import make_experiment, one_error, run_main
from kaggle_env import CLI, offline_env

pytestmark = pytest.mark.skipif(not CLI.is_file(), reason="the kaggle CLI is not installed beside the interpreter")
fake, api = kaggle_env.fake, kaggle_env.api  # the fixtures: the fake of Kaggle's API, the real CLI at it


def _run_pushed_kernel(root: Path, work: Path):
    """The fake's kernel runner: the pushed kernel.py, run as Kaggle would, with the dataset's files (its
    zips extracted, as Kaggle does) and the competition's data mounted under an input folder, no network
    and no simplejpeg."""

    def run(body: dict, fake: FakeKaggle) -> tuple[str, str]:
        inp = work / "input"
        (inp / "tiny-code-nb").symlink_to(root)
        for source in body["datasetDataSources"]:
            mount = inp / source.split("/")[1]
            for name, data in fake.dataset_files(source).items():
                if name.endswith(".zip"):
                    zipfile.ZipFile(io.BytesIO(data)).extractall(mount / name[:-4])
                else:
                    (mount / name).parent.mkdir(parents=True, exist_ok=True)
                    (mount / name).write_bytes(data)
        (work / "kernel.py").write_text(body["text"])
        (work / "working").mkdir()
        env = {**offline_env(work), "KIT_KAGGLE_INPUT": str(inp), "KIT_KAGGLE_WORKING": str(work / "working")}
        res = subprocess.run([sys.executable, str(work / "kernel.py")], capture_output=True, text=True, env=env,
                             cwd=work / "working", timeout=300)
        (work / "log.txt").write_text(res.stderr)
        return ("COMPLETE", "") if res.returncode == 0 else ("ERROR", res.stderr.strip().splitlines()[-1])

    (work / "input").mkdir(parents=True)
    return run


def test_the_notebook_flow_end_to_end(fake, api, tmp_path):
    ex = make_experiment(tmp_path, "data.competition=tiny-code-nb", "data.code_competition=true",
                         f"predict.submissions_dir={tmp_path / 'subs'}")
    fake.competitions["tiny-code-nb"] = Competition(code=True, outcome=("COMPLETE", "0.654", ""))
    fake.run_kernel = _run_pushed_kernel(ex["root"], tmp_path / "kaggle")
    try:
        code, _, err = run_main("submit.py", "--notebook", "-m", "nb 2 folds", "--poll", "0.05",
                                *ex["overrides"])
    finally:
        fake.run_kernel = None
    assert code == 0, err + (tmp_path / "kaggle" / "log.txt").read_text()
    methods = [p.rsplit("/", 1)[1] for m, p, _ in fake.requests if p.startswith("/api/")]
    assert methods[0] == "GetDatasetStatus" and "CreateDatasetVersion" not in methods  # absent: created
    assert methods.index("CreateDataset") < methods.index("SaveKernel") < methods.index("CreateCodeSubmission")
    kernel_id = f"{USER}/tiny-code-nb-runs-infer"
    saved = fake.calls("SaveKernel")[0]
    assert saved["slug"] == kernel_id and saved["competitionDataSources"] == ["tiny-code-nb"]
    assert saved["datasetDataSources"] == [f"{USER}/tiny-code-nb-runs-models"]
    assert saved["enableInternet"] is False and saved.get("enableGpu", False) is False
    meta = json.loads((ex["out"] / "kernel" / "kernel-metadata.json").read_text())
    assert meta["enable_internet"] is False and meta["competition_sources"] == ["tiny-code-nb"]
    sub = fake.calls("CreateCodeSubmission")[0]
    assert (sub["kernelSlug"], sub["kernelVersion"], sub["fileName"]) == ("tiny-code-nb-runs-infer", 1,
                                                                          "submission.csv")
    # What the kernel wrote on "Kaggle" (simplejpeg and the network blocked) is predict.py's CSV.
    from comp.predict.submission import make_submission

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the kernel's OMP_NUM_THREADS=1: CPU sums depend on the thread count
    try:
        local = make_submission(ex["cfg"]).text
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "kaggle" / "working" / "submission.csv").read_text() == local
    row = pd.read_csv(tmp_path / "subs" / "index.csv", dtype=str, keep_default_na=False).iloc[-1]
    assert (row["status"], row["public_score"], row["kernel"]) == ("COMPLETE", "0.654", f"{kernel_id} v1")

    # Again, the notebook failing on Kaggle: the dataset is versioned, and the error names what exists.
    fake.kernel_outcome = ("ERROR", "FileNotFoundError: /kaggle/input/tiny-code-nb")
    try:
        code, _, err = run_main("submit.py", "--notebook", "-m", "again", "--poll", "0.05",
                                *ex["overrides"])
    finally:
        fake.kernel_outcome = ("COMPLETE", "")
    line = one_error(code, err)
    assert f"notebook {kernel_id} version 2 ended ERROR on Kaggle: FileNotFoundError" in line
    assert f"already created on Kaggle: a new version of dataset {USER}/tiny-code-nb-runs-models, notebook " \
           f"{kernel_id} version 2" in line
    assert len(fake.calls("CreateDatasetVersion")) == 1 and len(fake.calls("CreateCodeSubmission")) == 1
