"""Start a model from separately pretrained towers, as Chinese-CLIP's stage 1 does (their ``--clip-weight-path``,
``--bert-weight-path``): the image tower from an OpenAI CLIP / open_clip / timm ViT file, the text tower from a Hugging
Face BERT (Chinese RoBERTa-wwm-ext) directory. Either also comes from any full checkpoint ``cnclip_scale.checkpoints``
reads (official, HF ChineseCLIPModel, native, DeepSpeed, run dir).

Image tower sources (format detected from the content):

* OpenAI CLIP ``.pt``: a TorchScript archive (read by ``foreign.torchscript`` without executing code) or a state dict;
* open_clip ``.pt`` / ``.safetensors`` (``{"state_dict": ...}`` or plain; OpenAI-layout keys ``visual.conv1``,
  ``visual.class_embedding``, ``visual.transformer.resblocks.N``, ``visual.proj``; ``module.`` dropped);
* a Hugging Face ``CLIPModel``/``CLIPVisionModel`` state dict (``vision_model.*``, ``visual_projection``);
* a timm ``VisionTransformer`` ``.safetensors``/``.pth`` in the OpenAI-CLIP arrangement (``norm_pre``, bias-free
  patch conv, quick_gelu: timm's ``vit_*_clip_*.openai`` models). Its ``head`` becomes the projection only when it
  is one (``[embed_dim, width]``, zero bias, as timm stores CLIP's ``proj``); an ImageNet classifier head is dropped
  and the projection keeps the model's own initialisation.

Text tower sources: a Hugging Face BERT directory (``config.json`` with ``model_type: bert``, ``model.safetensors`` or
``pytorch_model.bin``; keys with or without ``bert.``; ``cls.*`` and the pooler dropped; old ``gamma``/``beta``
names read), whose ``vocab.txt`` (or ``tokenizer.json``'s vocab) becomes the run's tokenizer vocab.

Weights only ever come through ``torch.load(weights_only=True)``, safetensors or the restricted TorchScript reader.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .formats import WeightsError, to_native

Tensors = dict[str, torch.Tensor]

__all__ = ["read_text_tower", "read_vision_tower", "text_vocab_file", "tower_fit_errors", "apply_towers"]

VISION_PREFIXES = ("visual.",)
TEXT_PREFIXES = ("bert.", "text_projection")


# ---------------------------------------------------------------------------------------------------- raw files
def _read_file(path: Path) -> Tensors:
    from ..model.weights import _read_safetensors, _torch_load
    from .foreign.torchscript import is_torchscript, read_torchscript

    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04" and is_torchscript(path):
        try:
            return read_torchscript(path)
        except Exception as e:  # noqa: BLE001 - one line naming the file
            raise WeightsError(f"{path}: unreadable TorchScript archive: {str(e).splitlines()[0]}") from None
    if head[8:9] == b"{" and head[:4] != b"PK\x03\x04":
        return _read_safetensors(path)[0]
    obj = _torch_load(path)
    for wrapper in ("state_dict", "model", "module"):  # open_clip / trainer checkpoints wrap the weights
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _strip(sd: Tensors, prefix: str) -> Tensors:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def _part(sd: Tensors, prefixes: tuple[str, ...]) -> Tensors:
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items() if k.startswith(prefixes)}


def _from_checkpoint(path: Path, prefixes: tuple[str, ...]) -> tuple[Tensors, str]:
    from ..checkpoints import read_checkpoint

    sd, _, fmt = read_checkpoint(path)
    return _part(sd, prefixes), f"{fmt} checkpoint"


# ---------------------------------------------------------------------------------------------------- image tower
def _timm_to_native(sd: Tensors, path: Path) -> tuple[Tensors, str]:
    if "norm_pre.weight" not in sd:
        raise WeightsError(
            f"{path}: a timm ViT without norm_pre (pre_norm=False) is not in the OpenAI-CLIP arrangement of our "
            "image tower (ln_pre, bias-free patch conv, quick_gelu); use a timm vit_*_clip_* model"
        )
    head_w, head_b = sd.pop("head.weight", None), sd.pop("head.bias", None)
    out = {"visual." + k: v for k, v in sd.items()}
    note = "timm ViT"
    if head_w is not None and (head_b is None or not head_b.any()):
        out["visual.head.weight"] = head_w  # timm stores CLIP's proj as a zero-bias head
        note += ", head as projection"
    elif head_w is not None:
        note += ", classifier head dropped"
    return out, note


def read_vision_tower(path: str | Path) -> tuple[Tensors, str]:
    """An image tower file → (native ``visual.*`` tensors, a description of what was read)."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: no such file or directory")
    if path.is_dir():
        return _from_checkpoint(path, VISION_PREFIXES)
    sd = _strip(_strip(_read_file(path), "module."), "_orig_mod.")
    if "visual.cls_token" in sd:  # ours, or our official/trainer layouts already converted
        return _part(sd, VISION_PREFIXES), "native keys"
    if "visual.class_embedding" in sd:  # OpenAI CLIP / open_clip / Chinese-CLIP official: one layout
        if "visual.conv1.weight" not in sd:
            raise WeightsError(f"{path}: an OpenAI-layout checkpoint without visual.conv1 (a ResNet or timm trunk?)")
        return _part(to_native(sd, "official"), VISION_PREFIXES), "OpenAI/open_clip layout"
    if "vision_model.embeddings.class_embedding" in sd:  # transformers CLIPModel / ChineseCLIPModel
        return _part(to_native(sd, "hf"), VISION_PREFIXES), "Hugging Face CLIP layout"
    if "visual.trunk.cls_token" in sd:  # open_clip's timm-trunk models
        trunk = {k.removeprefix("visual.trunk."): v for k, v in sd.items() if k.startswith("visual.trunk.")}
        if "visual.head.proj.weight" in sd:
            trunk["head.weight"] = sd["visual.head.proj.weight"]
        return _timm_to_native(trunk, path)
    if "cls_token" in sd and "patch_embed.proj.weight" in sd:
        return _timm_to_native(dict(sd), path)
    shown = ", ".join(sorted(sd)[:5])
    raise WeightsError(
        f"{path}: not an image tower we read (OpenAI CLIP/open_clip ViT, timm ViT, HF CLIP, a cnclip checkpoint); "
        f"its keys begin {shown}"
    )


# ---------------------------------------------------------------------------------------------------- text tower
_BERT_SKIP = re.compile(r"(cls\..*|pooler\..*|.*\.position_ids)")


def read_text_tower(path: str | Path) -> tuple[Tensors, str]:
    """A text tower source → (native ``bert.*`` [and ``text_projection``] tensors, a description)."""
    from ..model.weights import _read_hf_weights

    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: no such file or directory")
    config_file = path / "config.json"
    if not path.is_dir() or not config_file.exists():
        return _from_checkpoint(path, TEXT_PREFIXES)
    config = json.loads(config_file.read_text())
    model_type = config.get("model_type")
    if model_type == "chinese_clip":
        return _from_checkpoint(path, TEXT_PREFIXES)
    if model_type != "bert":
        raise WeightsError(
            f"{config_file}: model_type {model_type!r}; the text tower is BERT-architecture (Chinese RoBERTa-wwm-ext "
            "ships as model_type 'bert'); a fairseq-style 'roberta' has other position ids and does not carry over"
        )
    if config.get("hidden_act", "gelu") != "gelu":
        raise WeightsError(f"{config_file}: hidden_act {config['hidden_act']!r}; the text tower uses gelu")
    sd = _strip(_read_hf_weights(path), "bert.")
    out: Tensors = {}
    for key, value in sd.items():
        if key.startswith("bert."):  # BertForPreTraining with extra heads beside bert.*
            key = key.removeprefix("bert.")
        if _BERT_SKIP.fullmatch(key):
            continue
        key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key))
        out["bert." + key] = value.float() if value.is_floating_point() else value
    return out, "Hugging Face BERT"


def text_vocab_file(path: str | Path | None) -> Path | None:
    """The vocab a text tower source ships: ``vocab.txt``, else ``tokenizer.json`` (transformers 5 dirs)."""
    if path is None or not Path(path).is_dir():
        return None
    for name in ("vocab.txt", "tokenizer.json"):
        if (Path(path) / name).is_file():
            return Path(path) / name
    return None


# ---------------------------------------------------------------------------------------------------- into a model
def tower_fit_errors(own: dict[str, torch.Tensor], sd: Tensors, prefixes: tuple[str, ...], optional=()) -> str | None:
    """One line naming the tensors of a tower that do not fit the model (``own``: its state dict or shapes)."""
    own_part = {k: v for k, v in own.items() if k.startswith(prefixes)}
    missing = sorted(set(own_part) - set(sd) - set(optional))
    unexpected = sorted(set(sd) - set(own_part))
    mismatched = [
        f"{k}: source {tuple(sd[k].shape)} vs model {tuple(own_part[k].shape)}"
        for k in sorted(set(own_part) & set(sd))
        if tuple(sd[k].shape) != tuple(own_part[k].shape)
    ]
    parts = []
    for label, items in (("shape mismatch", mismatched), ("missing", missing), ("unexpected", unexpected)):
        if items:
            shown = ", ".join(items[:6]) + (f", ... ({len(items)} in all)" if len(items) > 6 else "")
            parts.append(f"{label}: {shown}")
    return "; ".join(parts) or None


def check_towers(model: torch.nn.Module, vision: tuple | None, text: tuple | None) -> None:
    """Raise one WeightsError per tower whose tensors do not fit ``model`` (a meta-device model is enough)."""
    own = model.state_dict()
    for label, tower, prefixes in (("image", vision, VISION_PREFIXES), ("text", text, TEXT_PREFIXES)):
        if tower is None:
            continue
        sd, what, source = tower
        optional = ("visual.head.weight",) if label == "image" else ("text_projection",)
        if error := tower_fit_errors(own, sd, prefixes, optional):
            raise WeightsError(f"{label} tower {source} ({what}) does not fit {model.config.name} — {error}")


def apply_towers(model: torch.nn.Module, vision: tuple | None = None, text: tuple | None = None) -> list[str]:
    """Copy the towers ``(tensors, description, source)`` into ``model``; returns one line per tower loaded."""
    check_towers(model, vision, text)
    lines = []
    with torch.no_grad():
        own = model.state_dict()
        for label, tower in (("image", vision), ("text", text)):
            if tower is None:
                continue
            sd, what, source = tower
            for key, value in sd.items():
                own[key].copy_(value)
            lines.append(f"{label} tower from {source} ({what}, {len(sd)} tensors)")
    return lines


def read_towers(vision: str | Path | None, text: str | Path | None) -> tuple[tuple | None, tuple | None]:
    """``(tensors, description, source)`` for each tower given."""
    v = (*read_vision_tower(vision), str(vision)) if vision else None
    t = (*read_text_tower(text), str(text)) if text else None
    return v, t


def merge_towers(sd: Tensors, config, vision: str | Path | None, text: str | Path | None) -> tuple[Tensors, list[str]]:
    """``sd`` (a native state dict of ``config``) with the given towers' tensors in place of its own."""
    from .clip import build_model

    v, t = read_towers(vision, text)
    with torch.device("meta"):
        check_towers(build_model(config), v, t)
    out = dict(sd)
    lines = []
    for label, tower in (("image", v), ("text", t)):
        if tower is not None:
            out.update(tower[0])
            lines.append(f"{label} tower from {tower[2]} ({tower[1]}, {len(tower[0])} tensors)")
    return out, lines


def fresh_state_dict(config, seed: int = 0) -> Tensors:
    """A randomly initialised model's weights (what the towers do not cover keeps these)."""
    from .clip import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(config).state_dict()
