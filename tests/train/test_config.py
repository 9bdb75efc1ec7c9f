from pathlib import Path

import pytest
import yaml

from cnclip_scale.train.config import (
    ConfigError,
    DataCfg,
    OptimCfg,
    RunConfig,
    check_config,
    load_config,
    save_config,
)

REPO = Path(__file__).resolve().parents[2]


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  name: ViT-Tiny-16@RoBERTa-Tiny-chinese\noptim:\n  lr: 1.0e-4\n  max_steps: 50\n")
    cfg = load_config(
        path,
        [
            "optim.lr=3e-5",
            "data.train=[a.json,b.json]",
            "model.grad_checkpointing=true",
            "optim.betas=[0.9,0.999]",
            "model.init=none",
            "deepspeed.zero_stage=3",
        ],
    )
    assert cfg.model.name == "ViT-Tiny-16@RoBERTa-Tiny-chinese"
    assert cfg.optim.lr == 3e-5 and cfg.optim.max_steps == 50 and cfg.optim.betas == [0.9, 0.999]
    assert cfg.data.train == ["a.json", "b.json"] and cfg.model.grad_checkpointing is True
    assert cfg.model.init is None and cfg.deepspeed.zero_stage == 3


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["optim.lr=2e-5", "train.output_dir=runs/x"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", "optim.lrr: unknown config key"),
        ("data.batch_size=abc", "data.batch_size: expected int"),
        ("data.batch_size=1.5", "data.batch_size: expected int"),
        ("model.grad_checkpointing=yes", "expected bool"),
        ("deepspeed.precision=fp8", "not one of fp16, bf16, fp32"),
        ("optim", "expected key=value"),
    ],
)
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


# ------------------------------------------------------------------ values that cannot work are refused at load
@pytest.mark.parametrize(
    "override, message",
    [
        # keep_last < 1 used to delete every checkpoint right after writing it
        ("train.keep_last=0", "train.keep_last: must be at least 1"),
        ("train.keep_last=-3", "train.keep_last: must be at least 1"),
        ("train.log_every=0", "train.log_every: must be at least 1"),
        ("data.batch_size=0", "data.batch_size: must be at least 1"),
        ("data.valid_batch_size=0", "data.valid_batch_size: must be at least 1"),
        ("data.workers=-1", "data.workers: must be 0 or more"),
        ("optim.max_steps=0", "optim.max_steps: must be at least 1"),  # was silently 'unset' (falsy)
        ("optim.max_epochs=0", "optim.max_epochs: must be at least 1"),
        ("train.save_every=-1", "train.save_every: must be 0 or more"),
        ("optim.betas=[0.9,abc]", r"optim.betas\[1\]: expected float, got 'abc'"),
        ("model.name=ViT-B-16@RoBERTa-wwm-ext-base-chinees", "model.name: unknown text tower"),
        ("model.name=ViT-B-16", "model.name: model name 'ViT-B-16' must be"),
    ],
)
def test_impossible_values_are_refused_with_the_key_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_a_top_level_list_is_refused(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("- model: {name: ViT-Tiny-16@RoBERTa-Tiny-chinese}\n")
    with pytest.raises(ConfigError, match=f"{path}: expected a mapping of sections .*, got a list"):
        load_config(path)


def test_a_section_given_twice_is_refused_not_half_dropped(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 1.0e-4\ndata:\n  workers: 1\noptim:\n  max_steps: 5\n")
    with pytest.raises(ConfigError, match=rf"{path}: key 'optim' given twice \(lines 1 and 5\)"):
        load_config(path)
    path.write_text("optim:\n  lr: 1.0e-4\n  lr: 2.0e-4\n")
    with pytest.raises(ConfigError, match="key 'lr' given twice"):
        load_config(path)


def test_deepspeed_config_file_must_exist_and_hold_an_object(tmp_path):
    with pytest.raises(ConfigError, match=f"deepspeed.config: {tmp_path / 'nope.json'}: no such file"):
        load_config(None, [f"deepspeed.config={tmp_path / 'nope.json'}"])
    bad = tmp_path / "ds.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=f"deepspeed.config: {bad}: not valid JSON"):
        load_config(None, [f"deepspeed.config={bad}"])
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match=f"deepspeed.config: {bad}: expected a JSON object"):
        load_config(None, [f"deepspeed.config={bad}"])
    bad.write_text('{"zero_optimization": {"stage": 2}}')
    assert load_config(None, [f"deepspeed.config={bad}"]).deepspeed.config == str(bad)


def test_config_error_is_a_user_error():
    from cnclip_scale.errors import UserError

    assert issubclass(ConfigError, UserError) and issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(
    "override, message",
    [
        ("deepspeed.precision=FP16", "deepspeed.precision: 'FP16' is not one of fp16, bf16, fp32"),
        ("deepspeed.zero_stage=4", "deepspeed.zero_stage: '4' is not one of 0, 1, 2, 3"),
        ("deepspeed.zero_stage=two", "deepspeed.zero_stage: 'two' is not one of 0, 1, 2, 3"),
    ],
)
def test_modes_are_checked_against_their_literal_on_load(override, message):
    with pytest.raises(ConfigError, match=f"^override {message}$"):
        load_config(None, [override])


def test_modes_from_yaml_keep_their_type(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("deepspeed:\n  zero_stage: 3\n  precision: fp16\n")
    cfg = load_config(path)
    assert cfg.deepspeed.zero_stage == 3 and cfg.deepspeed.precision == "fp16"
    path.write_text("deepspeed:\n  zero_stage: true\n")  # YAML's true is not stage 1
    with pytest.raises(ConfigError, match="deepspeed.zero_stage: True is not one of"):
        load_config(path)


def test_a_config_built_in_code_is_checked_too():
    cfg = RunConfig()
    cfg.deepspeed.precision = "fp8"
    with pytest.raises(ConfigError, match="deepspeed.precision: 'fp8' is not one of"):
        check_config(cfg)


def test_sections_are_built_by_keyword():
    with pytest.raises(TypeError):
        OptimCfg(1e-4)  # a positional value would silently land on whichever field comes first
    assert DataCfg(batch_size=4).batch_size == 4


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.name=ViT-Tiny-16@nope", "model.name: unknown text tower"),
        ("model.image_size=30", "model.image_size: 30 is not a multiple of the patch size 16"),
        ("model.context_length=600", "model.context_length: 600 is more than the 128 positions"),
    ],
)
def test_model_settings_the_towers_cannot_take_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["model.name=ViT-Tiny-16@RoBERTa-Tiny-chinese", override])
