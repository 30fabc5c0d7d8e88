from pathlib import Path

import pytest

from pointpeft.config import apply_overrides, build_dataclass, load_config
from pointpeft.errors import ConfigError
from pointpeft.models import PointTransformerConfig
from pointpeft.registry import Registry


def _w(p: Path, text: str) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def test_base_inheritance_deep_merge_and_sources(tmp_path):
    _w(tmp_path / "_base_/a.yaml", "model: {type: point_mae, depth: 12, num_heads: 6}\nseed: 1\n")
    _w(tmp_path / "_base_/b.yaml", "optimizer: {type: adamw, lr: 0.1}\n")
    child = _w(tmp_path / "x/c.yaml", "_base_: [../_base_/a.yaml, ../_base_/b.yaml]\nmodel: {depth: 6}\n")
    cfg = load_config(child, ["optimizer.lr=5e-4", "model.num_heads=3"])
    assert cfg["model"] == {"type": "point_mae", "depth": 6, "num_heads": 3}
    assert cfg["optimizer"]["lr"] == pytest.approx(5e-4)
    assert cfg["seed"] == 1
    assert cfg.source_of("model.depth").endswith("c.yaml")
    assert cfg.source_of("model.type").endswith("a.yaml")
    assert cfg.source_of("optimizer.lr") == "<override>"


def test_delete_replaces_parent_mapping(tmp_path):
    _w(tmp_path / "a.yaml", "peft: {type: lora, r: 8}\n")
    c = _w(tmp_path / "c.yaml", "_base_: a.yaml\npeft: {_delete_: true, type: vpt}\n")
    assert load_config(c)["peft"] == {"type": "vpt"}


def test_unknown_top_level_key_names_file(tmp_path):
    c = _w(tmp_path / "c.yaml", "modle: {type: point_mae}\n")
    with pytest.raises(ConfigError, match=r"modle.*c\.yaml"):
        load_config(c)


def test_unknown_section_key_names_file_and_key(tmp_path):
    c = _w(tmp_path / "c.yaml", "model: {depht: 6}\n")
    cfg = load_config(c)
    with pytest.raises(ConfigError, match=r"c\.yaml.*model\.depht"):
        build_dataclass(PointTransformerConfig, cfg["model"], "model", cfg)


def test_malformed_yaml_and_missing_base(tmp_path):
    bad = _w(tmp_path / "bad.yaml", "model: [unclosed\n")
    with pytest.raises(ConfigError, match="malformed YAML.*bad.yaml"):
        load_config(bad)
    c = _w(tmp_path / "c.yaml", "_base_: nope.yaml\n")
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(c)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_base_cycle(tmp_path):
    _w(tmp_path / "a.yaml", "_base_: b.yaml\n")
    _w(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_override_syntax():
    from pointpeft.config import Config

    cfg = Config({"a": {"b": 1}})
    apply_overrides(cfg, ["a.c=[1, 2]", "d.e=true"])
    assert cfg["a"]["c"] == [1, 2] and cfg["d"]["e"] is True
    with pytest.raises(ConfigError):
        apply_overrides(cfg, ["novalue"])
    with pytest.raises(ConfigError, match="not a mapping"):
        apply_overrides(cfg, ["a.b.x=1"])


def test_registry_build_rejects_unknown_kwargs():
    reg = Registry("thing")

    @reg.register("foo")
    class Foo:
        def __init__(self, a: int = 1) -> None:
            self.a = a

    assert reg.build({"type": "Foo", "a": 3}).a == 3
    assert reg.build({"NAME": "foo"}).a == 1
    with pytest.raises(ConfigError, match="unknown key"):
        reg.build({"type": "foo", "b": 2})
    with pytest.raises(ConfigError, match="registered: foo"):
        reg.build({"type": "bar"})
    with pytest.raises(KeyError):
        reg.register("foo")(type("Other", (), {}))
