"""comp.data.mil and comp.data.mil_cache: rows of many images (series, studies, views, tiles), slice order
from the DICOM geometry, the instance pick, the MIL cache and the Dataset's (N, 3, H, W) rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from comp.data.competition import load_competition
from comp.data.loader import ImageDataset
from comp.data.mil import join_views, order_slices, pick, row_folder, sources, tile_pick
from comp.data.mil_cache import MilLoader, decode_source, mil_folder, mil_loader, process_rows, tiles_of
from comp.errors import UserError
from comp.experiment.config import load_config

OBLIQUE = [1.0, 0.0, 0.0, 0.0, 0.8, -0.6]  # row and column direction cosines; normal (0, 0.6, 0.8)


def write_slice(path: Path, value: int, z: float, number: int, orient=OBLIQUE, size: int = 16,
                geometry: bool = True, description: str = "") -> None:
    """A CT slice: 16-bit MONOCHROME2, HU = stored - 1024, at position z along the normal of `orient`."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, meta.MediaStorageSOPInstanceUID, "CT"
    ds.InstanceNumber, ds.RescaleSlope, ds.RescaleIntercept = number, 1, -1024
    ds.WindowCenter, ds.WindowWidth = 40, 400
    if description:
        ds.SeriesDescription = description
    if geometry:
        normal = np.cross(orient[:3], orient[3:])
        ds.ImageOrientationPatient = [float(v) for v in orient]
        ds.ImagePositionPatient = [float(v) for v in np.array([-10.0, 5.0, 3.0]) + z * normal]
    ds.set_pixel_data(np.full((size, size), value, np.uint16), "MONOCHROME2", 12)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def series(folder: Path, values: list[int], **kw) -> None:
    """Slices with `values` in slice order, written under shuffled file names and instance numbers."""
    names = np.random.default_rng(len(values)).permutation(len(values))
    for z, (v, n) in enumerate(zip(values, names, strict=True)):
        write_slice(folder / f"{int(n) + 1}.dcm", v, z * 2.5, int(n) + 1, **kw)


def test_slices_are_ordered_by_position_along_the_normal_not_by_file_name(tmp_path):
    series(tmp_path / "s", [900, 1000, 1100, 1200, 1300])
    ordered = order_slices(list((tmp_path / "s").iterdir()), "position", "series s")
    import pydicom

    got = [int(pydicom.dcmread(p).pixel_array[0, 0]) for p in ordered]
    assert got == [900, 1000, 1100, 1200, 1300]
    assert [p.name for p in ordered] != sorted(p.name for p in ordered)  # names were shuffled


def test_slices_without_geometry_fall_back_to_instance_number_with_a_warning(tmp_path, capsys):
    for z, v in enumerate([5, 3, 1]):
        write_slice(tmp_path / f"x{z}.dcm", 1000 + v, z, v, geometry=False)
    ordered = order_slices(sorted(tmp_path.iterdir()), "position", "series s")
    assert [p.name for p in ordered] == ["x2.dcm", "x1.dcm", "x0.dcm"]
    assert "ordered by InstanceNumber" in capsys.readouterr().err


def test_a_slice_in_another_plane_is_one_error_naming_the_series(tmp_path):
    series(tmp_path / "s", [1000, 1000])
    write_slice(tmp_path / "s" / "9.dcm", 1000, 9.0, 9, orient=[1, 0, 0, 0, 1, 0])
    with pytest.raises(UserError, match=r"series 00012/T2w: slice 9\.dcm lies in another plane"):
        order_slices(sorted((tmp_path / "s").iterdir()), "position", "series 00012/T2w")


def test_a_repeated_position_is_kept_once(tmp_path, capsys):
    series(tmp_path / "s", [1000, 1100, 1200])
    write_slice(tmp_path / "s" / "dup.dcm", 1100, 2.5, 7)
    assert len(order_slices(list((tmp_path / "s").iterdir()), "position", "s")) == 3
    assert "repeat the position" in capsys.readouterr().err


def test_pick_spreads_instances_evenly_and_jitters_within_each_stretch_with_a_seed():
    assert pick(100, 4, 1, None)[:, 0].tolist() == [12, 37, 62, 87]
    assert pick(100, 4, 3, None)[0].tolist() == [11, 12, 13]
    assert pick(5, 3, 3, None).tolist() == [[0, 0, 1], [1, 2, 3], [3, 4, 4]]  # 2.5D neighbours clipped
    assert pick(2, 4, 1, None)[:, 0].tolist() == [0, 0, 1, 1]  # fewer frames: repeated
    a, b = pick(100, 4, 1, 7)[:, 0], pick(100, 4, 1, 7)[:, 0]
    assert (a == b).all() and not (a == pick(100, 4, 1, 8)[:, 0]).all()
    assert all(25 * j <= a[j] < 25 * (j + 1) for j in range(4))
    assert tile_pick(3, 5, None).tolist() == [0, 1, 2, 0, 1]
    assert sorted(tile_pick(10, 4, 3).tolist()) == sorted(set(tile_pick(10, 4, 3).tolist()))


def test_row_folder_formats_zero_padded_ids():
    assert row_folder("{BraTS21ID:05d}", {"BraTS21ID": "12", "id": "12"}, "x.csv") == "00012"
    with pytest.raises(UserError, match="names column 'nope'"):
        row_folder("{nope}", {"id": "1"}, "x.csv")


def brain_like(root: Path) -> Path:
    """train/<5-digit id>/{FLAIR,T2w}/*.dcm (T2w named only by SeriesDescription in one study), labels."""
    rows = []
    for i in range(8):
        label = i % 2
        for seq in ("FLAIR", "T2w"):
            name = seq if i else f"series{seq}"  # study 0 names its series folders by number
            base = 1000 + 200 * label + (300 if seq == "T2w" else 0)
            series(root / "train" / f"{i:05d}" / name, [base + 10 * k for k in range(6)],
                   description=seq)
        rows.append({"BraTS21ID": i, "MGMT_value": label})
    pd.DataFrame(rows).to_csv(root / "train_labels.csv", index=False)
    pd.DataFrame({"BraTS21ID": [], "MGMT_value": []}).to_csv(root / "sample_submission.csv", index=False)
    (root / "test").mkdir()
    return root


def brain_cfg(root: Path, tmp_path: Path, *extra: str):
    return load_config(None, [f"data.root={root}", "data.train_csv=train_labels.csv", "data.id_column=BraTS21ID",
                              "data.label_column=MGMT_value", "data.train_images=[train]", "data.test_images=[test]",
                              "task=binary", "metric=auc", "mil.source=study", "mil.folder='{BraTS21ID:05d}'",
                              "mil.series=[FLAIR,T2w]", "mil.instances=4", "image_size=16",
                              f"images.cache_dir={tmp_path / 'cache'}", f"out_dir={tmp_path / 'run'}", *extra])


def test_a_study_row_reads_its_series_by_folder_name_or_series_description(tmp_path):
    root = brain_like(tmp_path / "data")
    cfg = brain_cfg(root, tmp_path)
    comp = load_competition(cfg)
    assert comp.train["path"].iloc[0].endswith("train/00000") and len(comp.train) == 8
    assert [p.name for p in sources(cfg, comp.train["path"].iloc[0])] == ["seriesFLAIR", "seriesT2w"]
    with pytest.raises(UserError, match=r"study .*00001 has no series 'T1wCE'.*it has \['FLAIR', 'T2w'\]"):
        sources(brain_cfg(root, tmp_path, "mil.series=[FLAIR,T1wCE]"), comp.train["path"].iloc[1])


def test_a_row_without_its_folder_is_named(tmp_path):
    root = brain_like(tmp_path / "data")
    pd.DataFrame({"BraTS21ID": [0, 99], "MGMT_value": [0, 1]}).to_csv(root / "train_labels.csv", index=False)
    with pytest.raises(UserError, match=r"row '99' has no folder .*train/00099"):
        load_competition(brain_cfg(root, tmp_path))


def test_the_cache_holds_each_series_once_and_the_loader_reads_what_decoding_gives(tmp_path, monkeypatch):
    root = brain_like(tmp_path / "data")
    cfg = brain_cfg(root, tmp_path)
    comp = load_competition(cfg)
    paths = comp.train["path"].tolist()
    assert process_rows(cfg, root, paths, workers=1) == []
    entries = sorted(mil_folder(cfg).rglob("*.npy"))
    assert len(entries) == 16 and np.load(entries[0]).shape == (6, 16, 16, 1)
    cached, decoded = mil_loader(cfg, comp), MilLoader(cfg, None, None, {})
    assert cached.folder is not None
    import comp.data.mil_cache as mc

    want = decoded(paths[1])
    monkeypatch.setattr(mc, "decode_source", lambda *a, **k: pytest.fail("decoded, not read from the cache"))
    x = cached(paths[1])
    monkeypatch.undo()
    assert x.shape == (8, 16, 16, 3) and np.array_equal(x, want)
    assert x[:4].max() < x[4:].min()  # FLAIR's instances, then T2w's (brighter)
    # a killed build resumes: only the missing entry is built again; a changed series is rebuilt
    built = []
    real = mc._build
    monkeypatch.setattr(mc, "_build", lambda job: built.append(job[0]) or real(job))
    entries[0].unlink()
    process_rows(cfg, root, paths, workers=1)
    assert len(built) == 1
    built.clear()
    (mil_folder(cfg) / "manifest.json").unlink()  # killed before the manifest was written: the entries stand
    process_rows(cfg, root, paths, workers=1)
    assert built == [] and len(json.loads((mil_folder(cfg) / "manifest.json").read_text())) == 16
    write_slice(Path(paths[2]) / "FLAIR" / "1.dcm", 3000, 0.0, 1)
    process_rows(cfg, root, paths, workers=1)
    assert built == [str(Path(paths[2]) / "FLAIR")]


def test_prepare_lists_a_study_without_its_series_and_an_empty_series(tmp_path):
    root = brain_like(tmp_path / "data")
    import shutil

    shutil.rmtree(root / "train" / "00003" / "T2w")
    for f in (root / "train" / "00004" / "FLAIR").iterdir():
        f.unlink()
    cfg = brain_cfg(root, tmp_path)
    problems = process_rows(cfg, root, load_competition(cfg).train["path"].tolist(), workers=1)
    kinds = {(q.kind, Path(q.path).name) for q in problems}
    assert kinds == {("missing", "00003"), ("empty", "FLAIR")}


def test_dataset_rows_are_instances_with_one_augmentation_draw_per_row(tmp_path):
    import albumentations as A

    root = brain_like(tmp_path / "data")
    cfg = brain_cfg(root, tmp_path, "images.cache=false", "mil.slices=3")
    comp = load_competition(cfg)
    flip = A.Compose([A.HorizontalFlip(p=0.5), A.RandomBrightnessContrast(p=1.0)])
    ds = ImageDataset(comp.train["path"].tolist(), comp.targets(comp.train), 16, flip, load=mil_loader(cfg, comp))
    x, y = ds[(1, 123)]
    assert tuple(x.shape) == (8, 3, 16, 16) and y == 1
    assert ds.instances == 8  # the loader's shared-memory budget counts a row's 4 x 2 images
    again, _ = ds[(1, 123)]
    assert (x == again).all()  # a pure function of (row, seed): resume is bit-identical
    # the same brightness change on every instance: equal slices stay equal after augmentation
    plain = ImageDataset(comp.train["path"].tolist(), None, 16, None, load=mil_loader(cfg, comp))[1][0]
    same = [(a, b) for a in range(8) for b in range(8) if a < b and (plain[a] == plain[b]).all()]
    assert all((x[a] == x[b]).all() for a, b in same)
    each = brain_cfg(root, tmp_path, "images.cache=false", "mil.augment=instance")
    ds2 = ImageDataset(comp.train["path"].tolist(), None, 16, flip, load=mil_loader(each, comp))
    x2 = ds2[(1, 123)][0]
    assert any(not (x2[a] == x2[b]).all() for a, b in same)


def test_views_are_joined_by_the_join_columns_and_disagreeing_labels_refused(tmp_path):
    cfg = load_config(None, ["mil.source=views", "mil.join=[patient_id,laterality]"])
    table = pd.DataFrame({"patient_id": ["10", "10", "10", "11"], "laterality": ["L", "L", "R", "L"]})
    frame = pd.DataFrame({"id": ["a", "b", "c", "d"], "path": ["a.dcm", "b.dcm", "c.dcm", "d.dcm"],
                          "label": [1, 1, 0, 0]})
    out = join_views(cfg, frame, table, Path("train.csv"))
    assert out["id"].tolist() == ["10_L", "10_R", "11_L"] and out["path"].iloc[0] == "a.dcm|b.dcm"
    with pytest.raises(UserError, match="images of '10_L'.*different labels"):
        join_views(cfg, frame.assign(label=[1, 0, 0, 0]), table, Path("train.csv"))


def test_tiles_keep_the_squares_holding_tissue_most_first(tmp_path):
    img = np.full((64, 96, 3), 245, np.uint8)  # white glass
    img[0:32, 32:64] = 120  # one full tissue tile
    img[32:64, 64:80] = 90  # half a tile
    t = tiles_of(img, 32, 0.25, 8, 16, "slide")
    assert t.shape == (2, 16, 16, 3) and t[0].mean() == 120
    path = tmp_path / "slide.png"
    import cv2

    cv2.imwrite(str(path), img)
    assert decode_source(path, "tiles", 16, [], None, tile=32, tissue=0.9).shape == (1, 16, 16, 3)


def test_a_gap_in_slice_positions_and_slices_of_other_sizes_are_warned(tmp_path, capsys):
    for k, z in enumerate([0.0, 2.5, 5.0, 12.5, 15.0]):  # two slices missing after 5.0
        write_slice(tmp_path / f"{k}.dcm", 1000, z, k + 1, size=16 if k else 20)
    assert len(order_slices(list(tmp_path.iterdir()), "position", "series s")) == 5
    err = capsys.readouterr().err
    assert "slice positions missing: a gap of 7.5 mm after 2.dcm" in err
    assert "slices of 2 sizes" in err


def test_a_study_read_whole_takes_the_same_number_of_instances_from_one_series_or_two(tmp_path):
    root = brain_like(tmp_path / "data")
    import shutil

    shutil.rmtree(root / "train" / "00002" / "T2w")  # a patient with one series (RSNA 2023 has one or two)
    cfg = brain_cfg(root, tmp_path, "mil.series=[]", "images.cache=false", "mil.slices=3")
    comp = load_competition(cfg)
    load = mil_loader(cfg, comp)
    one, two = load(comp.train["path"].iloc[2]), load(comp.train["path"].iloc[3])
    assert one.shape == two.shape == (4, 16, 16, 3)
    assert two[:2].max() < two[2:].min()  # FLAIR's slices first, then T2w's (brighter), never mixed in one


def test_series_named_by_a_descriptions_csv_where_the_dicoms_carry_none(tmp_path):
    root = tmp_path / "data"
    for sid, values in (("3001", [1000, 1010]), ("2002", [1500, 1510])):
        series(root / "train" / "7" / sid, values)  # no SeriesDescription in the files
    pd.DataFrame({"study_id": [7, 7], "series_id": [3001, 2002], "series_description": ["Sagittal T1", "Axial T2"]}
                 ).to_csv(root / "train_series_descriptions.csv", index=False)
    cfg = load_config(None, [f"data.root={root}", "mil.source=study", "mil.series=[Axial T2,Sagittal T1]",
                             "mil.series_csv=[train_series_descriptions.csv]"])
    assert [p.name for p in sources(cfg, str(root / "train" / "7"))] == ["2002", "3001"]
    with pytest.raises(UserError, match="has no series 'Axial T2'"):
        sources(load_config(None, [f"data.root={root}", "mil.source=study", "mil.series=[Axial T2]"]),
                str(root / "train" / "7"))


def test_a_broken_slice_is_left_out_of_its_series_and_a_series_of_broken_slices_is_listed(tmp_path, capsys):
    series(tmp_path / "s", [1000, 1100, 1200, 1300])
    (tmp_path / "s" / "2.dcm").write_bytes(b"DICM" * 10)  # a truncated download
    arr = decode_source(tmp_path / "s", "series", 16, [], None)
    assert arr.shape == (3, 16, 16, 1) and "1 of 4 slices cannot be read and are left out, e.g. 2.dcm" in \
        capsys.readouterr().err
    for f in (tmp_path / "s").iterdir():
        f.write_bytes(b"")
    root = brain_like(tmp_path / "data")
    for f in (root / "train" / "00005" / "T2w").iterdir():
        f.write_bytes(b"")
    cfg = brain_cfg(root, tmp_path)
    problems = process_rows(cfg, root, load_competition(cfg).train["path"].tolist(), workers=1)
    assert [(q.kind, Path(q.path).name) for q in problems] == [("empty", "T2w")]
    assert "no usable slice in the series: 6 of 6" in problems[0].detail
