"""Every checkpoint a user can point at: the model weight files of ``model.weights`` (native, official, hf), a
DeepSpeed ZeRO checkpoint dir, and a training run dir (the trainer's ``train.output_dir``), all read into
``(native fp32 state dict, CLIPConfig, format)``. DeepSpeed is imported here, and only when a DeepSpeed dir is read.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from .model.configs import CLIPConfig
from .model.weights import FORMATS, WeightsError, infer_config, load_native_into, read_weights, write_checkpoint
from .model.weights import detect_format as detect_model_format

__all__ = ["FORMATS", "WeightsError", "convert", "detect_format", "load_model", "read_checkpoint", "resolve"]

RUN_EXPORT = "model.safetensors"  # what the trainer writes into its output dir when a run ends
RUN_CHECKPOINTS = "checkpoints"
SHARD_INDEX = "model.safetensors.index.json"  # DeepSpeed's zero_to_fp32 --safe_serialization, when it shards


def resolve(path: str | Path) -> tuple[Path, str]:
    """The file or dir to read and its format: a run dir stands for its export, else its latest checkpoint."""
    path = Path(path)
    if path.is_dir() and _deepspeed_tag(path) is not None:
        return path, "deepspeed"
    if path.name.endswith(SHARD_INDEX) and path.is_file():
        return path, "state-dict"
    if not path.is_dir() or (path / "config.json").exists():
        return path, detect_model_format(path)
    if (path / SHARD_INDEX).is_file() and not (path / RUN_EXPORT).is_file():
        return path / SHARD_INDEX, "state-dict"
    if (path / RUN_EXPORT).is_file():
        return path / RUN_EXPORT, detect_model_format(path / RUN_EXPORT)
    if _deepspeed_tag(path / RUN_CHECKPOINTS) is not None:
        return path / RUN_CHECKPOINTS, "deepspeed"
    raise WeightsError(
        f"{path}: neither a Hugging Face ChineseCLIPModel dir (config.json), a DeepSpeed checkpoint dir "
        f"(a 'latest' file or *model_states.pt) nor a training run dir ({RUN_EXPORT}, or "
        f"{RUN_CHECKPOINTS}/ with a 'latest' file)"
    )


def detect_format(path: str | Path) -> str:
    return resolve(path)[1]


def read_checkpoint(path: str | Path, name: str | None = None) -> tuple[dict[str, torch.Tensor], CLIPConfig, str]:
    """Any supported checkpoint → (native fp32 state dict, config, format of what was read)."""
    path, fmt = resolve(path)
    if fmt == "deepspeed":
        sd, config = _read_deepspeed(path, name)
    elif fmt == "state-dict" or (fmt == "native" and not _has_native_metadata(path)):
        sd, config = _read_state_dict(path, name)
        fmt = "state-dict"
    else:
        sd, config, fmt = read_weights(path, name)
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, config, fmt


def _has_native_metadata(path: Path) -> bool:
    from safetensors import safe_open

    from .model.weights import NATIVE_FORMAT

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == NATIVE_FORMAT
    except Exception:  # noqa: BLE001 - unreadable: read_weights names the file and the reason
        return True


def _read_state_dict(path: Path, name: str | None) -> tuple[dict[str, torch.Tensor], CLIPConfig]:
    """A plain state-dict safetensors file (or an index of shards) without our metadata: DeepSpeed's ``zero_to_fp32
    --safe_serialization`` output. Sizes from ``name``, else a run's ``config.yaml`` next to it or one or two folders
    up, else the tensor shapes."""
    import json

    from .model.weights import _read_safetensors

    if path.name.endswith(SHARD_INDEX):
        try:
            files = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as e:
            raise WeightsError(f"{path}: not a safetensors shard index ({e!r})") from None
        sd = {}
        for file in files:
            sd.update(_read_safetensors(path.parent / file)[0])
    else:
        sd = _read_safetensors(path)[0]
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if "visual.class_embedding" in sd:  # the official layout saved as plain safetensors
        from .model.formats import to_native

        sd = to_native(sd, "official")
    return sd, _config_near(path, sd, name)


def _config_near(path: Path, sd: dict[str, torch.Tensor], name: str | None) -> CLIPConfig:
    import yaml

    from .model.configs import model_config

    overrides: dict = {}
    for folder in () if name else (path.parent, path.parent.parent, path.parent.parent.parent):
        try:
            model = (yaml.safe_load((folder / "config.yaml").read_text()) or {}).get("model")
        except (OSError, yaml.YAMLError, AttributeError):
            continue
        if isinstance(model, dict) and isinstance(model.get("name"), str):
            name, overrides = model["name"], ({"image_size": model["image_size"]} if model.get("image_size") else {})
            break
    if name is None:
        return infer_config(sd)
    try:
        return model_config(name, **overrides)
    except ValueError as e:
        raise WeightsError(f"{path}: {e}") from None


def _deepspeed_tag(path: Path) -> tuple[Path, str] | None:
    """(checkpoints root, tag) for a trainer checkpoint dir (root with a 'latest' pointer) or one tag dir."""
    if (path / "latest").is_file():
        return path, (path / "latest").read_text().strip()
    if _model_states_file(path) is not None:
        return path.parent, path.name
    return None


def _model_states_file(tag_dir: Path) -> Path | None:
    """ZeRO 0-2 write mp_rank_00_model_states.pt; ZeRO-3 one zero_pp_rank_R_mp_rank_00_model_states.pt per rank."""
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):
        if (tag_dir / name).is_file():
            return tag_dir / name
    return None


def _read_deepspeed(path: Path, name: str | None) -> tuple[dict[str, torch.Tensor], CLIPConfig]:
    """fp32 master weights assembled from every rank's ZeRO partition (DeepSpeed's zero_to_fp32), read without
    executing pickle. Imported here so that reading any other format never pays for (or needs) DeepSpeed."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from .safe_load import deepspeed_safe_load

    root, tag = _deepspeed_tag(path)
    states = _model_states_file(root / tag)
    if states is None:
        raise WeightsError(f"{root / tag}: no DeepSpeed model states file (incomplete checkpoint?)")
    with deepspeed_safe_load():
        try:
            meta = torch.load(states, map_location="cpu")
        except Exception as e:  # noqa: BLE001
            raise WeightsError(f"{states}: not a loadable DeepSpeed checkpoint: {str(e).splitlines()[0]}") from None
        if list((root / tag).glob("*optim_states.pt")):
            sd = get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag)
        else:  # ZeRO-0: the module state is the master copy
            sd = meta["module"]
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if "model_config" in meta:
        config = CLIPConfig.from_dict(meta["model_config"])
        return sd, (replace(config, name=name) if name else config)
    return sd, infer_config(sd, name)


def load_model(path: str | Path, name: str | None = None, grad_checkpointing: bool = False):
    """Build the model a checkpoint describes and load it. ``name`` overrides the inferred registry name."""
    from .model.clip import build_model

    sd, config, _ = read_checkpoint(path, name)
    model = build_model(config, grad_checkpointing=grad_checkpointing)
    load_native_into(model, sd)
    return model


def convert(
    src: str | Path | None,
    dst: str | Path,
    to: str,
    name: str | None = None,
    vocab_file: str | Path | None = None,
    vision: str | Path | None = None,
    text: str | Path | None = None,
) -> str:
    """Read ``src`` in whatever format it is, check it builds the model it describes, write ``dst`` as ``to``.
    ``vision`` / ``text``: separately pretrained towers (``model.towers``) that replace ``src``'s; without ``src``
    the rest of the model (``name``'s sizes) is freshly initialised."""
    from .model.clip import build_model
    from .model.configs import model_config
    from .model.tokenizer import Tokenizer, default_vocab_file
    from .model.towers import fresh_state_dict, merge_towers, text_vocab_file

    if src is not None:
        sd, config, fmt = read_checkpoint(src, name)
    elif not (vision or text) or name is None:
        raise WeightsError("give a SRC checkpoint, or --vision/--text towers with --model NAME for the sizes")
    else:
        try:
            config = model_config(name)
        except ValueError as e:
            raise WeightsError(f"--model: {e}") from None
        sd, fmt = fresh_state_dict(config), "fresh init"
    towers: list[str] = []
    if vision or text:
        sd, towers = merge_towers(sd, config, vision, text)
    with torch.device("meta"):  # validate keys and shapes without allocating the model
        load_native_into(build_model(config), sd, assign=True)
    if to == "hf" and vocab_file is None:
        vocab_file = text_vocab_file(text) or default_vocab_file()
    write_checkpoint(sd, config, dst, to, vocab_file=vocab_file)
    if to == "hf" and Path(vocab_file).suffix == ".json":  # a transformers-5 tokenizer.json: its vocab as vocab.txt
        Tokenizer(vocab_file).save_vocab(Path(dst) / "vocab.txt")
    if to == "official":  # sizes cn_clip does not ship: the model_configs/*.json its create_model reads
        from .model.foreign.cn_clip_configs import write_model_configs

        try:
            if written := write_model_configs(config, dst):
                files = ", ".join(map(str, written[1]))
                towers.append(f"cn_clip model_configs: {files} (create_model('{written[0]}'))")
        except WeightsError as e:  # the .pt is written; only cn_clip's create_model cannot describe these sizes
            towers.append(f"no cn_clip model_configs: {e}")
    n = sum(v.numel() for v in sd.values())
    line = f"{src or 'towers'} ({fmt}) -> {dst} ({to}): {config.name}, {len(sd)} tensors, {n / 1e6:.2f}M values"
    return "\n".join([line, *towers])
