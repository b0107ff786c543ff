"""comp.data.download: prepare's download through the Kaggle CLI and the archives it brings. A stand-in
`kaggle` first on PATH writes a competition zip into the folder it is given: the download comes out
unzipped (inner zips too) at data.root, a failed or corrupt download leaves nothing behind, a missing CLI
or a data.root typo never starts one unasked; every archive layout a download ships is unpacked in place
(tar nested in tar, a zip in byte pieces), and nothing is written outside the folder."""

from __future__ import annotations

import io
import json
import os
import stat
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from helpers import COMMON, FAST, one_error, run_main, write_tiny_competition

from comp.config import REPO_ROOT
from comp.data.competition import load_competition
from comp.data.download import ensure_data, unzip_all
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


# --- through prepare.py --download ---------------------------------------------------------------------

def _no_kaggle(monkeypatch, tmp_path: Path) -> None:
    """No `kaggle` on PATH, nor beside the interpreter."""
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(sys, "executable", str(empty / "python"))


def _download_args(tmp_path: Path) -> list[str]:
    return [*COMMON, f"out_dir={tmp_path / 'runs'}", f"data.root={tmp_path / 'downloads' / 'tiny'}",
            "data.competition=tiny-comp"]


def test_kaggle_cli_missing_for_the_download(monkeypatch, tmp_path):
    _no_kaggle(monkeypatch, tmp_path)
    code, _, err = run_main("prepare.py", "--download", *_download_args(tmp_path))
    one_error(code, err, "the kaggle CLI is not on PATH", "pip install kaggle")
    assert not (tmp_path / "downloads").exists()


def test_kaggle_cli_failing_for_the_download(monkeypatch, tmp_path):
    argv_log = _stand_in(tmp_path, monkeypatch, b"", code=1)
    code, _, err = run_main("prepare.py", "--download", *_download_args(tmp_path))
    one_error(code, err, "kaggle competitions download -c tiny-comp -p", "failed: 403 - Forbidden")
    assert json.loads(argv_log.read_text())[:5] == ["competitions", "download", "-c", "tiny-comp", "-p"]
    assert list((tmp_path / "downloads").iterdir()) == []  # no data root, no half-made temporary folder


# --- a data.root typo never downloads -------------------------------------------------------------------

def _sizing_stand_in(tmp_path: Path, monkeypatch) -> Path:
    """A `kaggle` first on PATH: logs every argv; answers `files --csv` with two sizes; downloads nothing."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.jsonl"
    exe = bin_dir / "kaggle"
    exe.write_text(f"#!{sys.executable} -S\nimport json, sys\n"
                   f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
                   "if 'files' in sys.argv: print('name,size,creationDate\\ntrain.zip,1500000000,x\\ntest.csv,'"
                   "'500000000,x')\nelse: print('403 - Forbidden'); sys.exit(1)\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_missing_root_is_an_error_naming_the_absolute_path(tmp_path, monkeypatch, capsys):
    calls = _sizing_stand_in(tmp_path, monkeypatch)
    cfg = load_config(None, ["data.root=data/aptos_typo", "data.source=competition",
                             "data.competition=aptos2019-blindness-detection"])
    with pytest.raises(UserError) as e:
        ensure_data(cfg)
    msg = str(e.value)
    assert str(REPO_ROOT / "data" / "aptos_typo") in msg and "kit's folder" in msg and "--download" in msg
    assert not calls.exists() and not (REPO_ROOT / "data" / "aptos_typo").exists()  # nothing ran, nothing made
    with pytest.raises(UserError, match="data.root does not exist"):
        load_competition(cfg)
    root = tmp_path / "data" / "x"
    with pytest.raises(UserError, match="403 - Forbidden"):  # asked: the size is told, then the download runs
        ensure_data(_cfg(root, "data.competition=c", *FAST), download=True)
    assert "download: 2.00 GB into " + str(root) in capsys.readouterr().err
    assert [c[:2] for c in map(json.loads, calls.read_text().splitlines())] == [
        ["competitions", "files"], ["competitions", "download"]]


# --- every archive layout a download ships ---------------------------------------------------------------


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_tar_archives_nested_and_a_zip_in_pieces_are_unpacked(tmp_path):
    """A .tar.gz holding a .tgz and a .tar.xz, and a zip split in byte pieces (DR 2015 ships
    train.zip.001 ... .005): all unpacked in place, the archives gone; a .nii.gz image stays."""
    src = tmp_path / "src"
    for name, data in {"train.csv": b"id,label\na,0\n", "train/a.png": b"A" * 100, "test/b.png": b"B" * 50,
                       "extra/c.txt": b"c", "scans/s1.nii.gz": b"\x1f\x8bnot-a-tar"}.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    dl = tmp_path / "dl"
    dl.mkdir()
    with tarfile.open(tmp_path / "train.tgz", "w:gz") as t:
        t.add(src / "train", "train")
    with tarfile.open(tmp_path / "test.tar.xz", "w:xz") as t:
        t.add(src / "test", "test")
    with tarfile.open(dl / "download.tar.gz", "w:gz") as t:
        t.add(src / "train.csv", "train.csv")
        t.add(src / "scans", "scans")
        t.add(tmp_path / "train.tgz", "train.tgz")
        t.add(tmp_path / "test.tar.xz", "test.tar.xz")
    with zipfile.ZipFile(tmp_path / "extra.zip", "w") as z:
        z.write(src / "extra" / "c.txt", "extra/c.txt")
    whole = (tmp_path / "extra.zip").read_bytes()
    for k, i in enumerate(range(0, len(whole), 60), 1):
        (dl / f"extra.zip.{k:03d}").write_bytes(whole[i:i + 60])
    assert len(list(dl.glob("extra.zip.*"))) >= 3
    unzip_all(dl)
    assert _tree(dl) == _tree(src)


@pytest.mark.parametrize("member", ["../escaped.txt", "link", "/tmp/absolute-escape.txt"])
def test_tar_member_outside_the_folder_is_refused(tmp_path, member):
    """Path traversal (CVE-2007-4559): `..`, a symlink out of the folder are refused; an absolute name
    lands inside the folder (its leading slash stripped, as the `data` filter does)."""
    dl = tmp_path / "dl"
    dl.mkdir()
    with tarfile.open(dl / "evil.tar", "w") as t:
        info = tarfile.TarInfo(member)
        if member == "link":  # a symlink out of the folder, then a file written through it
            info.type, info.linkname = tarfile.SYMTYPE, str(tmp_path)
            t.addfile(info)
            info = tarfile.TarInfo("link/escaped.txt")
        info.size = 4
        t.addfile(info, io.BytesIO(b"evil"))
    if member.startswith("/"):
        unzip_all(dl)
        assert _tree(dl) == {"tmp/absolute-escape.txt": b"evil"}
    else:
        with pytest.raises(UserError, match="evil.tar has a member that would land outside"):
            unzip_all(dl)
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/absolute-escape.txt").exists()


def test_corrupt_tar_and_7z_are_clear_errors(tmp_path):
    dl = tmp_path / "dl"
    dl.mkdir()
    (dl / "data.tar.gz").write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 20)
    with pytest.raises(UserError, match="data.tar.gz is corrupt .*run prepare.py again"):
        unzip_all(dl)
    (dl / "data.tar.gz").unlink()
    (dl / "train.7z").write_bytes(b"7z\xbc\xaf\x27\x1c" + bytes(26))
    with pytest.raises(UserError, match=r"train.7z is a .7z archive.*7z x train.7z"):
        unzip_all(dl)
