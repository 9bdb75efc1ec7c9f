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

import torch
import torch.nn.functional as F

from .. import comm


def clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    scale: torch.Tensor,
    image_ids: torch.Tensor | None = None,
    text_ids: torch.Tensor | None = None,
    distributed: bool = True,
) -> dict[str, torch.Tensor]:
    """Loss of this rank's rows (the engine averages over ranks) and in-batch accuracies over the global batch.

    ``image_ids``/``text_ids``: int64 ids of this rank's entries (``data.ids.id_hashes``), or None to treat every
    off-diagonal entry as a negative. ``distributed=False`` scores this rank's batch alone (validation, where the
    last batches of ranks may differ in size and cannot be gathered).
    """
    rows, device = image_features.shape[0], image_features.device
    distributed = distributed and comm.world() > 1
    all_images = comm.all_gather_with_grad(image_features) if distributed else image_features
    all_texts = comm.all_gather_with_grad(text_features) if distributed else text_features
    offset = comm.rank() * rows if distributed else 0
    logits_i2t = scale * image_features @ all_texts.t()  # my images vs every text
    logits_t2i = scale * text_features @ all_images.t()  # my texts vs every image

    positives = torch.zeros(rows, all_texts.shape[0], device=device)
    mine = torch.arange(rows, device=device)  # on the device: a CPU index into a CUDA tensor is a host sync
    positives[mine, mine + offset] = 1.0  # my row i pairs with global column offset+i
    if image_ids is not None and text_ids is not None:
        all_image_ids = comm.all_gather(image_ids) if distributed else image_ids
        all_text_ids = comm.all_gather(text_ids) if distributed else text_ids
        same = (image_ids[:, None] == all_image_ids[None, :]) | (text_ids[:, None] == all_text_ids[None, :])
        positives = torch.maximum(positives, same.float())
    target = positives / positives.sum(dim=1, keepdim=True)
    loss_i2t = F.cross_entropy(logits_i2t.float(), target)
    loss_t2i = F.cross_entropy(logits_t2i.float(), target)
    with torch.no_grad():
        hit_i2t = positives.gather(1, logits_i2t.argmax(dim=1, keepdim=True)).mean()
        hit_t2i = positives.gather(1, logits_t2i.argmax(dim=1, keepdim=True)).mean()
    return {"loss": (loss_i2t + loss_t2i) / 2, "i2t_acc": hit_i2t, "t2i_acc": hit_t2i}
