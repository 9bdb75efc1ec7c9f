"""Issue 16 part 4: partial locking, per-tower and layer-wise learning rates, and their config checks; part 3's
``model.mask_ratio`` check."""

import pytest
import torch

from cnclip_scale.model import build_model, model_config
from cnclip_scale.model.configs import TINY
from cnclip_scale.train.config import ConfigError, load_config
from cnclip_scale.train.optim import (
    build_optimizer,
    build_scheduler,
    freeze,
    freeze_except_last,
    layer_id,
    lr_at,
    no_decay_names,
    param_groups,
)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model(model_config(TINY))  # 2 vision blocks, 2 text layers


def _where(model, groups):
    """name -> (lr, weight decay) of the group holding it."""
    by_id = {id(p): (g.get("lr"), g["weight_decay"]) for g in groups for p in g["params"]}
    return {name: by_id.get(id(p)) for name, p in model.named_parameters()}


def test_freeze_vision_except_last_block_keeps_that_block_ln_post_and_head(model):
    freeze_except_last(model, vision=1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and n.startswith("visual.")}
    assert trainable == {
        n for n, _ in model.named_parameters() if n.startswith(("visual.blocks.1.", "visual.norm.", "visual.head."))
    }
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("visual."))
    groups = param_groups(model, 0.1, lr=1e-3)
    where = _where(model, groups)
    assert all(where[n] is None for n, p in model.named_parameters() if not p.requires_grad)  # frozen: in no group
    assert where["visual.blocks.1.attn.qkv.weight"] == (1e-3, 0.1) and where["visual.norm.weight"] == (1e-3, 0.0)
    assert where["visual.head.weight"] == (1e-3, 0.1)
    assert where["visual.blocks.0.attn.qkv.weight"] is None and where["visual.pos_embed"] is None


def test_freeze_text_except_last_counts_bert_layers_and_keeps_the_projection(model):
    freeze_except_last(model, text=0)
    trainable = {
        n for n, p in model.named_parameters() if p.requires_grad and (n.startswith("bert.") or n == "text_projection")
    }
    assert trainable == {"text_projection"}
    freeze_except_last(model, text=2)  # every layer, never the embeddings
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters() if n.startswith("bert.embeddings.")}
    freeze(model, vision=True)
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.1)
    optimised = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert optimised == {id(p) for p in model.parameters() if p.requires_grad}


def test_layer_ids_follow_beit(model):
    assert layer_id("visual.cls_token", 2) == layer_id("visual.patch_embed.proj.weight", 2) == 0
    assert layer_id("visual.norm_pre.weight", 2) == layer_id("bert.embeddings.LayerNorm.bias", 2) == 0
    assert (
        layer_id("visual.blocks.0.mlp.fc1.weight", 2) == 1
        and layer_id("bert.encoder.layer.1.output.dense.bias", 2) == 2
    )
    assert layer_id("visual.head.weight", 2) == layer_id("visual.norm.bias", 2) == layer_id("text_projection", 2) == 3


def test_tower_lrs_and_layer_decay_put_every_param_in_its_group(model):
    lr, lv, lt, d, wd = 1e-3, 2e-4, 5e-4, 0.5, 0.05
    groups = param_groups(model, wd, lr=lr, lr_vision=lv, lr_text=lt, layer_decay=d)
    where = _where(model, groups)
    skip = no_decay_names(model)
    assert all(where[n] is not None for n in where)  # nothing frozen: everything in a group
    assert sum(len(g["params"]) for g in groups) == len(where)
    assert len({(g["lr"], g["weight_decay"]) for g in groups}) == len(groups)  # one group per (lr, decay)
    for name, (_, group_wd) in where.items():
        assert group_wd == (0.0 if name in skip else wd), name
    expect = {
        "visual.cls_token": lv * d**3,  # embeddings: decay^(L + 1), L = 2
        "visual.patch_embed.proj.weight": lv * d**3,
        "visual.blocks.0.attn.qkv.weight": lv * d**2,  # block i: decay^(L - i)
        "visual.blocks.1.attn.qkv.weight": lv * d,
        "visual.norm.weight": lv,
        "visual.head.weight": lv,
        "bert.embeddings.word_embeddings.weight": lt * d**3,
        "bert.encoder.layer.0.attention.self.query.weight": lt * d**2,
        "bert.encoder.layer.1.output.LayerNorm.weight": lt * d,
        "text_projection": lt,
        "logit_scale": lr,
    }
    for name, value in expect.items():
        assert where[name][0] == pytest.approx(value), name
    assert where["logit_scale"][1] == 0.0 and where["visual.head.weight"][1] == wd


def test_default_lrs_keep_the_two_groups_of_old_checkpoints(model):
    groups = param_groups(model, 0.1, lr=1e-3, lr_vision=1e-3, lr_text=None, layer_decay=1.0)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0] and all(g["lr"] == 1e-3 for g in groups)
    groups = param_groups(model, 0.1, lr=1e-3, lr_text=3e-4)
    where = _where(model, groups)
    assert where["bert.encoder.layer.0.output.dense.weight"] == (3e-4, 0.1)
    assert where["visual.blocks.0.mlp.fc2.weight"] == (1e-3, 0.1) and where["logit_scale"] == (1e-3, 0.0)


def test_the_schedule_scales_every_groups_own_base_lr(model):
    optimizer = build_optimizer(model, 1e-3, 0.1, lr_vision=1e-4, lr_text=4e-4, layer_decay=0.8)
    bases = [g["lr"] for g in optimizer.param_groups]
    scheduler = build_scheduler(optimizer, 1e-3, warmup=3, max_steps=12, min_lr=1e-4)
    for step in range(12):
        factor = lr_at(step, 1e-3, 3, 12, 1e-4) / 1e-3
        for group, base in zip(optimizer.param_groups, bases, strict=True):
            assert group["lr"] == pytest.approx(base * factor), step
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.mask_ratio=1.0", "model.mask_ratio: must be in [0, 1)"),
        ("model.mask_ratio=-0.1", "model.mask_ratio: must be in [0, 1)"),
        ("optim.lr_vision=0", "optim.lr_vision: must be more than 0"),
        ("optim.lr_text=-1e-4", "optim.lr_text: must be more than 0"),
        ("optim.layer_decay=0", "optim.layer_decay: must be in (0, 1]"),
        ("optim.layer_decay=1.2", "optim.layer_decay: must be in (0, 1]"),
        ("train.freeze_vision_except_last=-1", "train.freeze_vision_except_last: must be 0 or more"),
        ("train.freeze_text_except_last=3", "train.freeze_text_except_last: 3 is more than the 2 blocks"),
        ("train.save_every_epochs=-1", "train.save_every_epochs: must be 0 or more"),
        ("train.valid_every_epochs=-2", "train.valid_every_epochs: must be 0 or more"),
        ("train.reset_data=maybe", "train.reset_data: expected bool"),
    ],
)
def test_bad_knobs_are_refused_with_the_key_named(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"model.name={TINY}", override])
    assert message in str(e.value)


def test_locking_a_tower_twice_is_refused_and_good_knobs_load():
    with pytest.raises(ConfigError, match="set it or train.freeze_vision, not both"):
        load_config(None, [f"model.name={TINY}", "train.freeze_vision=true", "train.freeze_vision_except_last=1"])
    cfg = load_config(
        None,
        [
            f"model.name={TINY}",
            "model.mask_ratio=0.5",
            "optim.lr_vision=1e-4",
            "optim.layer_decay=0.65",
            "train.freeze_text_except_last=2",
            "train.reset_optimizer=true",
            "train.reset_data=true",
            "train.save_every_epochs=1",
            "train.valid_every_epochs=2",
        ],
    )
    assert cfg.model.mask_ratio == 0.5 and cfg.optim.lr_vision == 1e-4 and cfg.optim.lr_text is None
    assert cfg.train.freeze_text_except_last == 2 and cfg.train.freeze_vision_except_last is None
    assert cfg.train.reset_optimizer and cfg.train.reset_data and cfg.train.valid_every_epochs == 2


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.mask_ratio=0.5", "model.mask_ratio: RN50@RBT3-chinese's image tower has no patch tokens"),
        ("optim.layer_decay=0.8", "optim.layer_decay: RN50@RBT3-chinese's image tower has no numbered blocks"),
        ("train.freeze_vision_except_last=1", "train.freeze_vision_except_last: RN50@RBT3-chinese's vision tower"),
    ],
)
def test_a_resnet_image_tower_refuses_the_block_knobs(override, message):
    from cnclip_scale.model import all_model_names

    if "RN50@RBT3-chinese" not in all_model_names():
        pytest.skip("no ResNet tower in the registry")
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.name=RN50@RBT3-chinese", override])
    assert message in str(e.value)
