"""The README stays true: every config key is documented, the two commands are shown."""

from pathlib import Path

from omegaconf import OmegaConf

from comp.config import Config

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _keys(node, prefix=""):
    for k, v in node.items():
        key = f"{prefix}{k}"
        if OmegaConf.is_dict(v):
            yield from _keys(v, key + ".")
        else:
            yield key


def test_every_config_key_is_documented():
    missing = [k for k in _keys(OmegaConf.structured(Config)) if f"`{k}`" not in README]
    assert not missing, f"config keys missing from README.md: {missing}"


def test_two_commands_shown():
    assert "make demo" in README and "make test" in README
