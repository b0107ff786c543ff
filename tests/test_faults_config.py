"""Config faults: whatever the command line or YAML holds, the kit answers with a config or one
UserError naming the key — never another exception (property-based with hypothesis)."""

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from comp.config import Config, load_config
from comp.errors import UserError


def _keys(node, prefix=""):
    for k, v in node.items():
        if OmegaConf.is_dict(v):
            yield from _keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


KEYS = sorted(_keys(OmegaConf.structured(Config)))
values = st.one_of(
    st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["true", "false", "null", "[]", "[a, b]", "{}", "{name: Affine}", "''", "resnet18", "1e-3"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(alphabet="abcdefghij._", min_size=1, max_size=15))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(keys, values), max_size=4))
def test_overrides_never_crash(pairs):
    overrides = [f"{k}={v}" for k, v in pairs]
    try:
        cfg = load_config(None, overrides)
    except UserError as e:
        msg = str(e)
        assert "\n" not in msg.strip() and msg  # one line
        return
    assert cfg.epochs >= 1 and cfg.image_size >= 8  # what passed is usable


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=200))
def test_yaml_files_never_crash(tmp_path_factory, text):
    path = Path(tmp_path_factory.mktemp("cfg")) / "c.yaml"
    path.write_text(text)
    try:
        load_config(path)
    except UserError as e:
        assert str(e)
