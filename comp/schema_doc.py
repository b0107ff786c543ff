"""docs/config.md, generated from the schema: every key of comp.schema with its type, default and the comment
after it (continued on the comment lines below it), one Markdown table per section, keys dotted.

The schema is the one place a key is documented; this module only reads it. The comments come from the
source (tokenize: a field's trailing comment, then every comment-only line up to the next field), the
types from its annotations (ast), the defaults from the dataclasses themselves (so a default_factory shows
its value). Standard library and comp.schema only: no torch, fast enough for a test to regenerate the page
and compare (`make docs` writes it: python -m comp.schema_doc > docs/config.md).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import re
import sys
import tokenize
from dataclasses import dataclass
from typing import Any

from comp import schema

# The sections in the order the page shows them: the top-level keys, then Config's sections as it lists them.
SECTION_TITLES = {
    "": "top-level keys",
    "data": "the competition download, its tables and labels, external data",
    "folds": "the K-fold split",
    "model": "the network",
    "optim": "the optimizer and learning-rate schedule",
    "train": "the training loop",
    "images": "decoding, preprocessing and the image cache",
    "aug": "augmentation and test-time views",
    "predict": "the fold ensemble and the submission",
    "distill": "knowledge distillation",
    "mil": "many images per row: series, studies, views and tiles (multiple-instance learning)",
}

INTRO = """\
# Configuration keys

<!-- Generated from the schema (comp.schema) by `make docs`: edit the comments there, not this page. -->

A run's settings come from three places, later ones winning: the schema's defaults (below), the YAML file
given with `--config` (default `configs/demo.yaml`), then `KEY=VALUE` overrides on the command line with
dotted keys (`epochs=20 model.name=timm/efficientnet_b3 optim.lr=3e-4`; lists as `aug.tta=[identity,hflip]`).
An unknown key (with a "did you mean" for a typo or another tool's name), a wrong type or an impossible
value is one line `error: ...` naming the dotted key, exit code 2. Relative paths (`data.root`, `out_dir`,
`images.cache_dir`, ...) are taken from the repository root, not the current directory, and every message
about a path shows the absolute path it resolved to. The resolved config is saved with every run
(`<out_dir>/fold<K>/config.yaml`). Shipped configs: [configs.md](configs.md); `scripts/init.py` writes a
starting one for a new download ([new-competition.md](new-competition.md)).
"""


@dataclass(frozen=True)
class Key:
    """One documented key: its dotted name, type as written in the schema, default, and comment."""

    name: str
    type: str
    default: Any
    comment: str


def _comments(source: str) -> dict[int, str]:
    """{line number: comment text without '#'} for every comment in `source`."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def _field_docs(source: str) -> dict[str, dict[str, tuple[str, str]]]:
    """{class name: {field: (annotation, comment)}}: a field's comment is the comment on its own line(s)
    plus every following line holding only a comment, up to the next statement or blank line."""
    comments = _comments(source)
    lines = source.splitlines()
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        fields = {}
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            end = stmt.end_lineno or stmt.lineno
            parts = [comments[n] for n in range(stmt.lineno, end + 1) if n in comments]
            n = end + 1
            while n <= len(lines) and lines[n - 1].strip().startswith("#") and n in comments:
                parts.append(comments[n])
                n += 1
            fields[stmt.target.id] = (ast.unparse(stmt.annotation), " ".join(p for p in parts if p))
        out[node.name] = fields
    return out


def schema_keys() -> list[tuple[str, list[Key]]]:
    """[(section, [Key, ...]), ...] in the page's order: "" for the top-level keys, then each section."""
    docs = _field_docs(inspect.getsource(schema))
    top: list[Key] = []
    sections: list[tuple[str, list[Key]]] = []
    for f in dataclasses.fields(schema.Config):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):  # a section: its own dataclass, its own table
            cls = type(default)
            keys = []
            for g in dataclasses.fields(cls):
                value = g.default_factory() if g.default_factory is not dataclasses.MISSING else g.default
                ann, comment = docs[cls.__name__][g.name]
                keys.append(Key(f"{f.name}.{g.name}", ann, value, comment))
            sections.append((f.name, keys))
        else:
            ann, comment = docs["Config"][f.name]
            top.append(Key(f.name, ann, default, comment))
    return [("", top), *sections]


def _value(v: Any) -> str:
    """A default as it is written in YAML: null, true, "", 1e-6, [identity, hflip]."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v if v else '""'
    if isinstance(v, float):
        return repr(v).replace("e-0", "e-")
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return str(v)


# A word holding <...> outside backticks (<out_dir>/fold<K>/, <parent of data.root>/cache): HTML to a Markdown
# renderer (<i> would start italics, <K> would vanish), so it is shown as code.
_ANGLED = re.compile(r"[^\s`<>]*(?:<[^<>`\n]*>[^\s`<>]*)+")


def _code(m: re.Match) -> str:
    """The matched word as a code span, its surrounding punctuation left outside."""
    word = m.group(0)
    core = word.lstrip("(").rstrip(",;:.)")
    head = word[: len(word) - len(word.lstrip("("))]
    return f"{head}`{core}`{word[len(head) + len(core):]}"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell: paths with <...> as code, and every `|` escaped (GitHub
    splits cells at each unescaped one, code spans included)."""
    parts = text.split("`")
    parts[::2] = [_ANGLED.sub(_code, part) for part in parts[::2]]  # outside code spans
    return "`".join(parts).replace("|", "\\|")


def render() -> str:
    """The whole of docs/config.md."""
    out = [INTRO.rstrip()]
    for section, keys in schema_keys():
        title = f"`{section}`: {SECTION_TITLES.get(section, section)}" if section else "Top-level keys"
        out += ["", f"## {title}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        out += [f"| `{k.name}` | {_cell(k.type)} | `{_cell(_value(k.default))}` | {_cell(k.comment)} |" for k in keys]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
