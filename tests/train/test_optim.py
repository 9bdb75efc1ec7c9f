import math

import pytest

from cnclip_scale.model import build_model, model_config
from cnclip_scale.model.configs import TINY
from cnclip_scale.train.optim import build_optimizer, build_scheduler, freeze, lr_at, no_decay_names, param_groups


@pytest.fixture
def model():
    return build_model(model_config(TINY))


def test_no_decay_covers_norms_biases_tokens_and_scale(model):
    skip = no_decay_names(model)
    names = dict(model.named_parameters())
    # every LayerNorm by type: BERT's "LayerNorm", timm's norm1/norm2/norm_pre/norm
    for name in (
        "bert.embeddings.LayerNorm.weight",
        "bert.encoder.layer.0.attention.output.LayerNorm.weight",
        "bert.encoder.layer.1.output.LayerNorm.bias",
        "visual.norm_pre.weight",
        "visual.blocks.0.norm1.weight",
        "visual.blocks.1.norm2.bias",
        "visual.norm.weight",
        "visual.cls_token",
        "visual.pos_embed",
        "logit_scale",
        "visual.blocks.0.attn.qkv.bias",
        "bert.encoder.layer.0.intermediate.dense.bias",
    ):
        assert name in names and name in skip, name
    for name in (
        "bert.embeddings.word_embeddings.weight",
        "visual.blocks.0.attn.qkv.weight",
        "visual.head.weight",
        "text_projection",
        "visual.patch_embed.proj.weight",
        "bert.encoder.layer.0.attention.self.query.weight",
    ):
        assert name in names and name not in skip, name
    groups = param_groups(model, 0.1)
    assert sum(len(g["params"]) for g in groups) == len(names)
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0


def test_freeze_vision_leaves_it_out_of_the_optimizer(model):
    freeze(model, vision=True)
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.1)
    optimised = {id(p) for g in optimizer.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in optimised) == (not name.startswith("visual.")), name
    freeze(model, text=True)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["logit_scale"]


def test_warmup_then_cosine_to_min_lr():
    assert lr_at(0, 1.0, warmup=10, max_steps=110) == pytest.approx(0.1)
    assert lr_at(9, 1.0, warmup=10, max_steps=110) == pytest.approx(1.0)
    assert lr_at(10, 1.0, warmup=10, max_steps=110) == pytest.approx(1.0)
    assert lr_at(60, 1.0, warmup=10, max_steps=110, min_lr=0.2) == pytest.approx(0.6)
    assert lr_at(110, 1.0, warmup=10, max_steps=110, min_lr=0.2) == pytest.approx(0.2)
    assert lr_at(500, 1.0, warmup=10, max_steps=110, min_lr=0.2) == pytest.approx(0.2)


def test_scheduler_drives_the_optimizer(model):
    optimizer = build_optimizer(model, lr=2e-3, weight_decay=0.0)
    scheduler = build_scheduler(optimizer, 2e-3, warmup=4, max_steps=20, min_lr=1e-4)
    seen = []
    for _ in range(20):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[0] == pytest.approx(5e-4) and max(seen) == pytest.approx(2e-3)
    assert seen[-1] == pytest.approx(lr_at(19, 2e-3, 4, 20, 1e-4))
    assert all(math.isfinite(x) for x in seen)
