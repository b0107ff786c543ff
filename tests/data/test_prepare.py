"""comp.data.prepare through scripts/prepare.py (in-process): broken, missing and extra image files, label CSVs
with a renamed or missing column, repeated ids, blank or unknown labels, a test folder that does not match
the sample submission. Each ends in one `error:` line naming the file, row or id, exit code 2, with the
download and the folds already written left byte for byte as they were; every unusable image of a download
is listed at once, with counts and no decoder noise. What must work does: UTF-8 BOM and CRLF line ends,
16-bit, RGBA, palette, grayscale and CMYK images, extra files the CSVs do not name."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from helpers import at, experiment, one_error, run_main, snapshot
from PIL import Image

from comp.data.cache import cache_folder, entry_path, read_entry
from comp.data.competition import load_competition
from comp.experiment import load_config
from comp.predict.submission import build, check

N_IMAGES = 39  # the tiny competition: 30 training + 9 test images


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict:
    """A tiny competition prepared once: folds.csv and folds.json written (the 'earlier outputs')."""
    ex = experiment(tmp_path_factory.mktemp("data_faults"), "images.cache=false", train=False)
    code, _, err = run_main("prepare.py", *ex["overrides"])
    assert code == 0, err
    assert (ex["out"] / "folds.csv").is_file()
    return ex


@pytest.fixture
def ex(prepared, tmp_path) -> dict:
    """A private copy of the prepared competition, its cache on (and empty): every image is checked."""
    shutil.copytree(prepared["base"], tmp_path / "ex")
    return at(tmp_path / "ex", f"images.cache_dir={tmp_path / 'cache'}")


def _csv(root: Path, name: str = "train.csv") -> Path:
    return root / name


def _edit_csv(root: Path, edit, name: str = "train.csv") -> None:
    path = root / name
    path.write_text(edit(path.read_text()))


def _png(root: Path, name: str = "img_0_001") -> Path:
    return root / "train" / f"{name}.png"


def _corrupt(p: Path) -> None:
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + np.random.default_rng(0).bytes(300) + b"IEND\xaeB`\x82")


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _folder(p: Path) -> None:
    p.unlink()
    p.mkdir()


# name -> (what is done to the download, extra overrides, what the error line must name)
FAULTS = {
    "corrupt image": (lambda r: _corrupt(_png(r)), [], ["1 of 39 images cannot be used (1 corrupt)",
                                                       "train/img_0_001.png"]),
    "truncated image": (lambda r: _truncate(_png(r)), [], ["(1 truncated)", "train/img_0_001.png"]),
    "zero-byte image": (lambda r: _png(r).write_bytes(b""), [], ["(1 empty (0 bytes))", "train/img_0_001.png"]),
    "not an image (a saved error page)": (lambda r: _png(r).write_text("<html>403 Forbidden</html>"), [],
                                          ["(1 corrupt)", "train/img_0_001.png"]),
    "a folder named like an image": (lambda r: _folder(_png(r)), [], ["(1 corrupt)", "train/img_0_001.png"]),
    "training image missing": (lambda r: _png(r).unlink(), [],
                               ["1 of 39 images cannot be used (1 no image file)",
                                "train/img_0_001.png [id 'img_0_001' in train.csv]"]),
    "test image missing": (lambda r: (r / "test" / "test_003.png").unlink(), [],
                           ["(1 no image file)", "test/test_003.png [id 'test_003' in sample_submission.csv]"]),
    "test folder missing": (lambda r: shutil.rmtree(r / "test"), [], ["image folder not found", "data.test_images"]),
    "label column renamed": (lambda r: _edit_csv(r, lambda t: t.replace("id,label", "id,diagnosis", 1)), [],
                             ["train.csv: missing column 'label'", "columns are ['id', 'diagnosis']"]),
    "id column missing": (lambda r: _edit_csv(r, lambda t: "\n".join(ln.split(",")[-1] for ln in t.splitlines())),
                          [], ["train.csv: missing column 'id'", "columns are ['label']"]),
    "duplicate id": (lambda r: _edit_csv(r, lambda t: t + "img_0_000,1\n"), [],
                     ["train.csv: id 'img_0_000' appears more than once (row 32)"]),
    "blank label": (lambda r: _edit_csv(r, lambda t: t.replace("img_1_004,1", "img_1_004,")), [],
                    ["train.csv: row 16 has a blank label"]),
    "NaN label": (lambda r: _edit_csv(r, lambda t: t.replace("img_1_004,1", "img_1_004,NaN")), [],
                  ["train.csv: row 16 has a blank label ('NaN')"]),
    "label outside the classes": (lambda r: _edit_csv(r, lambda t: t.replace("img_1_004,1", "img_1_004,7")),
                                  ["data.classes=[0,1,2]"],
                                  ["train.csv: row 16 has label '7', not one of the classes ['0', '1', '2']"]),
    "header only": (lambda r: _edit_csv(r, lambda t: "id,label\n"), [], ["train.csv has a header but no rows"]),
    "one class only": (lambda r: _edit_csv(r, lambda t: "".join(ln + "\n" for ln in t.splitlines()[:11])), [],
                       ["the training labels hold one class only ('0')"]),
    "CSV not UTF-8": (lambda r: _csv(r).write_bytes(_csv(r).read_bytes().replace(b"img_0_003", b"img_\xe9_003")), [],
                      ["cannot read CSV", "train.csv", "utf-8"]),
    "CSV row with extra fields": (lambda r: _edit_csv(r, lambda t: t + "img_9_000,1,extra,fields\n"), [],
                                  ["cannot read CSV", "train.csv", "Expected 2 fields in line 32, saw 4"]),
    "binary file as the CSV": (lambda r: _csv(r).write_bytes(os.urandom(500)), [], ["cannot read CSV", "train.csv"]),
    "sample submission without its id column": (
        lambda r: _edit_csv(r, lambda t: t.replace("id,label", "image,label", 1), "sample_submission.csv"), [],
        ["sample_submission.csv: missing column 'id'"]),
}


@pytest.mark.parametrize("name", list(FAULTS))
def test_data_fault_is_one_error_line_and_nothing_is_touched(name, ex):
    fault, extra, needles = FAULTS[name]
    fault(ex["root"])
    data, runs = snapshot(ex["root"]), snapshot(ex["out"])
    code, out, err = run_main("prepare.py", *ex["overrides"], *extra)
    line = one_error(code, err, *needles)
    assert out == "" and "\n" not in line
    assert snapshot(ex["root"]) == data  # the download is only read
    after = snapshot(ex["out"])  # folds.csv, folds.json as they were; at most the problem list added
    assert {k: v for k, v in after.items() if k != "image_problems.csv"} == runs


def test_every_problem_of_a_download_is_listed_at_once(ex, capfd):
    """Eight unusable images of five kinds, train and test: one line with the counts and every file, no
    decoder's own messages, the full list in image_problems.csv, and the folds untouched."""
    r = ex["root"]
    _corrupt(_png(r, "img_0_001"))
    _png(r, "img_0_002").write_text("<html>not found</html>")
    _folder(_png(r, "img_0_003"))
    _truncate(_png(r, "img_1_001"))
    _png(r, "img_1_002").write_bytes(b"")
    _png(r, "img_2_001").unlink()
    (r / "test" / "test_004.png").unlink()
    _truncate(r / "test" / "test_005.png")
    runs = snapshot(ex["out"])
    capfd.readouterr()
    code, _, err = run_main("prepare.py", *ex["overrides"])
    one_error(code, err, "8 of 39 images cannot be used (2 no image file, 1 empty (0 bytes), 2 truncated, 3 corrupt)",
              "no image file: train/img_2_001.png [id 'img_2_001' in train.csv], test/test_004.png [id 'test_004' "
              "in sample_submission.csv]", "empty (0 bytes): train/img_1_002.png",
              "truncated: test/test_005.png, train/img_1_001.png", "corrupt: train/img_0_001.png, train/img_0_002.png, "
              "train/img_0_003.png", "image_problems.csv")
    native = capfd.readouterr().err  # what the C decoders (libpng, libjpeg) would print on the process's stderr
    for noise in ("Premature end", "libpng", "grfmt"):  # libjpeg, libpng, OpenCV's codecs
        assert noise not in err and noise not in native, noise
    listed = pd.read_csv(ex["out"] / "image_problems.csv")
    assert sorted(listed["kind"]) == ["corrupt"] * 3 + ["empty"] + ["missing"] * 2 + ["truncated"] * 2
    assert {Path(p).name for p in listed["path"]} == {"img_0_001.png", "img_0_002.png", "img_0_003.png",
                                                      "img_1_001.png", "img_1_002.png", "img_2_001.png",
                                                      "test_004.png", "test_005.png"}
    assert {k: v for k, v in snapshot(ex["out"]).items() if k != "image_problems.csv"} == runs
    # the usable images are cached whole (a rerun after the fix builds only the rest); no temporary left
    cfg = load_config(None, ex["overrides"])
    folder = cache_folder(cfg)
    assert len(list(folder.rglob(f"*.{cfg.images.cache_format}"))) == N_IMAGES - 8
    assert not list(folder.rglob(".*.tmp"))


def _prepare_works(ex: dict, prepared: dict, *extra: str) -> None:
    """prepare.py succeeds into a fresh out_dir and writes the very folds of the pristine download."""
    code, _, err = run_main("prepare.py", *ex["overrides"], f"out_dir={ex['base'] / 'fresh'}", *extra)
    assert code == 0, err
    for name in ("folds.csv", "folds.json"):
        assert (ex["base"] / "fresh" / name).read_bytes() == (prepared["out"] / name).read_bytes(), name


def test_bom_and_crlf_line_ends_work(ex, prepared):
    for name in ("train.csv", "sample_submission.csv", "solution.csv"):
        path = ex["root"] / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    _prepare_works(ex, prepared)
    cfg = load_config(None, ex["overrides"])
    comp = load_competition(cfg)
    assert comp.classes == ["0", "1", "2"] and list(comp.test["id"])[0] == "test_000"  # no '\ufeff', no '\r'
    sub = build(cfg, comp, np.full((len(comp.test), 3), 1 / 3))
    check(cfg, comp, sub)  # the submission follows the BOM/CRLF sample and validates


def _save_mode(path: Path, mode: str) -> None:
    rgb = np.asarray(Image.open(path).convert("RGB"))
    if mode == "I;16":  # 16-bit grey, the full range used
        assert cv2.imwrite(str(path), (rgb[..., 0].astype(np.uint16) * 257))
    elif mode == "RGB16":
        assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    elif mode == "CMYK":  # a CMYK JPEG under a .png name: the decoders read the content, not the name
        Image.fromarray(rgb).convert("CMYK").save(path, format="JPEG", quality=95)
    else:
        Image.fromarray(rgb).convert(mode).save(path, format="PNG")


MODES = ["I;16", "RGB16", "RGBA", "LA", "P", "L", "1", "CMYK"]


def test_every_image_kind_works(ex, prepared):
    """16-bit grey and colour, RGBA, grey+alpha, palette, grey, 1-bit and CMYK files among the PNGs."""
    names = [f"img_{c}_{k:03d}" for c in range(3) for k in range(3)][: len(MODES)]
    for name, mode in zip(names, MODES, strict=True):
        _save_mode(_png(ex["root"], name), mode)
    _prepare_works(ex, prepared)
    cfg = load_config(None, ex["overrides"])
    folder = cache_folder(cfg)
    for name in names:
        fmt = cfg.images.cache_format
        img = read_entry(entry_path(folder, ex["root"], _png(ex["root"], name), fmt), fmt)
        assert img.shape == (16, 16, 3) and img.dtype == np.uint8 and img.std() > 0, name


def test_extra_files_are_ignored(ex, prepared):
    """Images the CSVs do not name, system debris, a sub-folder: the tables follow the CSVs."""
    r = ex["root"]
    shutil.copy(_png(r, "img_0_000"), r / "train" / "not_in_csv.png")
    shutil.copy(r / "test" / "test_000.png", r / "test" / "not_in_sample.png")
    (r / "train" / "Thumbs.db").write_bytes(b"\x00" * 64)
    (r / "train" / ".DS_Store").write_bytes(b"\x00" * 16)
    (r / "train" / "._img_0_000.png").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    (r / "train" / "extra").mkdir()
    shutil.copy(_png(r, "img_0_000"), r / "train" / "extra" / "img_0_000.png")
    _prepare_works(ex, prepared)
    comp = load_competition(load_config(None, ex["overrides"]))
    assert len(comp.train) == 30 and len(comp.test) == 9 and "not_in_sample" not in set(comp.test["id"])


def test_a_lone_bad_image_gives_its_reason_on_the_error_line(tmp_path):
    """One truncated DICOM: the element that is short is on the error line, not only in image_problems.csv
    (new-user check); a kind with several files names them alone, their reasons in the CSV."""
    from comp.data.layouts import Problem
    from comp.data.prepare import problems_message

    short = "(7FE0,0010) Pixel Data holds 27906 bytes; 32768 needed"
    one = problems_message([Problem("truncated", str(tmp_path / "train" / "t.dcm"), short)], 16, tmp_path, None)
    assert one == f"1 of 16 images cannot be used (1 truncated) under {tmp_path}: truncated: train/t.dcm [{short}]"
    two = problems_message([Problem("truncated", str(tmp_path / n), short) for n in ("a.dcm", "b.dcm")], 16,
                           tmp_path, tmp_path / "image_problems.csv")
    assert "truncated: a.dcm, b.dcm; full list in" in two and short not in two
