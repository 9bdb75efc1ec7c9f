"""Parameter groups, AdamW and the warmup + cosine schedule.

No weight decay for: biases, every normalisation layer (found by module type, so BERT's ``LayerNorm`` and timm's
norms are caught whatever they are called), the ViT's class token and position embedding, and ``logit_scale``.
Word/position embedding tables of BERT keep decay, as BERT was trained.

Learning rates: each tower has its own base lr (``optim.lr_vision`` / ``optim.lr_text``, EVA-CLIP's ``--visual-lr`` /
``--text-lr``; default ``optim.lr``; ``logit_scale`` takes ``optim.lr``), optionally scaled layer-wise as in BEiT/EVA
(``optim.layer_decay``): in a tower of L blocks, block i (0-based) gets decay^(L - i), the embeddings decay^(L + 1),
the final norm and the projection 1. Parameters are grouped by (lr, weight decay); the schedule scales every group's
own base lr (``LambdaLR``'s factor).
"""

from __future__ import annotations

import math
import re

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


_VISION_BLOCK = re.compile(r"visual\.blocks\.(\d+)\.")
_TEXT_BLOCK = re.compile(r"bert\.encoder\.layer\.(\d+)\.")
# Before the first block: the ViT's patch conv, class token, positions and ln_pre; BERT's embeddings (and their norm).
_VISION_EMBEDDINGS = (
    "visual.cls_token",
    "visual.pos_embed",
    "visual.reg_token",
    "visual.patch_embed.",
    "visual.norm_pre.",
)


def tower_of(name: str) -> str | None:
    """``"vision"``, ``"text"`` or None (``logit_scale``) for a parameter name of the CLIP model."""
    if name.startswith("visual."):
        return "vision"
    if name.startswith("bert.") or name == "text_projection":
        return "text"
    return None


def layer_id(name: str, layers: int) -> int:
    """BEiT's numbering inside a tower of ``layers`` blocks: embeddings 0, block i → i + 1, everything after the
    blocks (the ViT's final norm and head, the text projection) ``layers + 1``."""
    block = _VISION_BLOCK.match(name) or _TEXT_BLOCK.match(name)
    if block:
        return int(block.group(1)) + 1
    if name.startswith(_VISION_EMBEDDINGS) or name.startswith("bert.embeddings."):
        return 0
    return layers + 1


def _tower_layers(model: nn.Module, tower: str) -> int:
    return getattr(model.config, tower).layers


def freeze_except_last(model: nn.Module, vision: int | None = None, text: int | None = None) -> None:
    """Lock a tower except its last N blocks (open_clip's ``--lock-image-unlocked-groups``, counted in blocks).

    What stays trainable besides those blocks is what lies after them: the ViT's final norm (``visual.norm``, ln_post)
    and projection (``visual.head``), and the text tower's ``text_projection`` (BERT has no final norm: each layer
    ends in its own LayerNorm). The embeddings (patch conv, class token, positions, ln_pre; BERT's embedding tables
    and their LayerNorm) stay locked whatever N is. N=0 trains the norm and projection only; None leaves the tower
    as it is."""
    for tower, last in (("vision", vision), ("text", text)):
        if last is None:
            continue
        layers = _tower_layers(model, tower)
        for name, p in model.named_parameters():
            if tower_of(name) == tower:
                p.requires_grad_(layer_id(name, layers) > layers - last)


def freeze(model: nn.Module, vision: bool = False, text: bool = False) -> None:
    """LiT-style locking: the frozen tower (its projection included) gets no gradients and no optimiser state."""
    for name, p in model.named_parameters():
        in_text = name.startswith("bert.") or name == "text_projection"
        if (vision and name.startswith("visual.")) or (text and in_text):
            p.requires_grad_(False)


def param_lr(
    model: nn.Module, name: str, lr: float, lr_vision: float | None, lr_text: float | None, layer_decay: float
) -> float:
    """The base learning rate of one parameter (see the module docstring)."""
    tower = tower_of(name)
    if tower is None:
        return lr
    base = {"vision": lr_vision, "text": lr_text}[tower]
    base = lr if base is None else base
    if layer_decay == 1.0:
        return base
    layers = _tower_layers(model, tower)
    return base * layer_decay ** (layers + 1 - layer_id(name, layers))


def param_groups(
    model: nn.Module,
    weight_decay: float,
    lr: float | None = None,
    lr_vision: float | None = None,
    lr_text: float | None = None,
    layer_decay: float = 1.0,
) -> list[dict]:
    """Trainable parameters grouped by (lr, weight decay); frozen ones are in no group. With one lr for everything
    (the default) the groups are [decay, no decay] as before, so old checkpoints' optimizer states still fit; ``lr``
    None leaves the lr to the optimizer's default."""
    skip = no_decay_names(model)
    if lr is None or (lr_vision in (None, lr) and lr_text in (None, lr) and layer_decay == 1.0):
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if p.requires_grad:
                (no_decay if name in skip else decay).append(p)
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return [dict(g, lr=lr) for g in groups] if lr is not None else groups
    grouped: dict[tuple[float, float], list] = {}  # in the order of first appearance
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = (param_lr(model, name, lr, lr_vision, lr_text, layer_decay), 0.0 if name in skip else weight_decay)
            grouped.setdefault(key, []).append(p)
    return [{"params": ps, "weight_decay": wd, "lr": group_lr} for (group_lr, wd), ps in grouped.items()]


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas=(0.9, 0.98),
    eps: float = 1e-6,
    *,
    lr_vision: float | None = None,
    lr_text: float | None = None,
    layer_decay: float = 1.0,
):
    # A plain torch AdamW: DeepSpeed would JIT-build its fused CPU/GPU Adam for an optimizer named in its config.
    groups = param_groups(model, weight_decay, lr, lr_vision, lr_text, layer_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)


def lr_at(step: int, base_lr: float, warmup: int, max_steps: int, min_lr: float = 0.0) -> float:
    """Linear warmup from 0 to ``base_lr`` over ``warmup`` steps, then cosine down to ``min_lr`` at ``max_steps``."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer, base_lr: float, warmup: int, max_steps: int, min_lr: float = 0.0):
    """A factor on every group's own base lr: the group of ``base_lr`` (``optim.lr``) follows ``lr_at`` exactly,
    the others in proportion (their floor is ``min_lr / base_lr`` of their base lr)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_at(step, base_lr, warmup, max_steps, min_lr) / base_lr
    )
