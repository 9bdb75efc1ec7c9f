"""Run configuration: dataclasses in code, YAML on disk, dotted ``key=value`` overrides on the command line.

    cfg = load_config("configs/finetune/muge.yaml", ["optim.lr=3e-5", "deepspeed.zero_stage=3"])

Unknown keys are errors (a typo must not silently train with a default). The resolved config is saved next to the
checkpoints (``save_config``) and is what a resumed run compares against.
"""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError


@dataclass
class ModelCfg:
    name: str = "ViT-B-16@RoBERTa-wwm-ext-base-chinese"
    context_length: int = 52
    grad_checkpointing: bool = False
    init: str | None = None  # any checkpoint the weight adapter reads (official .pt, HF dir, native, DeepSpeed dir)
    image_size: int | None = None  # override the tower's resolution (tiny demos)


@dataclass
class DataCfg:
    train: list[str] = field(default_factory=list)  # manifest URLs, folders or brace patterns
    train_weights: list[float] | None = None  # mixing weights, one per source
    valid: list[str] = field(default_factory=list)
    batch_size: int = 128  # per rank
    valid_batch_size: int = 128
    workers: int = 4
    resampled: bool = False  # pretraining at scale: shards drawn with replacement
    epoch_samples: int | None = None  # resampled epochs: samples per epoch (default: the manifest's total)
    shuffle_buffer: int = 2000
    augment: bool = False


@dataclass
class OptimCfg:
    lr: float = 5e-5
    wd: float = 0.001
    warmup: int = 100
    max_steps: int | None = None
    max_epochs: int | None = 3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    min_lr: float = 0.0
    grad_clip: float = 1.0  # 0 disables


@dataclass
class DeepSpeedCfg:
    zero_stage: int = 2
    precision: str = "bf16"  # fp16 | bf16 | fp32
    config: str | None = None  # a ds_config JSON whose fields win over the generated ones
    initial_scale_power: int = 16  # fp16 dynamic loss scaling starts at 2**this


@dataclass
class TrainCfg:
    output_dir: str = "runs/default"
    freeze_vision: bool = False
    freeze_text: bool = False
    false_negatives: bool = True  # entries sharing an image or text id are positives, not negatives
    save_every: int = 1000
    keep_last: int = 2
    log_every: int = 10
    valid_every: int = 0  # 0: only at the end
    valid_recall: bool = True  # also retrieval recall on data.valid through the evaluator
    seed: int = 42
    resume: str = "auto"  # auto | none | PATH
    record_keys: bool = False  # write keys_rank{R}.jsonl: the sample keys of every step (audits, resume tests)


@dataclass
class RunConfig:
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    deepspeed: DeepSpeedCfg = field(default_factory=DeepSpeedCfg)
    train: TrainCfg = field(default_factory=TrainCfg)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message starts with the key."""


class _StrictLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping: plain YAML keeps the last one, so a section written twice
    would silently lose every key of its first copy."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(f"key {key!r} given twice (lines {seen[key]} and {key_node.start_mark.line + 1}); "
                                  "merge them into one")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _apply(obj, data: dict, where: str) -> None:
    hints = typing.get_type_hints(type(obj))
    for key, value in data.items():
        if key not in hints:
            raise ConfigError(f"{where}{key}: unknown config key")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{key}: expected a mapping, got {value!r}")
            _apply(current, value, f"{where}{key}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], f"{where}{key}"))


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check a value against its field's type; strings from the command line are parsed (``optim.lr=3e-5``,
    ``data.train=[a,b]``, ``model.init=none``)."""
    optional = type(None) in typing.get_args(hint)
    kinds = [t for t in typing.get_args(hint) if t is not type(None)] if optional else [hint]
    kind = typing.get_origin(kinds[0]) or kinds[0]
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~") and (optional or kind is not str)):
        if optional:
            return None
        raise ConfigError(f"{where}: may not be empty")
    try:
        if kind is bool:
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if isinstance(value, bool):
                return value
            raise ValueError
        if kind in (int, float):
            if isinstance(value, bool):
                raise ValueError
            number = kind(value)
            if kind is int and isinstance(value, float) and number != value:
                raise ValueError
            return number
        if kind is list:
            if isinstance(value, str):
                value = yaml.safe_load(value) if value.startswith("[") else value.split(",")
            if not isinstance(value, list):
                raise ValueError
            item = typing.get_args(kinds[0])[0] if typing.get_args(kinds[0]) else str
            # each item checked like a field of its own: [0.9,abc] must not pass as betas
            return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        if kind is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return os.path.expandvars(str(value))  # ${DATAPATH}/... as in Chinese-CLIP's run scripts
    except ConfigError:
        raise  # an item's own error names the item
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"{where}: expected {getattr(kind, '__name__', kind)}, got {value!r}")


def parse_overrides(overrides: list[str]) -> dict:
    nested: dict = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. optim.lr=3e-5")
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    cfg = RunConfig()
    if path is not None:
        try:
            data = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_StrictLoader) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except IsADirectoryError:
            raise ConfigError(f"{path}: a directory, not a config file") from None
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (model:, data:, optim:, deepspeed:, train:), "
                              f"got a {type(data).__name__}")
        _apply(cfg, data, f"{path}: ")
    _apply(cfg, parse_overrides(overrides or []), "override ")
    validate(cfg)
    return cfg


# (key, smallest value that works). None stays allowed where the field is optional.
_AT_LEAST = [
    ("model.context_length", 1), ("data.batch_size", 1), ("data.valid_batch_size", 1), ("data.workers", 0),
    ("data.epoch_samples", 1), ("data.shuffle_buffer", 0), ("optim.max_steps", 1), ("optim.max_epochs", 1),
    ("optim.warmup", 0), ("train.save_every", 0), ("train.keep_last", 1), ("train.log_every", 1),
    ("train.valid_every", 0),
]


def validate(cfg: RunConfig) -> None:
    for key, least in _AT_LEAST:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value is not None and value < least:
            # e.g. keep_last=0 pruned every checkpoint right after writing it; max_steps=0 read as 'unset'
            raise ConfigError(f"{key}: must be {'at least 1' if least == 1 else '0 or more'}, got {value}")
    if len(cfg.optim.betas) != 2 or not all(0 <= b < 1 for b in cfg.optim.betas):
        raise ConfigError(f"optim.betas: expected two numbers in [0, 1), got {cfg.optim.betas}")
    try:
        from ..model.configs import model_config  # plain dataclasses: no torch import

        model_config(cfg.model.name)
    except ValueError as e:
        raise ConfigError(f"model.name: {e}") from None
    if cfg.deepspeed.config:
        read_deepspeed_json(cfg.deepspeed.config)
    if cfg.deepspeed.precision not in ("fp16", "bf16", "fp32"):
        raise ConfigError(f"deepspeed.precision: {cfg.deepspeed.precision!r} is not one of fp16, bf16, fp32")
    if cfg.deepspeed.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"deepspeed.zero_stage: {cfg.deepspeed.zero_stage} is not 0, 1, 2 or 3")
    if cfg.optim.max_steps is None and cfg.optim.max_epochs is None:
        raise ConfigError("optim: set max_steps or max_epochs")
    if cfg.train.freeze_vision and cfg.train.freeze_text:
        raise ConfigError("train: freezing both towers leaves only logit_scale to train")


def read_deepspeed_json(path: str) -> dict:
    """The user's ``deepspeed.config`` file, checked at load rather than when the engine starts on every rank."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"deepspeed.config: {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"deepspeed.config: {path}: cannot read it ({e})") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"deepspeed.config: {path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"deepspeed.config: {path}: expected a JSON object, got a {type(data).__name__}")
    return data


def save_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True), encoding="utf-8")
