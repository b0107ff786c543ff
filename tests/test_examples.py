"""The examples run as a user runs them: examples/demo.ipynb (the kit from Python: comp.load_config, comp.prepare,
comp.train_fold, comp.make_submission on the demo competition) top to bottom. A file of its own: the notebook
trains the demo's resnet18 on both folds, alone about a test file's share of time (--dist loadfile)."""

from __future__ import annotations

import ast
import io
import sys
import tempfile
from contextlib import redirect_stdout

import torch
from helpers import ROOT

import comp


def test_the_demo_notebook_runs_top_to_bottom(monkeypatch, tmp_path):
    # Its cells run in this process, in order, in one namespace, each cell's last expression shown as a
    # notebook shows it: the notebook is plain Python (no magics, checked below), so a kernel process would
    # add only its start-up. From the checkout's root, as Jupyter started there would run it.
    import nbformat

    nb = nbformat.read(ROOT / "examples" / "demo.ipynb", as_version=4)
    nbformat.validate(nb)
    assert comp.train_fold and comp.validate_config  # the API the notebook uses
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the notebook puts the checkout first
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(*args, **kwargs):
        if kwargs.get("prefix") == "comp-demo-":  # the notebook's work folder: in this test's, removed with it
            kwargs.setdefault("dir", str(tmp_path))
        return real_mkdtemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    namespace: dict = {"__name__": "__main__"}
    outputs = io.StringIO()
    threads = torch.get_num_threads()
    # one thread, as the kernel process ran it (OMP_NUM_THREADS=1): `make test` runs a worker per core, where a
    # second intra-op thread only contends (the notebook's user CPU 44 s with two, 16 s with one)
    torch.set_num_threads(1)
    try:
        for cell in (c for c in nb.cells if c.cell_type == "code"):
            assert not any(line.lstrip().startswith(("%", "!")) for line in cell.source.splitlines()), cell.source
            body = ast.parse(cell.source)
            last = body.body.pop() if body.body and isinstance(body.body[-1], ast.Expr) else None
            with redirect_stdout(outputs):
                exec(compile(body, "<demo.ipynb>", "exec"), namespace)
                if last is not None:
                    value = eval(compile(ast.Expression(last.value), "<demo.ipynb>", "eval"), namespace)
                    if value is not None:
                        print(repr(value))
    finally:
        torch.set_num_threads(threads)
    text = outputs.getvalue()
    assert "held-out accuracy" in text and "fold" in text
