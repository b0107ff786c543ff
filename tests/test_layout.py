"""The layout is a contract (shared/DESIGN.md): the data path flows one way through the subpackages, every
file replaced on disk goes through comp.io, the library carries no benchmark code and no private timm
import, and each module stays small enough to read in one sitting."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMP = ROOT / "comp"
MODULES = sorted(p for p in COMP.rglob("*.py"))

# Lowest first: a module may import its own layer and the ones before it, never a later one.
LAYERS = [
    ("comp.config", "comp.errors", "comp.log", "comp.io", "comp.device", "comp.tasks", "comp.competition_metrics",
     "comp.metrics", "comp.kaggle_cli",
     "comp.cli", "comp.system", "comp.schema"),
    ("comp.data",),
    ("comp.models",),
    ("comp.train",),
    ("comp.predict",),
    ("comp.submit",),
    ("comp.report",),
]


def layer(module: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} is in no layer of tests/test_layout.py: place it")


def name_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[str]:
    """Every module `path` imports, at the top or inside a function."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
            out += [f"{node.module}.{a.name}" for a in node.names]  # `from comp import io`
    return out


@pytest.mark.parametrize("path", [p for p in MODULES if p != COMP / "__init__.py"], ids=lambda p: name_of(p))
def test_lower_layers_never_import_higher_ones(path):
    me = layer(name_of(path))
    for mod in imports(path):
        if mod.startswith("comp."):
            try:
                theirs = layer(mod)
            except AssertionError:  # `from comp.x import name`: name is no module
                continue
            assert theirs <= me, f"{name_of(path)} (layer {me}) imports {mod} (layer {theirs})"


def test_small_files_no_benchmarks_no_private_timm_one_replace():
    for path in MODULES:
        text = path.read_text()
        lines = text.count("\n")
        assert lines <= 350, f"{path.relative_to(ROOT)} has {lines} lines (split it by concern)"
        mods = imports(path)
        assert not any(m == "benchmarks" or m.startswith("benchmarks.") for m in mods), path
        assert not any(m.startswith("timm.") and "._" in m for m in mods), f"{path}: a private timm module"
        if path != COMP / "io.py":
            assert "os.replace(" not in text and "os.rename(" not in text, f"{path}: replace files with comp.io"


def test_every_module_says_what_it_owns():
    for path in MODULES:
        if path.name == "__init__.py" and not path.read_text().strip():
            continue
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and len(doc) > 20, f"{path.relative_to(ROOT)} opens with no docstring"
