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
# Prediction sits below training because training uses it (a distillation teacher's outputs, pseudo-labels).
LAYERS = [
    ("comp.config", "comp.errors", "comp.log", "comp.io", "comp.device", "comp.likelihood", "comp.tasks",
     "comp.competition_metrics",
     "comp.study_metrics",
     "comp.schema_doc",
     "comp.metrics", "comp.kaggle_cli",
     "comp.cli", "comp.system", "comp.schema"),
    ("comp.data",),
    ("comp.models",),
    ("comp.experiment",),
    ("comp.predict",),
    ("comp.teacher",),
    ("comp.train",),
    ("comp.ensemble",),
    ("comp.submit",),
    ("comp.report",),
    ("comp.pipeline",),
]


def layer(module: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} is in no layer of tests/test_layout.py: place it")


def name_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    """Whether dotted `name` is a module or package of this checkout (comp.x.y, benchmarks.z)."""
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports(path: Path) -> list[str]:
    """Every module `path` imports, at the top, inside a function or under TYPE_CHECKING (relative imports
    resolved). `from pkg import x` counts as pkg.x where that is a module of ours, else as pkg (the name is
    defined there): so `import comp` and `from comp import X` (X no module) count as the package facade
    `comp` itself, and `from comp import io` as comp.io only."""
    out = []
    package = name_of(path) if path.name == "__init__.py" else name_of(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or node.level):
            module = node.module or ""
            if node.level:  # from .x import y: relative to this module's package
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([module] if module else [])])
            if is_module(module):  # ours: `from comp.data import cache` imports comp.data.cache; a name, its module
                out += list(dict.fromkeys(f"{module}.{a.name}" if is_module(f"{module}.{a.name}") else module
                                          for a in node.names))
            else:
                out += [module, *(f"{module}.{a.name}" for a in node.names)]  # `from timm import _private`
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


@pytest.mark.parametrize("path", [p for p in MODULES if p != COMP / "__init__.py"], ids=lambda p: name_of(p))
def test_nothing_below_the_facade_imports_comp_itself(path):
    # comp/__init__.py is above every layer and imports them (lazily); a module under it importing `comp`
    # (bare, or a name the facade defines) closes a circle through the whole kit. Scripts may.
    assert "comp" not in imports(path), (f"{name_of(path)} imports the package facade `comp`: import the "
                                         f"module that defines the name instead")


def import_graph(paths: list[Path]) -> dict[str, set[str]]:
    """module -> the modules among `paths` it imports (`imports`: top level, functions, TYPE_CHECKING),
    each imported name resolved to the longest dotted prefix that is one of them. Edges into the facade
    `comp` are left out: comp/__init__.py imports every layer by design, and a module importing it is
    test_nothing_below_the_facade_imports_comp_itself's failure."""
    names = {name_of(p): p for p in paths}
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        edges = set()
        for mod in imports(path):
            parts = mod.split(".")
            target = next((".".join(parts[:k]) for k in range(len(parts), 0, -1) if ".".join(parts[:k]) in names), None)
            if target is not None and target != name and target != "comp":
                edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted: the import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("package", ["comp", "benchmarks"])
def test_no_import_cycles(package):
    # An import inside a function or under TYPE_CHECKING still ties the two modules together: each needs
    # the other to be read, tested and moved. Modules import downwards only.
    paths = sorted((ROOT / package).rglob("*.py"))
    found = cycles(import_graph(paths))
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


# The run folder's file names (comp.experiment.layout.FILES) and its folder prefixes, spelled as a path
# (the whole string, or after a `/` or a glob's `*`): only the experiment may build those paths. Prose that
# names a file in a message ("this experiment's folds.csv") is not a path and is not matched.
SCANNED = [*MODULES, *sorted((ROOT / "scripts").glob("*.py")), *sorted((ROOT / "benchmarks").glob("*.py"))]
OWNER = COMP / "experiment" / "layout.py"


# The same names where they are not the run folder's: (file, name, why)
ELSEWHERE = [("scripts/init.py", "config.yaml", "the user's own config file init.py writes"),
             ("comp/data/inspect.py", "config.yaml", "the user's own config file init.py writes"),
             ("comp/train/tracking.py", "config.yaml", "the name of the config's MLflow artifact"),
             ("comp/submit/notebook.py", "submission.csv", "the file Kaggle takes from a notebook's output"),
             ("comp/train/tune.py", "fold", "an Optuna trial attribute, fold<K>'s score (trials.csv)")]


def _path_pieces(tree: ast.AST) -> list[tuple[int, str, bool]]:
    """(line, text, followed by a formatted value that ends the string or a path part) of every string
    literal and f-string piece that is code, not a docstring."""
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            for i, part in enumerate(node.values):
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    nxt = node.values[i + 1] if i + 1 < len(node.values) else None
                    after = node.values[i + 2] if i + 2 < len(node.values) else None  # `fold{k}/` or `fold{k}`
                    ends = after is None or isinstance(after, ast.Constant) and str(after.value).startswith("/")
                    out.append((node.lineno, part.value, isinstance(nxt, ast.FormattedValue) and ends))
                    docs.add(id(part))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            out.append((node.lineno, node.value, False))
    return out


def run_folder_spellings(path: Path) -> list[str]:
    import re

    from comp.experiment.layout import FILES

    names = "|".join(re.escape(n) for n in FILES.values())
    as_path = re.compile(rf"(^|[/*])({names})($|/)")
    prefix = re.compile(r"(^|/)(fold|seed|stage)$")
    found, rel = [], str(path.relative_to(ROOT))
    allowed = {name for f, name, _ in ELSEWHERE if f == rel}
    for line, text, formatted in _path_pieces(ast.parse(path.read_text())):
        if text in allowed:
            continue
        if as_path.search(text) or formatted and prefix.search(text):
            found.append(f"{rel}:{line}: {text!r}")
    return found


def test_only_the_experiment_spells_the_run_folder():
    """Every path into the run folder is built by comp.experiment (its layout's FILES and fold/seed/stage
    folders); the check itself is checked on the lines it must catch."""
    bad = [hit for p in SCANNED if p != OWNER for hit in run_folder_spellings(p)]
    assert not bad, "run-folder paths built outside comp/experiment/layout.py:\n" + "\n".join(bad)
    assert run_folder_spellings(OWNER), "the check finds nothing in the layout itself: it is broken"
    probe = ROOT / "tests" / "_probe_layout.py"
    probe.write_text('d = out / f"fold{k}" / "best.pt"\ng = run.glob("fold*/oof.csv")\n'
                     'm = f"see {out}/fold{k}/seed{s}/metrics.csv"\n'
                     'ok = f"fold {k}: {n} test_fold{k} fold{k}_{s}.png; the folds.csv of {d}"\n')
    try:
        hits = run_folder_spellings(probe)
    finally:
        probe.unlink()
    assert sorted(h.split(": ", 1)[1] for h in hits) == sorted(["'fold'", "'best.pt'", "'fold*/oof.csv'", "'/fold'",
                                                               "'/seed'", "'/metrics.csv'"]), hits
