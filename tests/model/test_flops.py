"""The FLOPs formula against PyTorch's own counter (FlopCounterMode) on real forward and training steps.

The counter runs with SDPA's math backend: on CPU the default backend is the CPU flash kernel
(``_scaled_dot_product_flash_attention_for_cpu``), which FlopCounterMode has no formula for and would count as 0,
while the math backend decomposes attention into the two batched products the formula counts (on GPUs the fused
kernels have formulas of their own; benchmarks/bench_gpu.py checks those).
"""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from cnclip_scale.model import build_model, model_config
from cnclip_scale.model.configs import TINY
from cnclip_scale.model.flops import flops_per_sample, forward_flops, training_flops

BASE = "ViT-B-16@RoBERTa-wwm-ext-base-chinese"


def _inputs(config, batch: int, context_length: int):
    g = torch.Generator().manual_seed(0)
    size = config.vision.image_size
    images = torch.randn(batch, 3, size, size, generator=g)
    ids = torch.randint(1000, config.text.vocab_size, (batch, context_length), generator=g)
    mask = torch.ones_like(ids)
    mask[:, context_length // 2 :] = 0  # padded captions, as the tokenizer gives: attention still spans them all
    return images, ids, mask


def _counted(fn) -> int:
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("name,context_length", [(TINY, 32), (BASE, 52)])
def test_forward_flops_match_the_counter(name, context_length):
    config = model_config(name)
    torch.manual_seed(0)
    model = build_model(config).eval()
    batch = 1 if name == BASE else 3
    inputs = _inputs(config, batch, context_length)
    with torch.no_grad():
        counted = _counted(lambda: model(*inputs))
    assert counted / batch == pytest.approx(forward_flops(config, context_length), rel=0.02)


def test_base_model_size_is_the_known_one():
    """ViT-B/16 at 224 px is ~35 GFLOPs forward (17.6 G multiply-adds, the figure ViT papers quote); BERT-base over
    52 tokens ~9 GFLOPs."""
    f = flops_per_sample(model_config(BASE), 52)
    assert f.vision / 1e9 == pytest.approx(35.2, abs=0.3)
    assert f.text / 1e9 == pytest.approx(8.9, abs=0.1)


@pytest.mark.parametrize("grad_checkpointing", [False, True])
def test_training_flops_match_the_counter(grad_checkpointing):
    """Forward + backward of one step (and the recompute under gradient checkpointing), counted, against
    ``training_flops``; the contrastive logits the formula leaves out are a few hundred FLOPs here."""
    config = model_config(TINY)
    torch.manual_seed(0)
    model = build_model(config, grad_checkpointing=grad_checkpointing).train()
    batch, context_length = 4, 32
    inputs = _inputs(config, batch, context_length)

    def step():
        image_features, text_features, scale = model(*inputs)
        logits = scale * image_features @ text_features.t()
        labels = torch.arange(batch)
        loss = torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.t(), labels)
        loss.backward()

    counted = _counted(step)
    expected = training_flops(config, context_length, grad_checkpointing)
    assert counted / batch == pytest.approx(expected, rel=0.02)
    plain = training_flops(config, context_length, False)
    if grad_checkpointing:  # the recompute is real work the counter saw: the two figures must differ by it
        assert expected - plain == flops_per_sample(config, context_length).checkpointed
