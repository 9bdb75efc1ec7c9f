"""One training step, and the batch it reads.

A step makes no host synchronisation of its own (DeepSpeed's optimizer step makes those it needs, e.g. the fp16
overflow check): losses, accuracies, the finiteness flag and logit_scale stay on the device, and come to the host
only when the caller asks (``mean_over_ranks`` on log steps, ``check`` on log and checkpoint steps).
"""

from __future__ import annotations

import torch

from .. import comm
from ..model.transforms import normalize_batch
from . import engine as eng
from .loss import clip_loss


class NonFiniteLoss(RuntimeError):
    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


def step_inputs(batch: dict, device, dtype, false_negatives: bool):
    """The batch on the device (non-blocking from the loader's pinned memory); ids arrive hashed by the workers."""
    images = normalize_batch(batch["images"].to(device, non_blocking=True), dtype)
    ids = batch["input_ids"].to(device, non_blocking=True)
    mask = batch["attention_mask"].to(device, non_blocking=True)
    pair_ids = (
        (batch["image_id_hashes"].to(device, non_blocking=True), batch["text_id_hashes"].to(device, non_blocking=True))
        if false_negatives
        else (None, None)
    )
    return images, ids, mask, pair_ids


def train_step(
    engine, images, ids, mask, pair_ids, logit_scale: torch.Tensor, *, watch=None, step: int = 0, check: bool = False
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One optimizer step: forward, the local InfoNCE at the fp32 temperature, backward, step, the logit_scale clamp.

    ``watch`` (an ``engine.FiniteWatch``, None under fp16 whose loss scaler skips overflowing steps) notes a non-finite
    loss on the device; ``check`` reads it before the backward (a host sync: the loop asks on log and checkpoint
    steps), so a checkpoint never holds weights a non-finite loss has touched. Returns the loss and accuracies (on the
    device) and the clamped fp32 logit_scale for the next step."""
    img, txt, scale = engine(images, ids, mask)
    out = clip_loss(img.float(), txt.float(), eng.fp32_temperature(scale, logit_scale), *pair_ids)
    if watch is not None:
        watch.update(out["loss"], step)
        bad = watch.first_bad_step() if check else None
        if bad is not None:
            raise NonFiniteLoss(f"non-finite loss at step {bad}", bad)
    engine.backward(out["loss"])
    engine.step()
    return out, eng.clamp_logit_scale(engine)


def mean_over_ranks(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Averaged on the device in one collective; ``.tolist()`` is the host sync, made on log steps only."""
    keys = sorted(values)
    means = comm.mean(torch.stack([values[k].detach().float().reshape(()) for k in keys]))
    return dict(zip(keys, means.tolist(), strict=True))
