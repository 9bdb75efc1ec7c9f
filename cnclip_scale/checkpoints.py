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


def resolve(path: str | Path) -> tuple[Path, str]:
    """The file or dir to read and its format: a run dir stands for its export, else its latest checkpoint."""
    path = Path(path)
    if path.is_dir() and _deepspeed_tag(path) is not None:
        return path, "deepspeed"
    if not path.is_dir() or (path / "config.json").exists():
        return path, detect_model_format(path)
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
    else:
        sd, config, fmt = read_weights(path, name)
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, config, fmt


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
    src: str | Path, dst: str | Path, to: str, name: str | None = None, vocab_file: str | Path | None = None
) -> str:
    """Read ``src`` in whatever format it is, check it builds the model it describes, write ``dst`` as ``to``."""
    from .model.clip import build_model
    from .model.tokenizer import default_vocab_file

    sd, config, fmt = read_checkpoint(src, name)
    with torch.device("meta"):  # validate keys and shapes without allocating the model
        load_native_into(build_model(config), sd, assign=True)
    if to == "hf" and vocab_file is None:
        vocab_file = default_vocab_file()
    write_checkpoint(sd, config, dst, to, vocab_file=vocab_file)
    n = sum(v.numel() for v in sd.values())
    return f"{src} ({fmt}) -> {dst} ({to}): {config.name}, {len(sd)} tensors, {n / 1e6:.2f}M values"
