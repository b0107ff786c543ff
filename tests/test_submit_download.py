"""The Kaggle CLI's other direction: prepare's download. A stand-in `kaggle` first on PATH writes a
competition zip into the folder it is given; the download must come out unzipped (inner zips too) at
data.root, and a failed or corrupt download must leave nothing behind."""

from __future__ import annotations

import json
import os
import stat
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import write_tiny_competition

from comp.data.competition import load_competition
from comp.data.download import ensure_data
from comp.errors import UserError
from comp.experiment import load_config


def _zip_competition(tmp_path: Path, inner: bool) -> Path:
    """The tiny competition zipped like a Kaggle download; with `inner`, train/ inside its own train.zip."""
    src = write_tiny_competition(tmp_path / "src")
    archive = tmp_path / "download.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(src.rglob("*")):
            if f.is_file() and not (inner and f.parent.name == "train"):
                z.write(f, f.relative_to(src).as_posix())
        if inner:
            with zipfile.ZipFile(tmp_path / "train.zip", "w") as t:
                for f in sorted((src / "train").iterdir()):
                    t.write(f, f"train/{f.name}")
            z.write(tmp_path / "train.zip", "train.zip")
    return archive


def _stand_in(tmp_path: Path, monkeypatch, payload: bytes, code: int = 0) -> Path:
    """`kaggle ... -p DIR`: records argv, writes `payload` as DIR/download.zip, exits `code`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "payload.bin").write_bytes(payload)
    argv_log = tmp_path / "argv.json"
    exe = bin_dir / "kaggle"
    exe.write_text(f"#!{sys.executable} -S\nimport json, shutil, sys\n"
                   f"open({str(argv_log)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
                   "dest = sys.argv[sys.argv.index('-p') + 1]\n"
                   f"shutil.copy({str(tmp_path / 'payload.bin')!r}, dest + '/download.zip')\n"
                   "print('Downloading download.zip to ' + dest)\n"
                   f"print('403 - Forbidden - accept the rules first') if {code} else None\nsys.exit({code})\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return argv_log


def _cfg(root: Path, *extra: str):
    return load_config(None, [f"data.root={root}", "data.source=competition", "data.competition=tiny-comp", *extra])


@pytest.mark.parametrize("inner", [False, True])
def test_competition_download_is_unzipped_into_data_root(tmp_path, monkeypatch, inner):
    argv_log = _stand_in(tmp_path, monkeypatch, _zip_competition(tmp_path, inner).read_bytes())
    root = tmp_path / "data" / "tiny"
    got = ensure_data(_cfg(root), download=True)
    assert got == root
    args = json.loads(argv_log.read_text())
    assert args[:4] == ["competitions", "download", "-c", "tiny-comp"] and args[4] == "-p"
    assert Path(args[5]).parent == root.parent and not Path(args[5]).exists()  # a temporary folder, renamed
    assert not list(root.rglob("*.zip"))
    comp = load_competition(_cfg(root))
    assert len(comp.train) == 30 and len(comp.test) == 9
    assert sorted(p.name for p in root.parent.iterdir()) == ["tiny"]  # nothing else left beside it


def test_dataset_download_and_an_existing_root_is_left_alone(tmp_path, monkeypatch):
    argv_log = _stand_in(tmp_path, monkeypatch, _zip_competition(tmp_path, False).read_bytes())
    root = tmp_path / "data" / "ds"
    root.mkdir(parents=True)  # empty: still downloaded
    ensure_data(_cfg(root, "data.source=dataset", "data.dataset=someone/chest-xray", "data.download=true"))
    assert json.loads(argv_log.read_text())[:3] == ["datasets", "download", "someone/chest-xray"]
    argv_log.unlink()
    ensure_data(_cfg(root, "data.source=dataset", "data.dataset=someone/chest-xray"))
    assert not argv_log.exists()  # data present: no download


@pytest.mark.parametrize("case", ["cli fails", "corrupt zip"])
def test_a_failed_download_leaves_nothing(tmp_path, monkeypatch, case):
    payload = _zip_competition(tmp_path, False).read_bytes()
    if case == "corrupt zip":
        payload = payload[: len(payload) // 2]
    _stand_in(tmp_path, monkeypatch, payload, code=1 if case == "cli fails" else 0)
    root = tmp_path / "data" / "tiny"
    with pytest.raises(UserError) as e:
        ensure_data(_cfg(root), download=True)
    msg = str(e.value)
    assert "403 - Forbidden" in msg if case == "cli fails" else "corrupt" in msg
    assert "\n" not in msg
    assert list((tmp_path / "data").iterdir()) == []  # no root, no half-made temporary folder


def test_missing_slug_is_refused_before_running_anything(tmp_path, monkeypatch):
    argv_log = _stand_in(tmp_path, monkeypatch, b"")
    with pytest.raises(UserError, match="data.competition is empty"):
        ensure_data(_cfg(tmp_path / "data" / "x", "data.competition=''"), download=True)
    with pytest.raises(UserError, match="needs data.dataset"):
        ensure_data(_cfg(tmp_path / "data" / "x", "data.source=dataset"), download=True)
    assert not argv_log.exists()
