"""Symmetric InfoNCE over the global batch, computed locally.

Each rank all-gathers the features of every rank *with gradients* and scores only its own rows against all columns:
logits are (local × global), so memory is linear in the global batch instead of quadratic (Chinese-CLIP's trainer
gathers without gradients and builds the full N×N matrix on every rank). The autograd all-gather sums the gradients
that other ranks' losses send to this rank's features, so with the engine's gradient averaging the result equals the
single-process loss on the whole global batch.

False negatives: two entries of a batch that share an image id or a text id (``--group pair`` data, a caption
shared by several images) are both positives; the target is spread evenly over them rather than pushing them apart.
"""
from __future__ import annotations

import hashlib
import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F


def ids_to_tensor(ids: list[str] | list[int], device=None) -> torch.Tensor:
    """Stable 63-bit integer ids (strings hashed), so they can be all-gathered and compared across ranks."""
    out = [int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little") >> 1 for i in ids]
    return torch.tensor(out, dtype=torch.long, device=device)


def _gather(x: torch.Tensor, with_grad: bool) -> torch.Tensor:
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    if with_grad:
        with warnings.catch_warnings():  # its deprecation points at a private API; this one is the public one
            warnings.simplefilter("ignore", FutureWarning)
            return torch.cat(dist_fn.all_gather(x), dim=0)
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=0)


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, scale: torch.Tensor,
              image_ids: torch.Tensor | None = None, text_ids: torch.Tensor | None = None,
              distributed: bool = True) -> dict[str, torch.Tensor]:
    """Loss of this rank's rows (the engine averages over ranks) and in-batch accuracies over the global batch.

    ``image_ids``/``text_ids``: int64 ids of this rank's entries (see ``ids_to_tensor``), or None to treat every
    off-diagonal entry as a negative. ``distributed=False`` scores this rank's batch alone (validation, where the
    last batches of ranks may differ in size and cannot be gathered).
    """
    rows = image_features.shape[0]
    distributed = distributed and dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    all_images = _gather(image_features, with_grad=True) if distributed else image_features
    all_texts = _gather(text_features, with_grad=True) if distributed else text_features
    offset = rank * rows
    logits_i2t = scale * image_features @ all_texts.t()  # my images vs every text
    logits_t2i = scale * text_features @ all_images.t()  # my texts vs every image

    positives = torch.zeros(rows, all_texts.shape[0], device=image_features.device)
    positives[torch.arange(rows), torch.arange(rows) + offset] = 1.0  # my row i pairs with global column offset+i
    if image_ids is not None and text_ids is not None:
        all_image_ids = _gather(image_ids, False) if distributed else image_ids
        all_text_ids = _gather(text_ids, False) if distributed else text_ids
        same = (image_ids[:, None] == all_image_ids[None, :]) | (text_ids[:, None] == all_text_ids[None, :])
        positives = torch.maximum(positives, same.float())
    target = positives / positives.sum(dim=1, keepdim=True)
    loss_i2t = F.cross_entropy(logits_i2t.float(), target)
    loss_t2i = F.cross_entropy(logits_t2i.float(), target)
    with torch.no_grad():
        hit_i2t = positives.gather(1, logits_i2t.argmax(dim=1, keepdim=True)).mean()
        hit_t2i = positives.gather(1, logits_t2i.argmax(dim=1, keepdim=True)).mean()
    return {"loss": (loss_i2t + loss_t2i) / 2, "i2t_acc": hit_i2t, "t2i_acc": hit_t2i}
