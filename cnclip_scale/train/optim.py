"""Parameter groups, AdamW and the warmup + cosine schedule.

No weight decay for: biases, every normalisation layer (found by module type, so BERT's ``LayerNorm`` and timm's
norms are caught whatever they are called), the ViT's class token and position embedding, and ``logit_scale``.
Word/position embedding tables of BERT keep decay, as BERT was trained.
"""

from __future__ import annotations

import math

import torch
from torch import nn

NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.RMSNorm)
NO_DECAY_NAMES = {"visual.cls_token", "visual.pos_embed", "logit_scale"}


def no_decay_names(model: nn.Module) -> set[str]:
    names = set(NO_DECAY_NAMES)
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if isinstance(module, NORM_TYPES) or param_name == "bias":
                names.add(full)
    return names


def freeze(model: nn.Module, vision: bool = False, text: bool = False) -> None:
    """LiT-style locking: the frozen tower (its projection included) gets no gradients and no optimiser state."""
    for name, p in model.named_parameters():
        in_text = name.startswith("bert.") or name == "text_projection"
        if (vision and name.startswith("visual.")) or (text and in_text):
            p.requires_grad_(False)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    skip = no_decay_names(model)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.98), eps: float = 1e-6):
    # A plain torch AdamW: DeepSpeed would JIT-build its fused CPU/GPU Adam for an optimizer named in its config.
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas), eps=eps)


def lr_at(step: int, base_lr: float, warmup: int, max_steps: int, min_lr: float = 0.0) -> float:
    """Linear warmup from 0 to ``base_lr`` over ``warmup`` steps, then cosine down to ``min_lr`` at ``max_steps``."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer, base_lr: float, warmup: int, max_steps: int, min_lr: float = 0.0):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_at(step, base_lr, warmup, max_steps, min_lr) / base_lr
    )
