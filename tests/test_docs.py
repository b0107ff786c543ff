"""The README and docs/ stay true: docs/config.md is the schema's, every key, config and script is documented,
the README is short and shows the two commands, and every link, script, flag and make target it names exists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from comp.config import Config
from comp.schema_doc import render, schema_keys

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text()
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")  # [text](target#anchor)


def _keys(node, prefix=""):
    for k, v in node.items():
        key = f"{prefix}{k}"
        if OmegaConf.is_dict(v):
            yield from _keys(v, key + ".")
        else:
            yield key


def test_config_md_is_generated_from_the_schema():
    assert (DOCS / "config.md").read_text() == render(), "docs/config.md is out of date with the schema: run make docs"


def test_every_config_key_is_documented():
    text = (DOCS / "config.md").read_text()
    missing = [k for k in _keys(OmegaConf.structured(Config)) if f"`{k}`" not in text]
    assert not missing, f"config keys missing from docs/config.md (run make docs): {missing}"


def test_every_schema_key_has_a_comment():
    bare = [k.name for _, keys in schema_keys() for k in keys if not k.comment]
    assert not bare, f"schema keys without a comment in comp/schema.py (the comment after the field): {bare}"


def test_generator_is_deterministic_and_imports_no_torch():
    code = ("import sys, comp.schema_doc as d; assert d.render() == d.render(); "
            "print(sorted(m for m in ('torch', 'timm', 'omegaconf') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"comp.schema_doc imported {out.stdout.strip()}"


@pytest.mark.parametrize("folder,page,skip", [("configs", "configs.md", ()),
                                              ("scripts", "scripts.md", ("_common.py",))])
def test_every_config_and_script_is_listed(folder, page, skip):
    text = (DOCS / page).read_text()
    missing = [p.name for p in sorted((ROOT / folder).iterdir())
               if p.is_file() and p.name not in skip and f"`{p.name}`" not in text and f"## {p.name}" not in text]
    assert not missing, f"{folder}/ files missing from docs/{page}: {missing}"


def test_readme_is_short_and_shows_the_two_commands():
    lines = README.count("\n")
    assert lines <= 200, f"README.md has {lines} lines: move reference material to docs/"
    assert "make demo" in README and "make test" in README


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a Markdown page's headings: lower case, punctuation dropped, spaces as '-'."""
    heads = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_links_resolve():
    """Every relative link of README.md and docs/*.md names an existing file (and heading, for a link with
    #anchor to a Markdown page); README links every docs page."""
    broken = []
    for page in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for target, anchor in LINK.findall(page.read_text()):
            if "://" in target:
                continue
            path = page.parent / target
            if not path.exists() or (anchor and path.suffix == ".md" and anchor[1:] not in _anchors(path)):
                broken.append(f"{page.relative_to(ROOT)} -> {target}{anchor}")
    assert not broken, f"links to missing files: {broken}"
    unlinked = [p.name for p in sorted(DOCS.glob("*.md")) if f"](docs/{p.name})" not in README]
    assert not unlinked, f"docs pages README.md does not link: {unlinked}"


def test_readme_names_only_real_scripts_flags_and_targets():
    """Each `scripts/X.py` the README names exists, each --flag on its line is one of that script's options
    (or comp.cli's common ones), and each `make X` is a Makefile target."""
    common = (ROOT / "comp" / "cli.py").read_text()
    for line in README.splitlines():
        for name in re.findall(r"scripts/(\w+\.py)", line):
            script = ROOT / "scripts" / name
            assert script.exists(), f"README.md names scripts/{name}, which does not exist"
        names = re.findall(r"scripts/(\w+\.py)", line)
        if len(names) == 1:  # flags on a line naming one script are that script's
            source = (ROOT / "scripts" / names[0]).read_text()
            for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", line):
                assert f'"{flag}"' in source or f'"{flag}"' in common, f"README.md: {names[0]} has no {flag}"
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    for target in re.findall(r"`make ([\w-]+)", README) + re.findall(r"^make ([\w-]+)", README, re.M):
        assert target in targets, f"README.md names make {target}, which the Makefile lacks"


PATH_NAMED = re.compile(r"(?<![\w/.])((?:tests|scripts|benchmarks|comp|configs|docs|examples)/"
                        r"[\w/.-]*\w\.(?:py|sh|yaml|md|ipynb))")
TEST_FILE_NAMED = re.compile(r"(?<![\w/.])(test_\w+\.py)\b")


def test_every_file_the_tree_names_exists():
    """Files move (the tests mirror comp/): a comment, docstring, doc page or script that names a file by its path
    under the repository, or a test file by its bare name, points at one that exists."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    test_names = {Path(p).name for p in tracked if p.startswith("tests/")}
    stale = []
    for rel in tracked:
        if rel == "BENCHMARKS.md" or (not rel.endswith((".py", ".md", ".sh", ".yaml", ".yml", ".toml", ".cfg"))
                                      and rel != "Makefile"):
            continue  # BENCHMARKS.md records the commands as they were on the day
        text = (ROOT / rel).read_text(errors="replace")
        for i, line in enumerate(text.splitlines(), 1):
            for named in PATH_NAMED.findall(line):
                placeholder = Path(named).stem in ("X", "x", "does_not_exist")
                outside = "github.com" in line  # a path in another repository
                if not (ROOT / named).exists() and not placeholder and not outside:
                    stale.append(f"{rel}:{i}: {named}")
            for named in TEST_FILE_NAMED.findall(line):
                if named not in test_names and f"/{named}" not in line:
                    stale.append(f"{rel}:{i}: {named}")
    assert not stale, "files named that do not exist:\n" + "\n".join(stale)
