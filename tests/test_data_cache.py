"""The pre-resized cache and prepare's checks: keyed by the preprocessing, resumable after a kill,
identical batches to decoding, and every unusable image listed at once."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import FAST, ROOT, assert_user_error, run_script, write_tiny_competition
from replicas import build, overrides

from comp.config import load_config
from comp.data.augment import build_transform
from comp.data.cache import ImageLoader, cache_folder, entry_path, image_loader, process_images, read_entry
from comp.data.competition import load_competition
from comp.data.loader import EpochSampler, ImageDataset, make_loader
from comp.data.prepare import prepare
from comp.data.preprocess import load_preprocessed
from comp.errors import UserError
from comp.system import usable_cpus


def _cfg(name, root, out, *extra):
    return load_config(ROOT / "configs" / f"{name}.yaml", [*overrides(root, out, FAST), *extra])


@pytest.fixture
def aptos(tmp_path):
    root = build("aptos2019", tmp_path / "aptos2019")
    return lambda *extra: _cfg("aptos2019", root, tmp_path / "runs", *extra)


def _entries(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and p.suffix in (".png", ".npy")}


def test_cache_folder_keyed_by_settings(aptos, tmp_path):
    cfg = aptos()
    folder = cache_folder(cfg)
    assert folder.parent == tmp_path / "cache" and folder.name.startswith("aptos2019-16px-")  # beside data.root
    assert cache_folder(aptos("images.cache_format=npy")) == folder  # entries differ by suffix
    assert cache_folder(aptos("images.preprocess=[crop_circle]")) != folder
    assert cache_folder(aptos("image_size=24")) != folder
    assert cache_folder(aptos(f"images.cache_dir={tmp_path}/elsewhere")).parent == tmp_path / "elsewhere"


def test_rebuilt_when_preprocessing_changes(aptos):
    ben = aptos()
    prepare(ben)
    first = _entries(cache_folder(ben))
    comp = load_competition(ben)
    assert len(first) == len(comp.train) + len(comp.test)
    plain = aptos("images.preprocess=[crop_circle]")
    prepare(plain)
    second = _entries(cache_folder(plain))
    assert second.keys() == first.keys() and all(second[k] != first[k] for k in first)  # every image redone
    assert _entries(cache_folder(ben)) == first  # the other setting's cache is untouched and still valid
    path = comp.train["path"][0]
    assert (image_loader(plain, comp)(path) == load_preprocessed(path, 16, ["crop_circle"])).all()
    assert (image_loader(ben, comp)(path) == load_preprocessed(path, 16, ["crop_circle", "ben_graham"])).all()


@pytest.mark.parametrize("name, fmt", [("aptos2019", "png"), ("chest_xray", "png"), ("cnmc2019", "npy")])
def test_cache_gives_the_same_batches_as_decoding(tmp_path, name, fmt):
    """Lossless entries: the loader from the cache and the one decoding on the fly feed identical
    augmented batches (chest X-ray: grey images stored as one PNG channel)."""
    root = build(name, tmp_path / name)
    cfg = _cfg(name, root, tmp_path / "runs", f"images.cache_format={fmt}")
    prepare(cfg)
    comp = load_competition(cfg)
    cached = image_loader(cfg, comp)
    assert cached.folder == cache_folder(cfg) and all(
        entry_path(cached.folder, comp.root, p, fmt).is_file() for p in comp.train["path"])
    decoded = image_loader(_cfg(name, root, tmp_path / "runs", "images.cache=false"), comp)
    assert decoded.folder is None
    transform = build_transform(cfg.aug.train, "aug.train")
    batches = []
    for load in (cached, decoded):
        ds = ImageDataset(comp.train["path"].tolist(), comp.train["label"].tolist(), 16, transform, load=load)
        loader = make_loader(ds, 4, EpochSampler(len(ds), seed=3, epoch=1), num_workers=0)
        batches.append([x for x, _ in loader])
    for a, b in zip(*batches, strict=True):
        assert a.dtype == torch.uint8 and torch.equal(a, b)
    if name == "chest_xray":  # grey images take one channel on disk
        import cv2

        entry = entry_path(cached.folder, comp.root, comp.train["path"][0], fmt)
        assert cv2.imread(str(entry), cv2.IMREAD_UNCHANGED).ndim == 2


KILLER = """
import os, signal, sys
sys.path.insert(0, {root!r})
import comp.data.cache as c
from comp.config import load_config
from comp.data.prepare import prepare
real, n = c.write_entry, [0]
def dying(img, path, fmt):  # the 6th entry: its temporary file half written, then SIGKILL
    n[0] += 1
    if n[0] == 6:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_name('.' + path.name + '.' + str(os.getpid()) + '.tmp').write_bytes(b'half a png')
        os.kill(os.getpid(), signal.SIGKILL)
    real(img, path, fmt)
c.write_entry = dying
prepare(load_config({config!r}, {overrides!r}))
"""


@pytest.mark.slow
def test_killed_build_resumes(tmp_path):
    root = build("aptos2019", tmp_path / "aptos2019")
    ov = overrides(root, tmp_path / "runs", FAST)
    config = str(ROOT / "configs" / "aptos2019.yaml")
    code = KILLER.format(root=str(ROOT), config=config, overrides=ov)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == -signal.SIGKILL, res.stderr
    cfg = load_config(config, ov)
    folder = cache_folder(cfg)
    assert len(_entries(folder)) == 5 and len(list(folder.rglob(".*.tmp"))) == 1  # 5 whole entries, no 6th
    assert not (tmp_path / "runs" / "folds.csv").exists()

    prepare(cfg)  # resumes: builds the rest, drops the leftover
    comp = load_competition(cfg)
    paths = comp.train["path"].tolist() + comp.test["path"].tolist()
    assert len(_entries(folder)) == len(paths) and not list(folder.rglob(".*.tmp"))
    for p in paths:  # every entry, those before the kill included, is what decoding gives
        fmt = cfg.images.cache_format
        assert (read_entry(entry_path(folder, comp.root, p, fmt), fmt) == load_preprocessed(
            p, 16, ["crop_circle", "ben_graham"])).all()
    assert (tmp_path / "runs" / "folds.csv").is_file()


@pytest.mark.slow
def test_parallel_build_matches_serial(tmp_path):
    root = build("dr2015", tmp_path / "dr2015")
    serial = _cfg("dr2015", root, tmp_path / "runs", f"images.cache_dir={tmp_path}/serial")
    parallel = _cfg("dr2015", root, tmp_path / "runs", f"images.cache_dir={tmp_path}/parallel")
    comp = load_competition(serial)
    paths = comp.train["path"].tolist() + comp.test["path"].tolist()
    assert process_images(serial, comp.root, paths, workers=1) == []
    assert process_images(parallel, comp.root, paths, workers=2) == []  # a forkserver pool of 2
    assert _entries(cache_folder(serial)) == _entries(cache_folder(parallel))


def _break_aptos(root: Path) -> dict[str, str]:
    """One image of each kind of problem; returns kind -> file name."""
    files = sorted((root / "train_images").iterdir())
    files[0].unlink()  # an id in train.csv with no image
    files[1].write_bytes(b"")
    whole = files[2].read_bytes()
    files[2].write_bytes(whole[: len(whole) // 2])
    files[3].write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200) + b"IEND\xaeB`\x82")
    test = sorted((root / "test_images").iterdir())[0]
    test.write_bytes(test.read_bytes()[:100])
    return {"missing": files[0].name, "empty": files[1].name, "truncated": files[2].name,
            "corrupt": files[3].name, "truncated_test": test.name}


def test_prepare_lists_every_problem_at_once(tmp_path):
    root = build("aptos2019", tmp_path / "aptos2019")
    bad = _break_aptos(root)
    out = tmp_path / "runs"
    res = run_script("prepare.py", "--config", str(ROOT / "configs" / "aptos2019.yaml"), *overrides(root, out, FAST))
    assert_user_error(res, "5 of 44 images cannot be used", "1 no image file", "1 empty (0 bytes)",
                      "2 truncated", "1 corrupt", *bad.values(), "image_problems.csv")
    assert "Premature end" not in res.stderr and "libpng" not in res.stderr  # no decoder noise
    listed = pd.read_csv(out / "image_problems.csv")
    assert sorted(listed["kind"]) == ["corrupt", "empty", "missing", "truncated", "truncated"]
    assert not (out / "folds.csv").exists()  # nothing written until every image is usable


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "corrupt"])
def test_each_problem_names_its_file(tmp_path, kind):
    root = build("aptos2019", tmp_path / "aptos2019")
    bad = _break_aptos(root)
    for other, name in bad.items():  # keep only `kind` broken
        if other != kind:
            fresh = tmp_path / "fresh"
            if not fresh.exists():
                build("aptos2019", fresh)
            sub = "test_images" if other.endswith("_test") else "train_images"
            shutil.copy(fresh / sub / name, root / sub / name)
    with pytest.raises(UserError) as e:
        prepare(_cfg("aptos2019", root, tmp_path / "runs"))
    msg = str(e.value)
    assert msg.startswith("1 of 44 images cannot be used") and bad[kind] in msg and "\n" not in msg


def test_loader_without_cache_decodes(aptos, tmp_path):
    cfg = aptos()
    comp = load_competition(cfg)
    load = image_loader(cfg, comp)  # no prepare yet: no cache folder
    assert isinstance(load, ImageLoader) and load.folder is None
    path = comp.train["path"][0]
    assert load(path).shape == (16, 16, 3)
    assert not (tmp_path / "cache").exists()
    assert image_loader(aptos("images.cache=false"), comp).folder is None


def test_bad_cache_settings():
    with pytest.raises(UserError, match="images.cache_format"):
        load_config(None, ["images.cache_format=jpeg"])


PLAIN = """import sys
sys.path.insert(0, {root!r})
import comp
{patch}cfg = comp.load_config(None, {overrides!r})
comp.prepare(cfg)
print("prepared")
"""
# Counts the cache's pool processes on stdout ("pool N"), so a test sees whether the parallel build ran.
POOL = """import comp.data.cache as cache
real_pool = cache.ProcessPoolExecutor
cache.ProcessPoolExecutor = lambda n, **kw: print("pool", n, flush=True) or real_pool(n, **kw)
"""


@pytest.mark.skipif(usable_cpus() < 2, reason="one core: the cache is built in this process anyway")
@pytest.mark.parametrize("guarded", [False, True])
def test_a_script_without_a_main_guard_builds_the_cache_in_this_process(tmp_path, guarded):
    # A user's plain script (issue 25 item 5): the cache's forkserver workers import the main script again,
    # so without `if __name__ == "__main__":` they re-ran its prepare and died minutes later ("out of memory?").
    # Now it is built here, with one warning line saying why and how to get the parallel build.
    root = write_tiny_competition(tmp_path / "data", n_per_class=22)  # 75 images: over MIN_PARALLEL
    over = [*FAST, f"data.root={root}", f"out_dir={tmp_path / 'runs'}", "data.source=competition",
            "data.solution_csv=solution.csv", f"images.cache_dir={tmp_path / 'cache'}"]
    body = PLAIN.format(root=str(ROOT), patch=POOL, overrides=over)
    if guarded:
        body = "if __name__ == '__main__':\n" + "".join(f"    {line}\n" for line in body.splitlines())
    script = tmp_path / "plain.py"
    script.write_text(body)
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180, cwd=str(tmp_path),
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0 and res.stdout.count("prepared") == 1, res.stderr[-3000:]
    said = [line for line in res.stderr.splitlines() if "guard" in line]
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 75
    if guarded:
        assert said == [] and f"pool {usable_cpus()}" in res.stdout, res.stderr[-2000:]
    else:
        assert "pool" not in res.stdout
        assert said == [f"warning: images: building the cache in this process, not in {usable_cpus()} worker "
                        f"processes: {script} has no `if __name__ == \"__main__\":` guard, so each worker (forkserver "
                        f"start) would run it again from the top; put its calls under that guard for the parallel "
                        f"build"], res.stderr[-2000:]


def test_the_main_guard_is_read_from_the_script(tmp_path, monkeypatch):
    from comp import system

    cases = {"import comp\ncomp.prepare(1)\n": False, "if __name__ == '__main__':\n    main()\n": True,
             "if '__main__' == __name__:\n    main()\n": True, "if __name__ != '__main__':\n    pass\n": False,
             "def f():\n    if __name__ == '__main__':\n        pass\n": False, "this is not python(\n": True}
    for i, (text, guarded) in enumerate(cases.items()):
        (tmp_path / f"s{i}.py").write_text(text)
        assert system.has_main_guard(tmp_path / f"s{i}.py") is guarded, text
    main = type(sys)("__main__")
    main.__file__ = str(tmp_path / "s0.py")
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert system.unguarded_main("spawn") == system.unguarded_main("forkserver") == tmp_path / "s0.py"
    assert system.unguarded_main("fork") is None
    main.__file__ = str(tmp_path / "s1.py")
    assert system.unguarded_main("spawn") is None and system.rerun_main("spawn") == tmp_path / "s1.py"
    main.__spec__ = type("Spec", (), {"name": "pkg.__main__"})()  # python -m pkg: multiprocessing re-runs nothing
    assert system.rerun_main("spawn") is None
    del main.__file__  # an interactive session, a notebook, python -c
    assert system.rerun_main("spawn") is None
    # A worker that died anyway: the message names the re-run as a cause where it can be one (a user's
    # script the workers import again), not for the kit's own scripts or a fork.
    from comp.data import cache

    main.__spec__, main.__file__ = None, str(tmp_path / "s1.py")
    assert "ran " + str(tmp_path / "s1.py") + " again from the top" in cache._rerun_hint("forkserver")
    assert cache._rerun_hint("fork") == ""
    main.__file__ = str(ROOT / "scripts" / "prepare.py")
    assert cache._rerun_hint("forkserver") == ""
