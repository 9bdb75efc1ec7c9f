"""Every weight format in one place: official Chinese-CLIP ``.pt``, Hugging Face ``ChineseCLIPModel`` dirs, our native file.

The middle of the stack only sees our native state dict (the keys of :class:`~cnclip_scale.model.clip.CLIP`). Readers
turn a file into ``(native state dict, CLIPConfig)``; writers go the other way. Nothing here ever unpickles code:
``.pt``/``.bin`` files load with ``torch.load(weights_only=True)``, everything we write is safetensors or a plain
tensor dict.

Key map (native ← official / HF), per ViT block ``i``:
    visual.cls_token         ← visual.class_embedding            / vision_model.embeddings.class_embedding
    visual.pos_embed         ← visual.positional_embedding        / vision_model.embeddings.position_embedding.weight
    visual.patch_embed.proj  ← visual.conv1                       / vision_model.embeddings.patch_embedding
    visual.norm_pre          ← visual.ln_pre                      / vision_model.pre_layrnorm
    visual.blocks.i.norm1    ← ...resblocks.i.ln_1                / ...layers.i.layer_norm1
    visual.blocks.i.attn.qkv ← ...resblocks.i.attn.in_proj_*      / ...layers.i.self_attn.{q,k,v}_proj (concatenated)
    visual.blocks.i.attn.proj← ...resblocks.i.attn.out_proj       / ...layers.i.self_attn.out_proj
    visual.blocks.i.norm2    ← ...resblocks.i.ln_2                / ...layers.i.layer_norm2
    visual.blocks.i.mlp.fc1/2← ...resblocks.i.mlp.c_fc / c_proj   / ...layers.i.mlp.fc1 / fc2
    visual.norm              ← visual.ln_post                     / vision_model.post_layernorm
    visual.head.weight       ← visual.proj (transposed)           / visual_projection.weight
    bert.*                   ← bert.* (pooler dropped)            / text_model.*
    text_projection          ← text_projection                    / text_projection.weight (transposed)
    logit_scale [1]          ← logit_scale (0-dim)                / logit_scale (0-dim)
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

from ..errors import UserError
from .configs import TEXT_CONFIGS, VISION_CONFIGS, CLIPConfig, TextConfig, VisionConfig, match_registered_name
from .transforms import MEAN, STD

NATIVE_FORMAT = "cnclip_scale.native/1"
FORMATS = ("official", "hf", "native")  # what we write; we also read DeepSpeed checkpoint dirs ("deepspeed")

# (official name, native name) for one ViT block; the in_proj/qkv pair has the same layout (q, k, v stacked).
_BLOCK_OFFICIAL = [("ln_1", "norm1"), ("attn.in_proj_weight", "attn.qkv.weight"), ("attn.in_proj_bias", "attn.qkv.bias"),
                   ("attn.out_proj", "attn.proj"), ("ln_2", "norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")]
_BLOCK_HF = [("layer_norm1", "norm1"), ("self_attn.out_proj", "attn.proj"), ("layer_norm2", "norm2"),
             ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")]
_VISUAL_OFFICIAL = [("visual.conv1", "visual.patch_embed.proj"), ("visual.ln_pre", "visual.norm_pre"),
                    ("visual.ln_post", "visual.norm")]
_VISUAL_HF = [("vision_model.embeddings.patch_embedding", "visual.patch_embed.proj"),
              ("vision_model.pre_layrnorm", "visual.norm_pre"), ("vision_model.post_layernorm", "visual.norm")]
# Buffers and unused heads that some writers include; they carry no learned state we use.
_IGNORED = re.compile(r"(\.position_ids$|^bert\.pooler\.|^text_model\.pooler\.|^vision_model\.embeddings\.position_ids$)")


class WeightsError(UserError, ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message says exactly what is wrong."""


def _rename_prefix(key: str, pairs: list[tuple[str, str]], reverse: bool = False) -> str | None:
    for src, dst in pairs:
        if reverse:
            src, dst = dst, src
        if key == src or key.startswith(src + "."):
            return dst + key[len(src):]
    return None


# ---------------------------------------------------------------------------------------------------- official layout
def official_to_native(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if _IGNORED.search(key):
            continue
        if key == "visual.class_embedding":
            out["visual.cls_token"] = value.reshape(1, 1, -1)
        elif key == "visual.positional_embedding":
            out["visual.pos_embed"] = value.unsqueeze(0)
        elif key == "visual.proj":
            out["visual.head.weight"] = value.t()
        elif key == "logit_scale":
            out["logit_scale"] = value.reshape(1)
        elif m := re.match(r"visual\.transformer\.resblocks\.(\d+)\.(.+)", key):
            out[f"visual.blocks.{m[1]}.{_rename_prefix(m[2], _BLOCK_OFFICIAL) or m[2]}"] = value
        elif renamed := _rename_prefix(key, _VISUAL_OFFICIAL):
            out[renamed] = value
        else:  # bert.*, text_projection and anything unknown (reported by load_native_into)
            out[key] = value
    return out


def native_to_official(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key == "visual.cls_token":
            out["visual.class_embedding"] = value.reshape(-1)
        elif key == "visual.pos_embed":
            out["visual.positional_embedding"] = value.squeeze(0)
        elif key == "visual.head.weight":
            out["visual.proj"] = value.t()
        elif key == "logit_scale":
            out["logit_scale"] = value.reshape(())
        elif m := re.match(r"visual\.blocks\.(\d+)\.(.+)", key):
            out[f"visual.transformer.resblocks.{m[1]}.{_rename_prefix(m[2], _BLOCK_OFFICIAL, reverse=True) or m[2]}"] = value
        elif renamed := _rename_prefix(key, _VISUAL_OFFICIAL, reverse=True):
            out[renamed] = value
        else:
            out[key] = value
    return {k: v.contiguous() for k, v in out.items()}


# ---------------------------------------------------------------------------------------------------- Hugging Face layout
def hf_to_native(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if _IGNORED.search(key):
            continue
        if key == "vision_model.embeddings.class_embedding":
            out["visual.cls_token"] = value.reshape(1, 1, -1)
        elif key == "vision_model.embeddings.position_embedding.weight":
            out["visual.pos_embed"] = value.unsqueeze(0)
        elif key == "visual_projection.weight":
            out["visual.head.weight"] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.t()
        elif key == "logit_scale":
            out["logit_scale"] = value.reshape(1)
        elif m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            qkv.setdefault(f"visual.blocks.{m[1]}.attn.qkv.{m[3]}", {})[m[2]] = value
        elif m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.(.+)", key):
            out[f"visual.blocks.{m[1]}.{_rename_prefix(m[2], _BLOCK_HF) or m[2]}"] = value
        elif renamed := _rename_prefix(key, _VISUAL_HF):
            out[renamed] = value
        elif key.startswith("text_model."):
            out["bert." + key.removeprefix("text_model.")] = value
        else:
            out[key] = value
    for key, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise WeightsError(f"HF checkpoint: {key} needs q_proj, k_proj and v_proj; found only {sorted(parts)}")
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def native_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key == "visual.cls_token":
            out["vision_model.embeddings.class_embedding"] = value.reshape(-1)
        elif key == "visual.pos_embed":
            out["vision_model.embeddings.position_embedding.weight"] = value.squeeze(0)
        elif key == "visual.head.weight":
            out["visual_projection.weight"] = value
        elif key == "text_projection":
            out["text_projection.weight"] = value.t()
        elif key == "logit_scale":
            out["logit_scale"] = value.reshape(())
        elif m := re.match(r"visual\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)", key):
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"vision_model.encoder.layers.{m[1]}.self_attn.{name}_proj.{m[2]}"] = part
        elif m := re.match(r"visual\.blocks\.(\d+)\.(.+)", key):
            out[f"vision_model.encoder.layers.{m[1]}.{_rename_prefix(m[2], _BLOCK_HF, reverse=True) or m[2]}"] = value
        elif renamed := _rename_prefix(key, _VISUAL_HF, reverse=True):
            out[renamed] = value
        elif key.startswith("bert."):
            out["text_model." + key.removeprefix("bert.")] = value
        else:
            out[key] = value
    return {k: v.contiguous() for k, v in out.items()}


def hf_config_dict(config: CLIPConfig) -> dict:
    """``config.json`` of a transformers ``ChineseCLIPModel`` with our sizes."""
    v, t = config.vision, config.text
    return {
        "architectures": ["ChineseCLIPModel"],
        "model_type": "chinese_clip",
        "projection_dim": config.embed_dim,
        "logit_scale_init_value": 2.6592,
        "text_config": {
            "model_type": "chinese_clip_text_model", "vocab_size": t.vocab_size, "hidden_size": t.hidden_size,
            "num_hidden_layers": t.layers, "num_attention_heads": t.heads, "intermediate_size": t.intermediate_size,
            "hidden_act": "gelu", "hidden_dropout_prob": t.hidden_dropout,
            "attention_probs_dropout_prob": t.attention_dropout, "max_position_embeddings": t.max_position_embeddings,
            "type_vocab_size": t.type_vocab_size, "layer_norm_eps": t.layer_norm_eps, "pad_token_id": t.pad_token_id,
        },
        "vision_config": {
            "model_type": "chinese_clip_vision_model", "hidden_size": v.width, "intermediate_size": int(v.width * v.mlp_ratio),
            "projection_dim": v.embed_dim, "num_hidden_layers": v.layers, "num_attention_heads": v.heads,
            "num_channels": 3, "image_size": v.image_size, "patch_size": v.patch_size, "hidden_act": "quick_gelu",
            "layer_norm_eps": v.layer_norm_eps, "attention_dropout": 0.0,
        },
    }


def config_from_hf(d: dict, name: str | None = None) -> CLIPConfig:
    v, t = d.get("vision_config", {}), d.get("text_config", {})
    if v.get("hidden_act", "quick_gelu") != "quick_gelu" or t.get("hidden_act", "gelu") != "gelu":
        raise WeightsError("HF config: only quick_gelu (vision) and gelu (text) activations match the Chinese-CLIP towers")
    width = v.get("hidden_size", 768)
    vision = VisionConfig(
        image_size=v.get("image_size", 224), patch_size=v.get("patch_size", 32), width=width,
        layers=v.get("num_hidden_layers", 12), head_width=width // v.get("num_attention_heads", 12),
        mlp_ratio=v.get("intermediate_size", 3072) / width, embed_dim=d.get("projection_dim", 512),
        layer_norm_eps=v.get("layer_norm_eps", 1e-5))
    text = TextConfig(
        vocab_size=t.get("vocab_size", 30522), hidden_size=t.get("hidden_size", 768), layers=t.get("num_hidden_layers", 12),
        heads=t.get("num_attention_heads", 12), intermediate_size=t.get("intermediate_size", 3072),
        max_position_embeddings=t.get("max_position_embeddings", 512), type_vocab_size=t.get("type_vocab_size", 2),
        hidden_dropout=t.get("hidden_dropout_prob", 0.1), attention_dropout=t.get("attention_probs_dropout_prob", 0.1),
        layer_norm_eps=t.get("layer_norm_eps", 1e-12), pad_token_id=t.get("pad_token_id", 0))
    return _named(CLIPConfig(name="", vision=vision, text=text), name)


# ---------------------------------------------------------------------------------------------------- shapes → config
def infer_config(sd: dict[str, torch.Tensor], name: str | None = None) -> CLIPConfig:
    """Read the sizes off a native state dict. Head counts are not in the shapes: they come from the registry entry
    with the same sizes, else the family's 64-wide heads."""
    try:
        width = sd["visual.cls_token"].shape[-1]
        patch = sd["visual.patch_embed.proj.weight"].shape[-1]
        grid = math.isqrt(sd["visual.pos_embed"].shape[1] - 1)
        vision = VisionConfig(
            image_size=grid * patch, patch_size=patch, width=width, layers=_count(sd, r"visual\.blocks\.(\d+)\."),
            mlp_ratio=sd["visual.blocks.0.mlp.fc1.weight"].shape[0] / width, embed_dim=sd["visual.head.weight"].shape[0])
        vocab, hidden = sd["bert.embeddings.word_embeddings.weight"].shape
        text = TextConfig(
            vocab_size=vocab, hidden_size=hidden, layers=_count(sd, r"bert\.encoder\.layer\.(\d+)\."),
            intermediate_size=sd["bert.encoder.layer.0.intermediate.dense.weight"].shape[0],
            max_position_embeddings=sd["bert.embeddings.position_embeddings.weight"].shape[0],
            type_vocab_size=sd["bert.embeddings.token_type_embeddings.weight"].shape[0], heads=max(1, hidden // 64))
    except KeyError as e:
        raise WeightsError(f"cannot infer the model sizes: the checkpoint has no {e.args[0]!r}") from None
    vision = next((replace(vision, head_width=c.head_width) for c in VISION_CONFIGS.values()
                   if replace(c, head_width=vision.head_width) == vision), vision)
    text = next((replace(text, heads=c.heads) for c in TEXT_CONFIGS.values() if replace(c, heads=text.heads) == text), text)
    return _named(CLIPConfig(name="", vision=vision, text=text), name)


def _count(sd: dict, pattern: str) -> int:
    return len({m[1] for k in sd if (m := re.match(pattern, k))})


def _named(config: CLIPConfig, name: str | None) -> CLIPConfig:
    return replace(config, name=name or match_registered_name(config) or "custom")


# ---------------------------------------------------------------------------------------------------- files
def detect_format(path: str | Path) -> str:
    path = Path(path)
    if path.is_dir():
        if _deepspeed_tag(path) is not None:
            return "deepspeed"
        if (path / "config.json").exists():
            model_type = json.loads((path / "config.json").read_text()).get("model_type")
            if model_type == "chinese_clip":
                return "hf"
            raise WeightsError(f"{path}/config.json: model_type {model_type!r} is not 'chinese_clip'")
        raise WeightsError(f"{path}: neither a Hugging Face ChineseCLIPModel dir (config.json) nor a DeepSpeed checkpoint "
                           "dir (a 'latest' file or *model_states.pt)")
    if not path.exists():
        raise WeightsError(f"{path}: no such file or directory")
    if path.suffix == ".safetensors":
        return "native"
    return "official"


def read_checkpoint(path: str | Path, name: str | None = None) -> tuple[dict[str, torch.Tensor], CLIPConfig, str]:
    """Any supported checkpoint → (native fp32 state dict, config, detected format)."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "deepspeed":
        sd, config = _read_deepspeed(path, name)
    elif fmt == "hf":
        config = config_from_hf(json.loads((path / "config.json").read_text()), name)
        sd = hf_to_native(_read_hf_weights(path))
    elif fmt == "native":
        sd, meta = _read_safetensors(path)
        if meta.get("format") != NATIVE_FORMAT:
            raise WeightsError(f"{path}: safetensors file without cnclip_scale metadata (format={meta.get('format')!r})")
        try:
            config = CLIPConfig.from_dict(json.loads(meta["config"]))
        except (KeyError, TypeError, ValueError) as e:
            raise WeightsError(f"{path}: its cnclip_scale metadata holds no usable model config ({e!r})") from None
    else:
        obj = _torch_load(path)
        if not isinstance(obj, dict):
            raise WeightsError(f"{path}: expected a dict checkpoint, found {type(obj).__name__}")
        sd = obj.get("state_dict", obj)
        if not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise WeightsError(f"{path}: 'state_dict' holds non-tensor values; not a Chinese-CLIP checkpoint")
        sd = official_to_native(sd)
        config = infer_config(sd, name)
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
    executing pickle. DeepSpeed is imported only here: the model itself never needs it."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from ..safe_load import deepspeed_safe_load

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


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # never executes pickled code
    except Exception as e:  # noqa: BLE001 - surface torch's reason in one line
        raise WeightsError(f"{path}: not loadable as a weights-only torch checkpoint: {str(e).splitlines()[0]}") from None


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Every tensor and the metadata. A truncated, empty or foreign file is one WeightsError naming it: safetensors
    itself raises its own error type (or OSError) whose text does not say which file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: not a readable safetensors file (truncated, empty or another format: "
                           f"{str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def _read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    if (path / "model.safetensors").exists():
        return _read_safetensors(path / "model.safetensors")[0]
    if (path / "pytorch_model.bin").exists():
        return _torch_load(path / "pytorch_model.bin")
    raise WeightsError(f"{path}: neither model.safetensors nor pytorch_model.bin")


def write_native(sd: dict[str, torch.Tensor], config: CLIPConfig, path: str | Path) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    save_file(tensors, str(path), metadata={"format": NATIVE_FORMAT, "config": json.dumps(config.to_dict())})


def write_official(sd: dict[str, torch.Tensor], config: CLIPConfig, path: str | Path,
                   epoch: int = 0, step: int = 0) -> None:
    """Chinese-CLIP's checkpoint dict; keys carry ``module.`` as their DDP trainer saves them."""
    state = {"module." + k: v.detach().cpu() for k, v in native_to_official(sd).items()}
    torch.save({"epoch": epoch, "step": step, "name": config.name, "state_dict": state}, path)


def write_hf(sd: dict[str, torch.Tensor], config: CLIPConfig, path: str | Path, vocab_file: str | Path | None = None) -> None:
    """A ``save_pretrained``-style directory that ``transformers.ChineseCLIPModel.from_pretrained`` loads."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(hf_config_dict(config), indent=2))
    tensors = {k: v.detach().cpu() for k, v in native_to_hf(sd).items()}
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    r = config.vision.image_size
    (path / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ChineseCLIPImageProcessor", "do_resize": True, "size": {"height": r, "width": r},
        "resample": 3, "do_center_crop": False, "crop_size": {"height": r, "width": r}, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(MEAN), "image_std": list(STD),
        "do_convert_rgb": True}, indent=2))
    if vocab_file is not None:
        (path / "vocab.txt").write_bytes(Path(vocab_file).read_bytes())
        (path / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": config.text.max_position_embeddings},
            indent=2))


def write_checkpoint(sd: dict[str, torch.Tensor], config: CLIPConfig, path: str | Path, fmt: str,
                     vocab_file: str | Path | None = None) -> None:
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
    mismatched = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in sorted(set(own) & set(sd)) if sd[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
                parts.append(f"{label}: {shown}")
        raise WeightsError("checkpoint does not fit the model — " + "; ".join(parts))
    model.load_state_dict(sd, strict=True, assign=assign)


def load_model(path: str | Path, name: str | None = None, grad_checkpointing: bool = False):
    """Build the model a checkpoint describes and load it. ``name`` overrides the inferred registry name."""
    from .clip import build_model

    sd, config, _ = read_checkpoint(path, name)
    model = build_model(config, grad_checkpointing=grad_checkpointing)
    load_native_into(model, sd)
    return model


def convert(src: str | Path, dst: str | Path, to: str, name: str | None = None,
            vocab_file: str | Path | None = None) -> str:
    """Read ``src`` in whatever format it is, check it builds the model it describes, write ``dst`` as ``to``."""
    from .clip import build_model
    from .tokenizer import default_vocab_file

    sd, config, fmt = read_checkpoint(src, name)
    with torch.device("meta"):  # validate keys and shapes without allocating the model
        load_native_into(build_model(config), sd, assign=True)
    if to == "hf" and vocab_file is None:
        vocab_file = default_vocab_file()
    write_checkpoint(sd, config, dst, to, vocab_file=vocab_file)
    n = sum(v.numel() for v in sd.values())
    return f"{src} ({fmt}) -> {dst} ({to}): {config.name}, {len(sd)} tensors, {n / 1e6:.2f}M values"
