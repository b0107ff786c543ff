"""The environments of the Kaggle tests. Kaggle's notebook image, for the packaged infer.py and the pushed
kernel run as separate processes (`offline_env`): no network, no simplejpeg, and the repository's code out of
reach (so the kit's editable install cannot stand in for the package's own copy). The real `kaggle` CLI
pointed at the fake of Kaggle's API (`use_real_cli`, tests/fake_kaggle.py), and the fixtures `fake` and `api`.

A helper module rather than a conftest.py: pytest imports every conftest.py as the module `conftest`, which
would hide tests/conftest.py from the test modules' `from conftest import ...`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_kaggle import API_TOKEN, KEY, OAUTH_CODE, USER, FakeKaggle
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


# Every way of logging in that docs/new-competition.md lists, as kaggle 2.2.5 reads them (kagglesdk
# kaggle_env.py get_access_token_from_env, kaggle_api_extended.py config_dir / read_config_*, kaggle_creds.py).
LOGINS = ("token-env", "token-env-file", "access_token", "kaggle.json", "kaggle.json-config-dir", "kaggle.json-xdg",
          "key-env", "auth-login")


def log_in(kind: str, home: Path, env: dict[str, str]) -> dict[str, str]:
    """`env` (the fake's, no credentials) with the CLI logged in the way `kind` (one of LOGINS) does it:
    an API token in KAGGLE_API_TOKEN, or in a file KAGGLE_API_TOKEN names, or in ~/.kaggle/access_token;
    the legacy key in ~/.kaggle/kaggle.json, in $KAGGLE_CONFIG_DIR/kaggle.json, in
    $XDG_CONFIG_HOME/kaggle/kaggle.json (Linux, no ~/.kaggle), or in KAGGLE_USERNAME/KAGGLE_KEY; or the
    real `kaggle auth login --no-launch-browser` answered with the fake's code (~/.kaggle/credentials.json)."""
    env = dict(env)
    key = json.dumps({"username": USER, "key": KEY})
    if kind == "token-env":
        env["KAGGLE_API_TOKEN"] = API_TOKEN
    elif kind == "token-env-file":
        (home / "secrets").mkdir(parents=True)
        (home / "secrets" / "kaggle-token").write_text(API_TOKEN + "\n")
        env["KAGGLE_API_TOKEN"] = str(home / "secrets" / "kaggle-token")
    elif kind == "access_token":
        (home / ".kaggle").mkdir(parents=True)
        (home / ".kaggle" / "access_token").write_text(API_TOKEN + "\n")
    elif kind in ("kaggle.json", "kaggle.json-config-dir", "kaggle.json-xdg"):
        folder = {"kaggle.json": home / ".kaggle", "kaggle.json-config-dir": home / "elsewhere",
                  "kaggle.json-xdg": home / ".config" / "kaggle"}[kind]
        folder.mkdir(parents=True)
        (folder / "kaggle.json").write_text(key)
        (folder / "kaggle.json").chmod(0o600)
        if kind == "kaggle.json-config-dir":
            env["KAGGLE_CONFIG_DIR"] = str(folder)
    elif kind == "key-env":
        env.update(KAGGLE_USERNAME=USER, KAGGLE_KEY=KEY)
    elif kind == "auth-login":
        res = subprocess.run([str(CLI), "auth", "login", "--no-launch-browser"], input=OAUTH_CODE + "\n",
                             capture_output=True, text=True, env={**os.environ, **env, "DISPLAY": ""}, timeout=60)
        assert res.returncode == 0 and f"logged in as [{USER}]" in res.stdout, res.stdout + res.stderr
        assert (home / ".kaggle" / "credentials.json").is_file()
    else:
        raise ValueError(kind)
    return env


@pytest.fixture
def logged_out(tmp_path, monkeypatch):
    """The real CLI not logged in (no KAGGLE_ variable, an empty home), so a test that packages without an
    --id never asks kaggle.com who the developer running it is."""
    for var in [v for v in os.environ if v.startswith("KAGGLE_")]:
        monkeypatch.delenv(var)
    home = tmp_path / "logged-out-home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))


def use_real_cli(fake, home: Path, monkeypatch, login: str | None = None) -> dict:
    """Point the real CLI at `fake` (a FakeKaggle): its environment set (every other KAGGLE_ variable
    removed), the CLI first on PATH, the fake's faults and request log cleared. Logged in with the legacy
    key in the environment, or the way `login` (one of LOGINS) says. Returns the environment."""
    for var in [v for v in os.environ if v.startswith("KAGGLE_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("PATH", f"{CLI.parent}{os.pathsep}{os.environ['PATH']}")
    env = fake.env(home, key=login is None)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if login is not None:
        env = log_in(login, home, env)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
    fake.reset()
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


class Clock:
    """The polls' time (comp.kaggle_cli.clock and .sleep) without real waiting: `sleep` moves `now` on and
    records each wait in `sleeps`."""

    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0, seconds
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    """The Kaggle polls on a Clock: no test sleeps for real."""
    from comp import kaggle_cli

    c = Clock()
    monkeypatch.setattr(kaggle_cli, "clock", c)
    monkeypatch.setattr(kaggle_cli, "sleep", c.sleep)
    return c
