"""Every registry entry builds with the released family's sizes; counts are checked against an independent formula
and against transformers' own ChineseCLIPModel built from the same sizes."""

import pytest
import torch
from transformers import ChineseCLIPConfig, ChineseCLIPModel

from cnclip_scale.model import all_model_names, build_model, model_config
from cnclip_scale.model.configs import RELEASED, VISION_CONFIGS, ResNetConfig, match_registered_name
from cnclip_scale.model.weights import hf_config_dict


def expected_resnet_params(v) -> int:
    w, d = v.width, v.width * 32
    stem = 9 * (3 * w // 2 + (w // 2) ** 2 + w // 2 * w) + 2 * (w // 2 + w // 2 + w)
    inplanes, stages = w, 0
    for i, blocks in enumerate(v.layers):
        planes = w * 2**i
        for b in range(blocks):
            inner = inplanes * planes + 9 * planes * planes + planes * 4 * planes + 2 * (planes + planes + 4 * planes)
            stages += inner + (inplanes * 4 * planes + 8 * planes if b == 0 else 0)  # downsample: 1st block
            inplanes = 4 * planes
    attnpool = ((v.image_size // 32) ** 2 + 1) * d + 3 * (d * d + d) + d * v.embed_dim + v.embed_dim
    return stem + stages + attnpool


def expected_params(cfg) -> int:
    v, t, e = cfg.vision, cfg.text, cfg.embed_dim
    h, f = t.hidden_size, t.intermediate_size
    if isinstance(v, ResNetConfig):
        vision = expected_resnet_params(v)
    else:
        w = v.width
        tokens = (v.image_size // v.patch_size) ** 2 + 1
        mlp = int(w * v.mlp_ratio)
        vit_block = 4 * w + (3 * w * w + 3 * w) + (w * w + w) + (w * mlp + mlp) + (mlp * w + w)
        vision = 3 * v.patch_size**2 * w + w + tokens * w + 2 * w + v.layers * vit_block + 2 * w + w * e
    bert_layer = 3 * (h * h + h) + (h * h + h) + 2 * h + (h * f + f) + (f * h + h) + 2 * h
    text = (t.vocab_size + t.max_position_embeddings + t.type_vocab_size) * h + 2 * h + t.layers * bert_layer + h * e
    return vision + text + 1  # + logit_scale


def build_on_meta(name):
    with torch.device("meta"):
        return build_model(model_config(name))


@pytest.mark.parametrize("name", all_model_names())
def test_every_config_builds_with_expected_size(name):
    model = build_on_meta(name)
    assert sum(p.numel() for p in model.parameters()) == expected_params(model.config)


def test_vit_b16_roberta_base_is_188m():
    model = build_on_meta("ViT-B-16@RoBERTa-wwm-ext-base-chinese")
    n = sum(p.numel() for p in model.parameters())
    assert 187.5e6 < n < 188.5e6, n


@pytest.mark.parametrize("name", [n for n in RELEASED if not n.startswith("RN")])
def test_counts_match_transformers_chinese_clip(name):
    ours = build_on_meta(name)
    with torch.device("meta"):
        theirs = ChineseCLIPModel(ChineseCLIPConfig(**hf_config_dict(ours.config)))
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


def test_family_sizes():
    h14 = model_config("ViT-H-14@RoBERTa-wwm-ext-large-chinese")
    assert (h14.vision.width, h14.vision.layers, h14.vision.heads, h14.embed_dim) == (1280, 32, 16, 1024)
    assert (h14.text.hidden_size, h14.text.layers, h14.text.heads, h14.text.intermediate_size) == (1024, 24, 16, 4096)
    assert model_config("ViT-L-14-336@RBT3-chinese").vision.image_size == 336
    assert model_config("ViT-B-32@RBT3-chinese").text.layers == 3
    assert {c.layer_norm_eps for c in VISION_CONFIGS.values() if not isinstance(c, ResNetConfig)} == {1e-5}
    rn50 = model_config("RN50@RBT3-chinese")
    assert (rn50.vision.layers, rn50.vision.width, rn50.vision.heads, rn50.embed_dim) == ((3, 4, 6, 3), 64, 32, 1024)
    assert model_config("ViT-B-16@RoBERTa-wwm-ext-base-chinese").text.layer_norm_eps == 1e-12


def test_registered_name_round_trip():
    assert (
        match_registered_name(model_config("ViT-L-14@RoBERTa-wwm-ext-base-chinese"))
        == "ViT-L-14@RoBERTa-wwm-ext-base-chinese"
    )


@pytest.mark.parametrize(
    "bad, message",
    [
        ("ViT-B-16", "must be '<vision>@<text>'"),
        ("ViT-X@RBT3-chinese", "unknown vision"),
        ("ViT-B-16@GPT", "unknown text"),
        ("RN101@RBT3-chinese", "unknown vision"),
    ],
)
def test_bad_names_say_what_is_wrong(bad, message):
    with pytest.raises(ValueError, match=message):
        model_config(bad)
