from pathlib import Path

import pytest
import yaml

from cnclip_scale.train.config import ConfigError, load_config, save_config

REPO = Path(__file__).resolve().parents[2]


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  name: ViT-Tiny-16@RoBERTa-Tiny-chinese\noptim:\n  lr: 1.0e-4\n  max_steps: 50\n")
    cfg = load_config(path, ["optim.lr=3e-5", "data.train=[a.json,b.json]", "model.grad_checkpointing=true",
                             "optim.betas=[0.9,0.999]", "model.init=none", "deepspeed.zero_stage=3"])
    assert cfg.model.name == "ViT-Tiny-16@RoBERTa-Tiny-chinese"
    assert cfg.optim.lr == 3e-5 and cfg.optim.max_steps == 50 and cfg.optim.betas == [0.9, 0.999]
    assert cfg.data.train == ["a.json", "b.json"] and cfg.model.grad_checkpointing is True
    assert cfg.model.init is None and cfg.deepspeed.zero_stage == 3


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["optim.lr=2e-5", "train.output_dir=runs/x"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "optim.lrr: unknown config key"),
    ("data.batch_size=abc", "data.batch_size: expected int"),
    ("data.batch_size=1.5", "data.batch_size: expected int"),
    ("model.grad_checkpointing=yes", "expected bool"),
    ("deepspeed.precision=fp8", "not one of fp16, bf16, fp32"),
    ("optim", "expected key=value"),
])
def test_bad_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_shipped_configs_load():
    shipped = sorted((REPO / "configs").rglob("*.yaml"))
    assert shipped, "configs/ ships run configs"
    for path in shipped:
        cfg = load_config(path)
        assert yaml.safe_load(path.read_text()), path
        assert cfg.model.name.count("@") == 1, path
