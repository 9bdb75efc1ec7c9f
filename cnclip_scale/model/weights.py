"""Model weight files: our native safetensors, official Chinese-CLIP ``.pt`` and Hugging Face ``ChineseCLIPModel``
dirs, each read into ``(native state dict, CLIPConfig)`` and written back. Key layouts live in ``formats.py``; engine
checkpoints (DeepSpeed) and training run dirs in ``cnclip_scale.checkpoints``. Nothing here unpickles code: ``.pt``
and ``.bin`` files load with ``torch.load(weights_only=True)``; everything we write is safetensors or a tensor dict.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .configs import (
    TEXT_CONFIGS,
    VISION_CONFIGS,
    CLIPConfig,
    ResNetConfig,
    TextConfig,
    VisionConfig,
    match_registered_name,
)
from .formats import WeightsError, from_native, to_native
from .transforms import MEAN, STD

NATIVE_FORMAT = "cnclip_scale.native/1"
FORMATS = ("official", "hf", "native")

__all__ = [
    "FORMATS",
    "WeightsError",
    "detect_format",
    "infer_config",
    "load_native_into",
    "read_weights",
    "write_checkpoint",
    "write_native",
]


def hf_config_dict(config: CLIPConfig) -> dict:
    """``config.json`` of a transformers ``ChineseCLIPModel`` with our sizes."""
    v, t = config.vision, config.text
    if isinstance(v, ResNetConfig):
        raise WeightsError(
            f"{config.name}: Hugging Face's ChineseCLIPModel has no ResNet image tower; "
            "RN50 checkpoints convert to native and official only"
        )
    return {
        "architectures": ["ChineseCLIPModel"],
        "model_type": "chinese_clip",
        "projection_dim": config.embed_dim,
        "logit_scale_init_value": 2.6592,
        "text_config": {
            "model_type": "chinese_clip_text_model",
            "vocab_size": t.vocab_size,
            "hidden_size": t.hidden_size,
            "num_hidden_layers": t.layers,
            "num_attention_heads": t.heads,
            "intermediate_size": t.intermediate_size,
            "hidden_act": "gelu",
            "hidden_dropout_prob": t.hidden_dropout,
            "attention_probs_dropout_prob": t.attention_dropout,
            "max_position_embeddings": t.max_position_embeddings,
            "type_vocab_size": t.type_vocab_size,
            "layer_norm_eps": t.layer_norm_eps,
            "pad_token_id": t.pad_token_id,
        },
        "vision_config": {
            "model_type": "chinese_clip_vision_model",
            "hidden_size": v.width,
            "intermediate_size": int(v.width * v.mlp_ratio),
            "projection_dim": v.embed_dim,
            "num_hidden_layers": v.layers,
            "num_attention_heads": v.heads,
            "num_channels": 3,
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": v.layer_norm_eps,
            "attention_dropout": 0.0,
        },
    }


def config_from_hf(d: dict, name: str | None = None) -> CLIPConfig:
    v, t = d.get("vision_config", {}), d.get("text_config", {})
    if v.get("hidden_act", "quick_gelu") != "quick_gelu" or t.get("hidden_act", "gelu") != "gelu":
        raise WeightsError(
            "HF config: only quick_gelu (vision) and gelu (text) activations match the Chinese-CLIP towers"
        )
    width = v.get("hidden_size", 768)
    vision = VisionConfig(
        image_size=v.get("image_size", 224),
        patch_size=v.get("patch_size", 32),
        width=width,
        layers=v.get("num_hidden_layers", 12),
        head_width=width // v.get("num_attention_heads", 12),
        mlp_ratio=v.get("intermediate_size", 3072) / width,
        embed_dim=d.get("projection_dim", 512),
        layer_norm_eps=v.get("layer_norm_eps", 1e-5),
    )
    text = TextConfig(
        vocab_size=t.get("vocab_size", 30522),
        hidden_size=t.get("hidden_size", 768),
        layers=t.get("num_hidden_layers", 12),
        heads=t.get("num_attention_heads", 12),
        intermediate_size=t.get("intermediate_size", 3072),
        max_position_embeddings=t.get("max_position_embeddings", 512),
        type_vocab_size=t.get("type_vocab_size", 2),
        hidden_dropout=t.get("hidden_dropout_prob", 0.1),
        attention_dropout=t.get("attention_probs_dropout_prob", 0.1),
        layer_norm_eps=t.get("layer_norm_eps", 1e-12),
        pad_token_id=t.get("pad_token_id", 0),
    )
    return _named(CLIPConfig(name="", vision=vision, text=text), name)


# ---------------------------------------------------------------------------------------------------- shapes → config
def infer_config(sd: dict[str, torch.Tensor], name: str | None = None) -> CLIPConfig:
    """Read the sizes off a native state dict. Head counts are not in the shapes: they come from the registry entry
    with the same sizes, else the family's 64-wide heads."""
    try:
        vision = _infer_resnet(sd) if "visual.attnpool.c_proj.weight" in sd else _infer_vit(sd)
        vocab, hidden = sd["bert.embeddings.word_embeddings.weight"].shape
        text = TextConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            layers=_count(sd, r"bert\.encoder\.layer\.(\d+)\."),
            intermediate_size=sd["bert.encoder.layer.0.intermediate.dense.weight"].shape[0],
            max_position_embeddings=sd["bert.embeddings.position_embeddings.weight"].shape[0],
            type_vocab_size=sd["bert.embeddings.token_type_embeddings.weight"].shape[0],
            heads=max(1, hidden // 64),
        )
    except KeyError as e:
        raise WeightsError(f"cannot infer the model sizes: the checkpoint has no {e.args[0]!r}") from None
    vision = next(
        (
            replace(vision, head_width=c.head_width)
            for c in VISION_CONFIGS.values()
            if replace(c, head_width=vision.head_width) == vision
        ),
        vision,
    )
    text = next(
        (replace(text, heads=c.heads) for c in TEXT_CONFIGS.values() if replace(c, heads=text.heads) == text), text
    )
    return _named(CLIPConfig(name="", vision=vision, text=text), name)


def _infer_vit(sd: dict[str, torch.Tensor]) -> VisionConfig:
    width = sd["visual.cls_token"].shape[-1]
    patch = sd["visual.patch_embed.proj.weight"].shape[-1]
    grid = math.isqrt(sd["visual.pos_embed"].shape[1] - 1)
    return VisionConfig(
        image_size=grid * patch,
        patch_size=patch,
        width=width,
        layers=_count(sd, r"visual\.blocks\.(\d+)\."),
        mlp_ratio=sd["visual.blocks.0.mlp.fc1.weight"].shape[0] / width,
        embed_dim=sd["visual.head.weight"].shape[0],
    )


def _infer_resnet(sd: dict[str, torch.Tensor]) -> ResNetConfig:
    """A ModifiedResNet's sizes; its heads are not in the shapes (the registry's, else 64 wide)."""
    grid = math.isqrt(sd["visual.attnpool.positional_embedding"].shape[0] - 1)
    return ResNetConfig(
        image_size=grid * 32,
        layers=tuple(_count(sd, rf"visual\.layer{i}\.(\d+)\.") for i in range(1, 5)),
        width=sd["visual.conv3.weight"].shape[0],
        embed_dim=sd["visual.attnpool.c_proj.weight"].shape[0],
    )


def _count(sd: dict, pattern: str) -> int:
    return len({m[1] for k in sd if (m := re.match(pattern, k))})


def _named(config: CLIPConfig, name: str | None) -> CLIPConfig:
    return replace(config, name=name or match_registered_name(config) or "custom")


# ---------------------------------------------------------------------------------------------------- files
def detect_format(path: str | Path) -> str:
    """``native``, ``official`` or ``hf``, from what the file holds: names lie (``convert ... model.pt --to native``
    writes safetensors into a ``.pt``)."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise WeightsError(f"{path}: not a Hugging Face ChineseCLIPModel dir (no config.json)")
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
        if model_type != "chinese_clip":
            raise WeightsError(f"{path}/config.json: model_type {model_type!r} is not 'chinese_clip'")
        return "hf"
    if not path.exists():
        raise WeightsError(f"{path}: no such file or directory")
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch.save's zip, or its legacy pickle stream
        return "official"
    if head[8:9] == b"{":  # safetensors: an 8-byte header length, then the JSON header
        return "native"
    # Damaged or empty: read it as what its name claims, so the error says what the file was meant to be.
    return "native" if path.suffix == ".safetensors" else "official"


def read_weights(path: str | Path, name: str | None = None) -> tuple[dict[str, torch.Tensor], CLIPConfig, str]:
    """A model weight file or HF dir → (native state dict as stored, config, format)."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "hf":
        config = config_from_hf(json.loads((path / "config.json").read_text()), name)
        return to_native(_read_hf_weights(path), "hf"), config, fmt
    if fmt == "native":
        sd, meta = _read_safetensors(path)
        if meta.get("format") != NATIVE_FORMAT:
            raise WeightsError(
                f"{path}: safetensors file without cnclip_scale metadata (format={meta.get('format')!r})"
            )
        try:
            config = CLIPConfig.from_dict(json.loads(meta["config"]))
        except (KeyError, TypeError, ValueError) as e:
            raise WeightsError(f"{path}: its cnclip_scale metadata holds no usable model config ({e!r})") from None
        return sd, config, fmt
    obj = _torch_load(path)
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a dict checkpoint, found {type(obj).__name__}")
    sd = obj.get("state_dict", obj)
    if not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path}: 'state_dict' holds non-tensor values; not a Chinese-CLIP checkpoint")
    sd = to_native(sd, "official_rn" if any(k.endswith("visual.attnpool.c_proj.weight") for k in sd) else "official")
    return sd, infer_config(sd, name), fmt


def _torch_load(path: Path):
    try:  # a file object: given a path, torch.load picks its reader by the extension
        with open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)  # never executes pickled code
    except Exception as e:  # noqa: BLE001 - surface torch's reason in one line
        raise WeightsError(
            f"{path}: not loadable as a weights-only torch checkpoint: {str(e).splitlines()[0]}"
        ) from None


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Every tensor and the metadata. A truncated, empty or foreign file is one WeightsError naming it: safetensors
    itself raises its own error type (or OSError) whose text does not say which file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(
            f"{path}: not a readable safetensors file (truncated, empty or another format: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from None


def _read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    if (path / "model.safetensors").exists():
        return _read_safetensors(path / "model.safetensors")[0]
    if (path / "pytorch_model.bin").exists():
        return _torch_load(path / "pytorch_model.bin")
    raise WeightsError(f"{path}: neither model.safetensors nor pytorch_model.bin")


def write_native(sd: dict[str, torch.Tensor], config: CLIPConfig, path: str | Path) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    save_file(tensors, str(path), metadata={"format": NATIVE_FORMAT, "config": json.dumps(config.to_dict())})


def write_official(
    sd: dict[str, torch.Tensor], config: CLIPConfig, path: str | Path, epoch: int = 0, step: int = 0
) -> None:
    """Chinese-CLIP's checkpoint dict; keys carry ``module.`` as their DDP trainer saves them."""
    layout = "official_rn" if isinstance(config.vision, ResNetConfig) else "official"
    state = {"module." + k: v.detach().cpu() for k, v in from_native(sd, layout).items()}
    torch.save({"epoch": epoch, "step": step, "name": config.name, "state_dict": state}, path)


def write_hf(
    sd: dict[str, torch.Tensor], config: CLIPConfig, path: str | Path, vocab_file: str | Path | None = None
) -> None:
    """A ``save_pretrained``-style directory that ``transformers.ChineseCLIPModel.from_pretrained`` loads."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(hf_config_dict(config), indent=2))
    tensors = {k: v.detach().cpu() for k, v in from_native(sd, "hf").items()}
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    r = config.vision.image_size
    (path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "ChineseCLIPImageProcessor",
                "do_resize": True,
                "size": {"height": r, "width": r},
                "resample": 3,
                "do_center_crop": False,
                "crop_size": {"height": r, "width": r},
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                "image_mean": list(MEAN),
                "image_std": list(STD),
                "do_convert_rgb": True,
            },
            indent=2,
        )
    )
    if vocab_file is not None:
        (path / "vocab.txt").write_bytes(Path(vocab_file).read_bytes())
        (path / "tokenizer_config.json").write_text(
            json.dumps(
                {
                    "tokenizer_class": "BertTokenizer",
                    "do_lower_case": True,
                    "model_max_length": config.text.max_position_embeddings,
                },
                indent=2,
            )
        )


def write_checkpoint(
    sd: dict[str, torch.Tensor], config: CLIPConfig, path: str | Path, fmt: str, vocab_file: str | Path | None = None
) -> None:
    if fmt == "native":
        write_native(sd, config, path)
    elif fmt == "official":
        write_official(sd, config, path)
    elif fmt == "hf":
        write_hf(sd, config, path, vocab_file=vocab_file)
    else:
        raise WeightsError(f"unknown format {fmt!r}; choose one of {FORMATS}")


# ---------------------------------------------------------------------------------------------------- into a model
def load_native_into(model: torch.nn.Module, sd: dict[str, torch.Tensor], assign: bool = False) -> None:
    """Strict load with one message naming every missing, unexpected and mis-shaped key."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    mismatched = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(sd))
        if sd[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
                parts.append(f"{label}: {shown}")
        raise WeightsError("checkpoint does not fit the model — " + "; ".join(parts))
    model.load_state_dict(sd, strict=True, assign=assign)
