import math

import torch

from cnclip_scale.model import build_model, model_config
from cnclip_scale.model.configs import TINY


def _batch(tokenizer, captions, seed=0):
    torch.manual_seed(seed)
    ids, mask = tokenizer(captions)
    return torch.randn(len(captions), 3, 64, 64), ids, mask


def test_forward_gives_normalised_features_and_temperature(tiny_model, tokenizer, captions):
    images, ids, mask = _batch(tokenizer, captions)
    img, txt, scale = tiny_model(images, ids, mask)
    assert img.shape == txt.shape == (len(captions), 32)
    assert torch.allclose(img.norm(dim=-1), torch.ones(len(captions)), atol=1e-6)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(len(captions)), atol=1e-6)
    assert math.isclose(scale.item(), 1 / 0.07, rel_tol=1e-6)
    assert tiny_model.logit_scale.shape == (1,)  # DeepSpeed-safe shape; adapters map the 0-dim official tensor


def test_temperature_is_capped_at_100(tiny_model, tokenizer, captions):
    with torch.no_grad():
        tiny_model.logit_scale.fill_(10.0)
    _, _, scale = tiny_model(*_batch(tokenizer, captions))
    assert math.isclose(scale.item(), 100.0, rel_tol=1e-6)


def test_padding_does_not_change_text_features(tiny_model, tokenizer):
    tiny_model.eval()
    short, short_mask = tokenizer(["红色的苹果"], context_length=12)
    long, long_mask = tokenizer(["红色的苹果"], context_length=52)
    with torch.no_grad():
        assert torch.allclose(
            tiny_model.encode_text(short, short_mask), tiny_model.encode_text(long, long_mask), atol=1e-6
        )


def _grads(model, batch, seed):
    model.zero_grad()
    torch.manual_seed(seed)  # same dropout masks in both runs; checkpointing replays the RNG state
    img, txt, scale = model(*batch)
    logits = scale * img @ txt.t()
    labels = torch.arange(len(img))
    loss = (
        torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.t(), labels)
    ) / 2
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_grad_checkpointing_gives_the_same_gradients(tokenizer, captions):
    torch.manual_seed(0)
    model = build_model(model_config(TINY)).train()
    batch = _batch(tokenizer, captions, seed=5)
    loss_plain, plain = _grads(model, batch, seed=11)
    model.set_grad_checkpointing(True)
    assert model.visual.grad_checkpointing and model.bert.is_activation_checkpointing
    loss_ckpt, ckpt = _grads(model, batch, seed=11)
    assert torch.allclose(loss_plain, loss_ckpt, atol=1e-6)
    assert plain.keys() == ckpt.keys() and len(plain) == len(list(model.parameters()))
    for name in plain:
        assert torch.allclose(plain[name], ckpt[name], atol=1e-6), name


def test_attention_goes_through_sdpa(tiny_model):
    assert tiny_model.bert.config._attn_implementation == "sdpa"
    assert all(block.attn.fused_attn for block in tiny_model.visual.blocks)
