"""Submission validation, property-based (hypothesis): mutations of a valid submission (ids dropped,
repeated, added or misspelt, rows reordered, headers renamed, columns dropped or added, values blank,
NaN, random text or random numbers), given as a frame or written to a file (BOM, CRLF, quoting, cut
short at any byte) go through what scripts/submit.py runs before the Kaggle CLI: comp.predict.submission's
read_exact and check. Whatever the input, the answer is acceptance or one UserError line — never
another exception — and whatever is accepted really matches the sample submission: the same header,
the same set of ids once each, and allowed values only (a class value, or a probability in [0, 1])."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pandas as pd
import pytest
from helpers import FAST, write_tiny_competition
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from comp.data.competition import load_competition
from comp.errors import UserError
from comp.experiment import load_config
from comp.predict.submission import check, output_mode, read_exact, sample_frame

PLAIN_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")  # what any CSV reader takes


@pytest.fixture(scope="module")
def comps(tmp_path_factory) -> dict:
    """One competition per kind of submission: labels, a probability per class, P(class 1) for AUC."""
    base = tmp_path_factory.mktemp("submission_props")
    out = {}
    for mode, classes, extra in (("label", (0, 1, 2), []), ("class_probs", (0, 1, 2), []),
                                 ("binary_prob", (0, 1), ["metric=auc"])):
        root = write_tiny_competition(base / mode, classes=classes, n_test=6)
        if mode == "class_probs":
            sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
            pd.DataFrame({"id": sample["id"], **{str(c): 0 for c in classes}}).to_csv(
                root / "sample_submission.csv", index=False)
        cfg = load_config(None, [*FAST, f"data.root={root}", "data.source=competition", *extra])
        comp = load_competition(cfg)
        sample = sample_frame(cfg, comp)
        assert output_mode(cfg, comp, sample) == mode
        out[mode] = (cfg, comp, sample, base / f"{mode}_files")
        (base / f"{mode}_files").mkdir()
    return out


texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8)
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.floats(0, 1).map(lambda v: f"{v:.6g}"), st.floats(0, 1).map(lambda v: f" {v:.3e} "),
                    st.integers(-3, 5).map(str))
values = st.one_of(numbers, texts, st.sampled_from(["", " ", "nan", "NaN", "None", "null", "inf", "-0", "1.0",
                                                    "0.", ".5", "1e0", "0,5", "١", "½", "0x1", "True"]))
row_ops = st.one_of(
    st.tuples(st.just("drop_row"), st.integers(0, 20)),
    st.tuples(st.just("dup_row"), st.integers(0, 20)),
    st.tuples(st.just("add_row"), st.one_of(texts, st.sampled_from(["test_999", "TEST_000", " test_000", "test_0"]))),
    st.tuples(st.just("set_id"), st.integers(0, 20), texts),
    *[st.tuples(st.just("set_value"), st.integers(0, 20), st.integers(0, 3), values)] * 3,  # the most varied
    st.tuples(st.just("shuffle"), st.randoms(use_true_random=False)),
)
header_ops = st.one_of(
    st.tuples(st.just("rename"), st.integers(0, 3), st.one_of(texts, st.sampled_from(["ID", "Label", " id", "id "]))),
    st.tuples(st.just("drop_col"), st.integers(0, 3)),
    st.tuples(st.just("add_col"), texts),
)
# a change of the header (it alone decides the answer) in a quarter of the cases, then a few of the rows
header_edit = st.tuples(st.integers(0, 3), header_ops).map(lambda t: [t[1]] if t[0] == 3 else [])
edits = st.tuples(header_edit, st.lists(row_ops, max_size=4)).map(lambda t: t[0] + t[1])


def valid_rows(mode: str, sample: pd.DataFrame, seed: int) -> list[list[str]]:
    rng = __import__("random").Random(seed)
    rows = [list(sample.columns)]
    for i in sample.iloc[:, 0]:
        if mode == "label":
            rows.append([i, rng.choice(["0", "1", "2"])])
        else:
            rows.append([i, *[f"{rng.random():.4f}" for _ in sample.columns[1:]]])
    return rows


def mutate(rows: list[list[str]], op: tuple) -> list[list[str]]:
    head, body = rows[0], rows[1:]
    kind = op[0]
    if kind == "drop_row" and body:
        body = body[: op[1] % len(body)] + body[op[1] % len(body) + 1:]
    elif kind == "dup_row" and body:
        body = body + [list(body[op[1] % len(body)])]
    elif kind == "add_row":
        body = body + [[op[1], *(["0"] * (len(head) - 1))]]
    elif kind == "set_id" and body:
        body[op[1] % len(body)][0] = op[2]
    elif kind == "set_value" and body and len(head) > 1:
        r = body[op[1] % len(body)]
        r[1 + op[2] % (len(r) - 1)] = op[3] if len(r) > 1 else r[0]
    elif kind == "shuffle":
        op[1].shuffle(body)
    elif kind == "rename":
        head = list(head)
        head[op[1] % len(head)] = op[2]
    elif kind == "drop_col" and len(head) > 1:
        k = op[1] % len(head)
        head, body = head[:k] + head[k + 1:], [r[:k] + r[k + 1:] for r in body]
    elif kind == "add_col":
        head, body = head + [op[1]], [r + ["0"] for r in body]
    return [head, *[list(r) for r in body]]


def assert_matches_sample(df: pd.DataFrame, sample: pd.DataFrame, mode: str, allowed: list) -> None:
    """What an accepted submission must be."""
    assert list(df.columns) == list(sample.columns)
    ids = df.iloc[:, 0].tolist()
    assert len(ids) == len(set(ids)) == len(sample) and set(ids) == set(sample.iloc[:, 0])
    for col in df.columns[1:]:
        for v in df[col]:
            if mode == "label":
                assert v in {str(a) for a in allowed}, v
            else:
                assert PLAIN_NUMBER.fullmatch(v) and 0 <= float(v) <= 1, v


def _check_one_line(e: UserError) -> None:
    assert str(e).strip() and "\n" not in str(e).strip(), str(e)
    event("refused: " + re.sub(r"'.*?'|\[.*?\]|\d+|/\S+", "_", str(e))[:45])  # --hypothesis-show-statistics


def _judge(checked, sample, mode, comp) -> None:
    """`checked()` either refuses the submission with a one-line UserError or returns the frame it accepted,
    which must then match the sample."""
    try:
        df = checked()
    except UserError as e:
        _check_one_line(e)
        return
    event("accepted")
    assert_matches_sample(df, sample, mode, comp.label_values)


MODES = ["label", "class_probs", "binary_prob"]
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(mode=st.sampled_from(MODES), seed=st.integers(0, 100), edits=edits)
def test_a_submission_frame_is_accepted_only_when_it_matches_the_sample(comps, mode, seed, edits):
    cfg, comp, sample, _ = comps[mode]
    rows = valid_rows(mode, sample, seed)
    for op in edits:
        rows = mutate(rows, op)
    head, body = rows[0], rows[1:]
    if len(set(head)) != len(head):  # a frame cannot hold two columns of one name; the file test covers it
        return
    df = pd.DataFrame(body, columns=head, dtype=str) if body else pd.DataFrame(columns=head, dtype=str)

    def checked():
        check(cfg, comp, df)
        return df
    _judge(checked, sample, mode, comp)


@SETTINGS
@given(mode=st.sampled_from(MODES), seed=st.integers(0, 100), edits=edits,
       bom=st.booleans(), crlf=st.booleans(), cut=st.one_of(st.none(), st.integers(0, 400)))
def test_a_submission_file_is_accepted_only_when_it_matches_the_sample(comps, mode, seed, edits, bom, crlf, cut):
    cfg, comp, sample, folder = comps[mode]
    rows = valid_rows(mode, sample, seed)
    for op in edits:
        rows = mutate(rows, op)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n" if crlf else "\n").writerows(rows)
    data = ("\ufeff" if bom else "").encode() + buf.getvalue().encode("utf-8")
    if cut is not None:
        data = data[:cut]
    path = Path(folder) / "sub.csv"
    path.write_bytes(data)

    def read_and_check():
        df = read_exact(path)
        check(cfg, comp, df)
        return df
    _judge(read_and_check, sample, mode, comp)


value_edits = st.lists(st.tuples(st.just("set_value"), st.integers(0, 20), st.integers(0, 3), values),
                       min_size=1, max_size=3)


@SETTINGS
@given(mode=st.sampled_from(MODES), seed=st.integers(0, 100), edits=value_edits)
def test_a_bad_value_is_refused_naming_its_line_and_column(comps, mode, seed, edits):
    """Ids and header left valid, values anything: accepted only with allowed values, else the first bad
    one named by its line and column."""
    cfg, comp, sample, _ = comps[mode]
    rows = valid_rows(mode, sample, seed)
    for op in edits:
        rows = mutate(rows, op)
    df = pd.DataFrame(rows[1:], columns=rows[0], dtype=str)
    try:
        check(cfg, comp, df)
    except UserError as e:
        _check_one_line(e)
        assert re.match(r"submission line \d+: \S+=.* is (empty or NaN|not one of the classes|not a probability)",
                        str(e)), str(e)
        return
    event("accepted")
    assert_matches_sample(df, sample, mode, comp.label_values)


@pytest.mark.parametrize("mode", MODES)
def test_the_unmutated_submission_is_accepted(comps, mode):
    """The properties above are not vacuous: a valid file (in any row order, BOM and CRLF) passes."""
    cfg, comp, sample, folder = comps[mode]
    rows = valid_rows(mode, sample, 0)
    rows = [rows[0], *rows[1:][::-1]]
    path = Path(folder) / "ok.csv"
    with open(path, "w", newline="", encoding="utf-8-sig") as f:
        csv.writer(f, lineterminator="\r\n").writerows(rows)
    df = read_exact(path)
    check(cfg, comp, df)
    assert_matches_sample(df, sample, mode, comp.label_values)
