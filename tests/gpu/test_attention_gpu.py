"""Both towers' attention runs in a fused SDPA kernel on the GPU, forward and backward (in-process, no launch).

Two things are proved together. (1) With SDPA's math kernel forbidden, a bf16 forward + backward of the real-size
model runs: every SDPA call found a fused kernel (flash, memory-efficient or cuDNN) — the text tower's padding mask
rules flash out, so that is the memory-efficient (or cuDNN) kernel. (2) The fused kernels are actually called, once
per layer of each tower: forbidding the math kernel alone would prove nothing if a tower computed attention with its
own matmul + softmax (timm does when its ``fused_attn`` flag is off, e.g. under TIMM_FUSED_ATTN=0), so the aten ops
reaching the dispatcher are recorded and the fused attention ops counted by sequence length (197 image tokens, 52 text
tokens).
"""

from __future__ import annotations

import collections

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode

from cnclip_scale.model import Tokenizer, build_model, model_config
from cnclip_scale.train.loss import clip_loss
from tests.helpers.gpu_runs import BASE

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.integration,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check)"),
]

FUSED_FORWARD = {
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
}
FUSED_BACKWARD = {f"{name}_backward" for name in FUSED_FORWARD}
CAPTIONS = [
    "一只橘猫趴在窗台上晒太阳",
    "红色的苹果",
    "宇航员在太空中漂浮",
    "北京故宫，雪后初晴。",
    "2022新款 women's 夏季连衣裙 L码！",
    "高级感托特包斜挎",
    "一杯咖啡",
    "火箭发射",
]


class AttentionOps(TorchDispatchMode):
    """Counts the attention ops that reach the dispatcher, by (op, query length). A dispatch mode sees the ops after
    SDPA picked its kernel, and it is carried into the autograd engine's threads, so backward ops are seen too."""

    def __init__(self):
        super().__init__()
        self.calls: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if "attention" in name:
            query = args[1] if name.endswith("_backward") else args[0]  # backward ops take grad_out first
            self.calls[(name, query.shape[-2])] += 1
        return func(*args, **(kwargs or {}))


def test_both_towers_use_fused_attention_forward_and_backward():
    config = model_config(BASE)
    torch.manual_seed(0)
    model = build_model(config).cuda().train()  # train mode: BERT's attention dropout is on, as in training
    vision_attention = [m for m in model.visual.modules() if hasattr(m, "fused_attn")]  # timm's attention layers
    assert len(vision_attention) == config.vision.layers and all(m.fused_attn for m in vision_attention)
    assert model.bert.config._attn_implementation == "sdpa"

    ids, mask = Tokenizer()(CAPTIONS)  # padded to 52: the mask has zeros, flash cannot take it
    assert (mask == 0).any()
    images = torch.randn(len(CAPTIONS), 3, config.vision.image_size, config.vision.image_size, device="cuda")
    recorder = AttentionOps()
    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    with sdpa_kernel(backends), recorder:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            image_features, text_features, scale = model(images, ids.cuda(), mask.cuda())
        loss = clip_loss(image_features.float(), text_features.float(), scale.float(), distributed=False)["loss"]
        loss.backward()
        torch.cuda.synchronize()
    assert torch.isfinite(loss)

    tokens = {"vision": (config.vision.image_size // config.vision.patch_size) ** 2 + 1, "text": ids.shape[1]}
    layers = {"vision": config.vision.layers, "text": config.text.layers}
    seen = dict(recorder.calls)
    for tower, length in tokens.items():
        forward = sum(n for (name, q), n in seen.items() if name in FUSED_FORWARD and q == length)
        backward = sum(n for (name, q), n in seen.items() if name in FUSED_BACKWARD and q == length)
        assert forward == layers[tower], f"{tower}: {forward} fused attention calls for {layers[tower]} layers: {seen}"
        assert backward == layers[tower], f"{tower}: {backward} fused backward calls for {layers[tower]} layers: {seen}"
    for part in (model.visual.blocks[0].attn.qkv, model.bert.encoder.layer[0].attention.self.query):
        assert part.weight.grad is not None and torch.isfinite(part.weight.grad).all()
    del model, image_features, text_features, loss
    torch.cuda.empty_cache()
