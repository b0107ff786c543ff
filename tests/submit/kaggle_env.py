"""The environments of the Kaggle tests. Kaggle's notebook image, for the packaged infer.py and the pushed
kernel run as separate processes (`offline_env`): no network, no simplejpeg, and the repository's code out of
reach (so the kit's editable install cannot stand in for the package's own copy). The real `kaggle` CLI
pointed at the fake of Kaggle's API (`use_real_cli`, tests/fake_kaggle.py), and the fixtures `fake` and `api`.

A helper module rather than a conftest.py: pytest imports every conftest.py as the module `conftest`, which
would hide tests/conftest.py from the test modules' `from conftest import ...`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_kaggle import FakeKaggle
from helpers import ROOT

CLI = Path(sys.executable).parent / "kaggle"  # the real CLI (kaggle 2.x), installed beside the interpreter

# Loaded at interpreter start-up (PYTHONPATH): no connection can be made, and no file of the repository's
# code can be opened, so the kit's editable install cannot stand in for the package's own copy.
SITECUSTOMIZE = '''
import os, socket, sys

def _no_network(*args, **kwargs):
    raise OSError("network disabled for this test")

socket.socket.connect = socket.socket.connect_ex = _no_network
socket.create_connection = socket.getaddrinfo = _no_network

_BLOCKED = tuple(os.path.join(r, d) + os.sep for r in {roots!r} for d in ("comp", "scripts", "configs"))

def _audit(event, args):
    if event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.abspath(os.fsdecode(args[0]))
        if path.startswith(_BLOCKED):
            raise PermissionError(f"the repository is out of reach in this test: {{path}}")

sys.addaudithook(_audit)


class _NotInKaggleImage:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: Kaggle's image has none)")


sys.meta_path.insert(0, _NotInKaggleImage())
'''
NOT_IN_KAGGLE_IMAGE = ("simplejpeg",)  # packages the kit can use that Kaggle's Python image does not install


def offline_env(tmp_path: Path) -> dict:
    """The environment of a process run as on Kaggle (a sitecustomize.py under `tmp_path` installs the
    guards at start-up), with one thread."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # The repository, and wherever an installed kit resolves `comp` to (an editable install of another
    # checkout), are both out of reach.
    installed = subprocess.run([sys.executable, "-c", "import comp, os; print(os.path.dirname(comp.__path__[0]))"],
                               capture_output=True, text=True, env=env, cwd=tmp_path).stdout.strip()
    roots = sorted({str(ROOT), *([installed] if installed else [])})
    site = tmp_path / "offline_site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(roots=roots, blocked=set(NOT_IN_KAGGLE_IMAGE)))
    return {**env, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def use_real_cli(fake, home: Path, monkeypatch) -> dict:
    """Point the real CLI at `fake` (a FakeKaggle): its environment set (every other KAGGLE_ variable
    removed), the CLI first on PATH, and the fake's request log cleared. Returns the environment."""
    env = fake.env(home)
    for var in [v for v in os.environ if v.startswith("KAGGLE_")]:
        monkeypatch.delenv(var)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PATH", f"{CLI.parent}{os.pathsep}{os.environ['PATH']}")
    fake.requests.clear()
    return env


# The fixtures of the tests that run the real CLI: a test module imports them by name.

@pytest.fixture(scope="module")
def fake():
    """One fake of Kaggle's API (tests/fake_kaggle.py) serving a whole test module."""
    with FakeKaggle() as f:
        yield f


@pytest.fixture
def api(fake, tmp_path, monkeypatch):
    """The real CLI pointed at the fake."""
    return use_real_cli(fake, tmp_path / "home", monkeypatch)
