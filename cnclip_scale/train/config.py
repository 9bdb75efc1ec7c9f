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
from typing import Any, Literal

import yaml

from ..data.config import DataCfg
from ..errors import UserError

__all__ = [
    "ConfigError",
    "DataCfg",
    "DeepSpeedCfg",
    "ModelCfg",
    "OptimCfg",
    "RunConfig",
    "TrainCfg",
    "check_config",
    "load_config",
    "save_config",
]

Precision = Literal["fp16", "bf16", "fp32"]
ZeroStage = Literal[0, 1, 2, 3]


@dataclass(kw_only=True)
class ModelCfg:
    name: str = "ViT-B-16@RoBERTa-wwm-ext-base-chinese"
    context_length: int = 52
    grad_checkpointing: bool = False
    init: str | None = None  # any checkpoint the weight adapter reads (official .pt, HF dir, native, DeepSpeed dir)
    # Separately pretrained towers, applied after `init` (model/towers.py): an OpenAI CLIP .pt, open_clip or timm ViT
    # file; a Hugging Face BERT dir (its vocab becomes the run's tokenizer vocab).
    init_vision: str | None = None
    init_text: str | None = None
    image_size: int | None = None  # override the tower's resolution (tiny demos)
    mask_ratio: float = 0.0  # FLIP: drop this share of each image's patch tokens in training (0.5 in FLIP)


@dataclass(kw_only=True)
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
    lr_vision: float | None = None  # the image tower's base lr (EVA-CLIP's --visual-lr); default: lr
    lr_text: float | None = None  # the text tower's (--text-lr); default: lr
    layer_decay: float = 1.0  # layer-wise lr decay (BEiT/EVA): block i of L gets decay**(L - i); 1: off


@dataclass(kw_only=True)
class DeepSpeedCfg:
    zero_stage: ZeroStage = 2
    precision: Precision = "bf16"
    config: str | None = None  # a ds_config JSON whose fields win over the generated ones
    initial_scale_power: int = 16  # fp16 dynamic loss scaling starts at 2**this


@dataclass(kw_only=True)
class TrainCfg:
    output_dir: str = "runs/default"
    freeze_vision: bool = False
    freeze_text: bool = False
    freeze_vision_except_last: int | None = None  # lock the image tower but its last N blocks, final norm, head
    freeze_text_except_last: int | None = None  # lock the text tower but its last N layers and text_projection
    reset_optimizer: bool = False  # on resume: weights and data position kept, optimizer and lr schedule fresh
    reset_data: bool = False  # on resume: the epoch starts over
    false_negatives: bool = True  # entries sharing an image or text id are positives, not negatives
    save_every: int = 1000
    keep_last: int = 2
    log_every: int = 10
    valid_every: int = 0  # 0: only at the end
    save_every_epochs: int = 0  # also save at the end of every N-th epoch (0: off)
    valid_every_epochs: int = 0  # also validate at the end of every N-th epoch (0: off)
    valid_recall: bool = True  # also retrieval recall on data.valid through the evaluator
    seed: int = 42
    resume: str = "auto"  # auto | none | PATH
    record_keys: bool = False  # write keys_rank{R}.jsonl: the sample keys of every step (audits, resume tests)


@dataclass(kw_only=True)
class RunConfig:
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    deepspeed: DeepSpeedCfg = field(default_factory=DeepSpeedCfg)
    train: TrainCfg = field(default_factory=TrainCfg)

    def to_dict(self) -> dict:
        """Every setting, with credentials in ``data.storage_options`` redacted (this is what run dirs and
        checkpoints record)."""
        out = dataclasses.asdict(self)
        out["data"]["storage_options"] = self.data.redacted_storage_options()
        return out


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
                raise ConfigError(
                    f"key {key!r} given twice (lines {seen[key]} and {key_node.start_mark.line + 1}); "
                    "merge them into one"
                )
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
    if typing.get_origin(hint) is Literal:
        return _choice(value, typing.get_args(hint), where)
    optional = type(None) in typing.get_args(hint)
    kinds = [t for t in typing.get_args(hint) if t is not type(None)] if optional else [hint]
    kind = typing.get_origin(kinds[0]) or kinds[0]
    empty = isinstance(value, str) and value.lower() in ("none", "null", "~") and (optional or kind is not str)
    if value is None or empty:
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
        if kind is dict:
            if isinstance(value, str):  # data.storage_options='{"endpoint_url": "http://..."}'
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as e:
                    raise ConfigError(f"{where}: expected a JSON object, got {value!r} ({e})") from None
            if not isinstance(value, dict):
                raise ValueError
            # ${VAR} in a value is expanded, so credentials can stay in the environment: {"secret": "${S3_SECRET}"}
            return {str(k): os.path.expandvars(v) if isinstance(v, str) else v for k, v in value.items()}
        if kind is list:
            if isinstance(value, str):
                value = split_list(value)
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


def split_list(text: str) -> list[str]:
    """A command-line list: ``[a,b]`` or ``a,b``, split on commas outside braces, brackets and quotes, so brace
    patterns stay whole (``data.train=[s3://b/train-{000000..000003}.tar,s3://b/x-{a,b}.tar]``); an item in
    quotes keeps its commas and loses the quotes. ``[]`` is the empty list."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    items, current, depth, quote = [], [], 0, None
    for char in text:
        if quote:
            if char == quote:
                quote = None
            else:
                current.append(char)
            continue
        if char in "\"'":
            quote = char
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
        if char == "," and depth <= 0 and not quote:
            items.append("".join(current).strip())
            current = []
        elif char not in "\"'":
            current.append(char)
    if quote or depth > 0:
        raise ValueError(f"unbalanced {'quote' if quote else 'braces'} in {text!r}")
    last = "".join(current).strip()
    if last or items:
        items.append(last)
    return items


def _choice(value: Any, choices: tuple, where: str) -> Any:
    """One of a ``Literal``'s values; a command-line string is compared as text (``deepspeed.zero_stage=3``)."""
    for choice in choices:
        if value == choice and type(value) is type(choice) or isinstance(value, str) and value == str(choice):
            return choice
    raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")


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
            raise ConfigError(
                f"{path}: expected a mapping of sections (model:, data:, optim:, deepspeed:, train:), "
                f"got a {type(data).__name__}"
            )
        _apply(cfg, data, f"{path}: ")
    _apply(cfg, parse_overrides(overrides or []), "override ")
    check_config(cfg)
    return cfg


# (key, smallest value that works). None stays allowed where the field is optional.
_AT_LEAST = [
    ("model.context_length", 1),
    ("model.image_size", 1),
    ("data.batch_size", 1),
    ("data.valid_batch_size", 1),
    ("data.workers", 0),
    ("data.epoch_samples", 1),
    ("data.shuffle_buffer", 0),
    ("optim.max_steps", 1),
    ("optim.max_epochs", 1),
    ("optim.warmup", 0),
    ("train.save_every", 0),
    ("train.keep_last", 1),
    ("train.log_every", 1),
    ("train.valid_every", 0),
    ("train.save_every_epochs", 0),
    ("train.valid_every_epochs", 0),
    ("train.freeze_vision_except_last", 0),
    ("train.freeze_text_except_last", 0),
]


def check_config(cfg: RunConfig) -> None:
    """Values that cannot work together or at all (types and ``Literal`` modes are checked as they are read)."""
    for key, least in _AT_LEAST:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value is not None and value < least:
            # e.g. keep_last=0 pruned every checkpoint right after writing it; max_steps=0 read as 'unset'
            raise ConfigError(f"{key}: must be {'at least 1' if least == 1 else '0 or more'}, got {value}")
    if len(cfg.optim.betas) != 2 or not all(0 <= b < 1 for b in cfg.optim.betas):
        raise ConfigError(f"optim.betas: expected two numbers in [0, 1), got {cfg.optim.betas}")
    check_model(cfg.model)
    if cfg.deepspeed.config:
        read_deepspeed_json(cfg.deepspeed.config)
    # A RunConfig built in code bypasses the loader's Literal checks: the modes are checked again here.
    _choice(cfg.deepspeed.precision, typing.get_args(Precision), "deepspeed.precision")
    _choice(cfg.deepspeed.zero_stage, typing.get_args(ZeroStage), "deepspeed.zero_stage")
    if cfg.optim.max_steps is None and cfg.optim.max_epochs is None:
        raise ConfigError("optim: set max_steps or max_epochs")
    if cfg.train.freeze_vision and cfg.train.freeze_text:
        raise ConfigError("train: freezing both towers leaves only logit_scale to train")
    check_training_knobs(cfg)


def check_training_knobs(cfg: RunConfig) -> None:
    """FLIP, partial locking and the learning-rate knobs (issue 16)."""
    if not 0.0 <= cfg.model.mask_ratio < 1.0:
        raise ConfigError(f"model.mask_ratio: must be in [0, 1), got {cfg.model.mask_ratio}")
    if not cfg.optim.lr > 0:
        raise ConfigError(f"optim.lr: must be more than 0, got {cfg.optim.lr}")
    for key in ("lr_vision", "lr_text"):
        value = getattr(cfg.optim, key)
        if value is not None and not value > 0:
            raise ConfigError(f"optim.{key}: must be more than 0 (lock the tower with train.freeze_* instead)")
    if not 0.0 < cfg.optim.layer_decay <= 1.0:
        raise ConfigError(f"optim.layer_decay: must be in (0, 1] (1 turns it off), got {cfg.optim.layer_decay}")
    config = check_model(cfg.model)
    for tower, layers in (("vision", getattr(config.vision, "layers", None)), ("text", config.text.layers)):
        last = getattr(cfg.train, f"freeze_{tower}_except_last")
        if last is None:
            continue
        if getattr(cfg.train, f"freeze_{tower}"):
            raise ConfigError(f"train.freeze_{tower}_except_last: set it or train.freeze_{tower}, not both")
        if not isinstance(layers, int):
            raise ConfigError(f"train.freeze_{tower}_except_last: {cfg.model.name}'s {tower} tower has no blocks")
        if last > layers:
            raise ConfigError(
                f"train.freeze_{tower}_except_last: {last} is more than the {layers} blocks of {cfg.model.name}'s "
                f"{tower} tower"
            )
    if cfg.optim.layer_decay != 1.0 and not isinstance(getattr(config.vision, "layers", None), int):
        raise ConfigError(f"optim.layer_decay: {cfg.model.name}'s image tower has no numbered blocks to decay over")
    if cfg.model.mask_ratio and not hasattr(config.vision, "patch_size"):
        raise ConfigError(f"model.mask_ratio: {cfg.model.name}'s image tower has no patch tokens to drop")


def check_model(model: ModelCfg):
    """The model the settings name, or ConfigError: a known name, and sizes the towers can take."""
    from ..model.configs import model_config  # plain dataclasses: no torch import

    try:
        config = model_config(model.name, **({"image_size": model.image_size} if model.image_size else {}))
    except ValueError as e:
        raise ConfigError(f"model.name: {e}") from None
    vision = config.vision
    stride = getattr(vision, "patch_size", 32)  # a ResNet tower downsamples 32×
    if vision.image_size % stride:
        raise ConfigError(
            f"model.image_size: {vision.image_size} is not a multiple of the "
            f"{'patch size' if hasattr(vision, 'patch_size') else 'ResNet stride'} {stride} of {model.name}"
        )
    if model.context_length > config.text.max_position_embeddings:
        raise ConfigError(
            f"model.context_length: {model.context_length} is more than the "
            f"{config.text.max_position_embeddings} positions of {model.name}'s text tower"
        )
    return config


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
