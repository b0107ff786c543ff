"""The examples run as a user runs them: examples/demo.ipynb (the kit from Python: comp.load_config,
comp.prepare, comp.train_fold, comp.make_submission on the demo competition) top to bottom in a Jupyter
kernel. A file of its own: the notebook trains the demo's model on both folds, alone about a test file's
share of time (--dist loadfile)."""

from __future__ import annotations

from helpers import ROOT

import comp


def test_the_demo_notebook_runs_top_to_bottom():
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "examples" / "demo.ipynb", as_version=4)
    nbformat.validate(nb)
    assert comp.train_fold and comp.validate_config and comp.Experiment  # the API the notebook uses
    # "python3" is ipykernel's native kernel: this very interpreter (sys.executable), whatever is installed;
    # it inherits OMP_NUM_THREADS=1 from tests/conftest.py (a worker per core: a second thread only contends)
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                      for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "held-out accuracy" in outputs and "fold" in outputs
