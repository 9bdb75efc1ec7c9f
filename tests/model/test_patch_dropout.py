"""FLIP patch dropout (``model.mask_ratio``): training-only, class token kept, evaluation untouched."""

import pytest
import torch
import torch.nn.functional as F

from cnclip_scale.model import build_model, model_config
from cnclip_scale.model.clip import PatchDropout
from cnclip_scale.model.configs import TINY


def _images(n=6, seed=3):
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def _pair(ratio):
    torch.manual_seed(0)
    return build_model(model_config(TINY), mask_ratio=ratio)


def test_eval_outputs_are_bitwise_unchanged(tokenizer, captions):
    plain, masked = _pair(0.0), _pair(0.5)
    masked.load_state_dict(plain.state_dict())
    ids, mask = tokenizer(captions)
    images = _images(len(captions))
    plain.eval(), masked.eval()
    with torch.no_grad():
        for a, b in zip(plain(images, ids, mask), masked(images, ids, mask), strict=True):
            assert torch.equal(a, b)
    # and a masked model in eval mode draws nothing from the RNG
    state = torch.get_rng_state()
    with torch.no_grad():
        masked.encode_image(images)
    assert torch.equal(state, torch.get_rng_state())


def _tokens_reaching_blocks(model, images):
    seen = []
    handle = model.visual.blocks[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape))
    model.encode_image(images)
    handle.remove()
    return seen[0]


def test_training_keeps_the_class_token_and_half_the_patches():
    model = _pair(0.5).train()
    grid = model.visual.patch_embed.num_patches  # 64 / 16 = 4 × 4 = 16 patches
    assert _tokens_reaching_blocks(model, _images(5)) == (5, 1 + grid // 2, model.config.vision.width)
    assert _tokens_reaching_blocks(model.eval(), _images(5)) == (5, 1 + grid, model.config.vision.width)
    assert _tokens_reaching_blocks(_pair(0.0).train(), _images(5))[1] == 1 + grid


def test_dropout_keeps_the_class_token_and_distinct_patches_per_image():
    drop = PatchDropout(0.75).train()
    x = torch.arange(3 * 17, dtype=torch.float32).reshape(3, 17, 1).expand(-1, -1, 4).contiguous()
    torch.manual_seed(1)
    out = drop(x)
    assert out.shape == (3, 1 + 4, 4)
    assert torch.equal(out[:, 0], x[:, 0])  # the class token, first and whole
    for i in range(3):
        kept = out[i, 1:, 0]
        assert len(set(kept.tolist())) == 4 and all(x[i, 1:, 0].tolist().count(v) == 1 for v in kept.tolist())
    # the draw follows torch's RNG: the same seed drops the same patches (exact resume)
    torch.manual_seed(1)
    assert torch.equal(drop(x), out)
    with pytest.raises(ValueError):
        PatchDropout(1.0)


def test_gradients_reach_only_through_kept_tokens_and_grad_checkpointing_agrees():
    model = _pair(0.5).train()
    images = _images(4)
    torch.manual_seed(7)
    a = model.encode_image(images).sum()
    a.backward()
    grads = {n: p.grad.clone() for n, p in model.visual.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    torch.manual_seed(7)
    b = model.encode_image(images).sum()
    b.backward()
    assert torch.allclose(a, b, atol=1e-6)
    for n, p in model.visual.named_parameters():
        assert torch.allclose(p.grad, grads[n], atol=1e-6), n


def test_a_tiny_model_still_learns_with_half_the_patches():
    """Matched pairs: each caption names one of 6 distinct images; the contrastive loss must fall."""
    torch.manual_seed(0)
    model = build_model(model_config(TINY), mask_ratio=0.5).train()
    images = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ids = torch.randint(1000, 5000, (8, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    labels = torch.arange(8)
    losses = []
    for _ in range(30):
        img, txt, scale = model(images, ids, mask)
        logits = scale * img @ txt.t()
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
