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
fake, api, clock = kaggle_env.fake, kaggle_env.api, kaggle_env.clock  # the fake API, the real CLI at it, no sleeps


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


@pytest.fixture
def notebook_ex(tmp_path):
    """A code competition's experiment (folds with random weights) and its submissions folder."""
    return make_experiment(tmp_path, "data.competition=tiny-code-poll", "data.code_competition=true",
                           f"predict.submissions_dir={tmp_path / 'subs'}")


def _notebook(ex, *args):
    return run_main("submit.py", "--notebook", "-m", "polled", "--poll", "1", *ex["overrides"], *args)


def test_a_new_dataset_notebook_and_submission_not_visible_yet_and_a_busy_api_are_waited_out(fake, api, clock,
                                                                                            notebook_ex):
    fake.competitions["tiny-code-poll"] = Competition(code=True, outcome=("COMPLETE", "0.5", ""))
    fake.new_invisible = 1  # each new thing answers 404 (or is not listed) once (kaggle-cli#890)
    fake.fail("GetKernelSessionStatus", 429, 503)
    fake.fail("ListSubmissions", 503, 429)
    code, _, err = _notebook(notebook_ex)
    assert code == 0, err
    row = pd.read_csv(Path(notebook_ex["cfg"].predict.submissions_dir) / "index.csv", dtype=str,
                      keep_default_na=False).iloc[-1]
    assert (row["status"], row["public_score"], row["error"]) == ("COMPLETE", "0.5", "")
    methods = [p.rsplit("/", 1)[1] for _, p, _ in fake.requests if p.startswith("/api/")]
    after = methods[methods.index("CreateDataset"):]
    assert after.count("GetDatasetStatus") == 2 and after.count("GetKernelSessionStatus") == 5
    # --poll 1: a failure in a row doubles the wait, an answer ("RUNNING", "PENDING") resets it
    assert clock.sleeps == [2, 2, 4, 8, 1, 2, 4, 1, 1]
    assert "dataset tester/tiny-code-poll-runs-models: dataset tester/tiny-code-poll-runs-models not found" in err


def test_a_busy_existence_check_versions_the_dataset_rather_than_creating_it_again(fake, api, clock, notebook_ex):
    fake.competitions["tiny-code-poll"] = Competition(code=True)
    assert _notebook(notebook_ex)[0] == 0
    fake.requests.clear()
    fake.fail("GetDatasetStatus", 503, 429)  # the dataset exists; Kaggle is busy when asked
    code, _, err = _notebook(notebook_ex)
    assert code == 0, err
    assert fake.calls("CreateDataset") == [] and len(fake.calls("CreateDatasetVersion")) == 1


@pytest.mark.parametrize("method, code, says", [("GetDatasetStatus", 403, "rules"),
                                                ("GetKernelSessionStatus", 400, "Bad Request"),
                                                ("GetDatasetStatus", 401, "kaggle auth login")])
def test_a_refusal_while_polling_ends_the_flow_at_once_naming_the_command(method, code, says, fake, api, clock,
                                                                           notebook_ex):
    fake.competitions["tiny-code-poll"] = Competition(code=True)
    fake.new_invisible = 1
    fake.fail(method, code, after="CreateDataset")
    code_, _, err = _notebook(notebook_ex)
    line = one_error(code_, err, says, "already created on Kaggle: dataset tester/")
    command = "kaggle datasets status" if method == "GetDatasetStatus" else "kaggle kernels status"
    assert f"{command} tester/tiny-code-poll-runs-" in line
    assert fake.calls("CreateCodeSubmission") == []
    assert clock.sleeps == ([] if method == "GetDatasetStatus" else [2.0])  # the new notebook's 404 only


def test_a_served_competition_pushes_a_kernel_serving_the_package_to_its_gateway(fake, api, tmp_path):
    """data.inference_server: the kernel serves the package's serve.py to the competition's gateway (here the
    stand-in tests/submit/gateway.py, shipped in the competition's data as kaggle_evaluation is), whose
    submission.parquet is submitted and holds predict.py's rows."""
    ex = make_experiment(tmp_path, "data.competition=tiny-code-nb", "data.code_competition=true",
                         "data.inference_server=kaggle_evaluation.tiny_inference_server.TinyInferenceServer",
                         f"predict.submissions_dir={tmp_path / 'subs'}")
    (ex["root"] / "kaggle_evaluation").mkdir()
    (ex["root"] / "kaggle_evaluation" / "__init__.py").write_text("")
    (ex["root"] / "kaggle_evaluation" / "tiny_inference_server.py").write_text(
        (Path(__file__).parent / "gateway.py").read_text())
    fake.competitions["tiny-code-nb"] = Competition(code=True, outcome=("COMPLETE", "0.7", ""))
    fake.run_kernel = _run_pushed_kernel(ex["root"], tmp_path / "kaggle")
    try:
        code, _, err = run_main("submit.py", "--notebook", "-m", "served", "--poll", "0.05", *ex["overrides"])
    finally:
        fake.run_kernel = None
    assert code == 0, err + (tmp_path / "kaggle" / "log.txt").read_text()
    assert "TinyInferenceServer" in fake.calls("SaveKernel")[0]["text"]
    assert fake.calls("CreateCodeSubmission")[0]["fileName"] == "submission.parquet"
    assert not (tmp_path / "kaggle" / "working" / "submission.csv").exists()
    served = pd.read_parquet(tmp_path / "kaggle" / "working" / "submission.parquet")
    from comp.predict.submission import make_submission

    local = make_submission(ex["cfg"]).frame
    assert served.astype(str).to_dict("list") == local.astype(str).to_dict("list")
