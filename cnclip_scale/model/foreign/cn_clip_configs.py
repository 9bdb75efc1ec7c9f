"""The ``model_configs/<vision>.json`` + ``model_configs/<text>.json`` pair that Chinese-CLIP's ``create_model`` reads
(``cn_clip/clip/model_configs/``), for an official ``.pt`` whose sizes are not one of the released models'. Copy the
pair into ``cn_clip/clip/model_configs/`` and pass ``"<vision>@<text>"`` as the model name."""

from __future__ import annotations

import json
from pathlib import Path

from ..configs import TEXT_CONFIGS, VISION_CONFIGS, CLIPConfig, ResNetConfig
from ..formats import WeightsError

# The towers cn_clip 1.6.0 ships configs for.
OFFICIAL_VISION = ("RN50", "ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14")
OFFICIAL_TEXT = ("RoBERTa-wwm-ext-base-chinese", "RoBERTa-wwm-ext-large-chinese", "RBT3-chinese")


def vision_json(config: CLIPConfig) -> dict:
    v = config.vision
    if isinstance(v, ResNetConfig):
        return {
            "embed_dim": v.embed_dim,
            "image_resolution": v.image_size,
            "vision_layers": json.dumps(list(v.layers)).replace(" ", ""),  # cn_clip evaluates a string: "[3,4,6,3]"
            "vision_width": v.width,
            "vision_head_width": v.head_width,
            "vision_patch_size": None,
        }
    if v.mlp_ratio != 4.0 or v.layer_norm_eps != 1e-5:
        raise WeightsError(
            f"{config.name}: cn_clip's ViT has mlp_ratio 4 and LayerNorm eps 1e-5 (this model: {v.mlp_ratio}, "
            f"{v.layer_norm_eps}); no model_configs json describes it"
        )
    return {
        "embed_dim": v.embed_dim,
        "image_resolution": v.image_size,
        "vision_layers": v.layers,
        "vision_width": v.width,
        "vision_head_width": v.head_width,
        "vision_patch_size": v.patch_size,
    }


def text_json(config: CLIPConfig) -> dict:
    t = config.text
    return {
        "vocab_size": t.vocab_size,
        "text_attention_probs_dropout_prob": t.attention_dropout,
        "text_hidden_act": "gelu",
        "text_hidden_dropout_prob": t.hidden_dropout,
        "text_hidden_size": t.hidden_size,
        "text_initializer_range": 0.02,
        "text_intermediate_size": t.intermediate_size,
        "text_max_position_embeddings": t.max_position_embeddings,
        "text_num_attention_heads": t.heads,
        "text_num_hidden_layers": t.layers,
        "text_type_vocab_size": t.type_vocab_size,
    }


def write_model_configs(config: CLIPConfig, dst: str | Path) -> tuple[str, list[Path]] | None:
    """Next to an official ``dst``: ``model_configs/`` with the json of each tower cn_clip does not ship. Returns the
    model name to give ``create_model`` and the files written; None when both towers are cn_clip's own."""
    dst = Path(dst)
    vision, _, text = config.name.partition("@")
    if VISION_CONFIGS.get(vision) != config.vision:  # a custom name, or sizes overridden (image_size=...)
        vision = next((n for n, c in VISION_CONFIGS.items() if c == config.vision), f"{dst.stem}-vision")
    if TEXT_CONFIGS.get(text) != config.text:
        text = next((n for n, c in TEXT_CONFIGS.items() if c == config.text), f"{dst.stem}-text")
    if vision in OFFICIAL_VISION and text in OFFICIAL_TEXT:
        return None
    folder = dst.parent / "model_configs"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, official, content in ((vision, OFFICIAL_VISION, vision_json), (text, OFFICIAL_TEXT, text_json)):
        if name not in official:
            (folder / f"{name}.json").write_text(json.dumps(content(config), indent=4) + "\n")
            written.append(folder / f"{name}.json")
    return f"{vision}@{text}", written
