"""Validation during training: the contrastive loss and accuracies on ``data.valid``, and retrieval recall.

validator = Validator(cfg, tokenizer=tokenizer, transform=ImageTransform(resolution=224), rank=r, world_size=w)
metrics = validator(engine, step)       # every call: one full pass over the split, the same samples each time
"""

from __future__ import annotations

import torch

from ..data.pipeline import build_train_loader
from ..model.transforms import ImageTransform
from . import engine as eng
from .config import RunConfig
from .loss import clip_loss
from .step import mean_over_ranks, step_inputs


class Validator:
    """Built once per run (its loader plans the split once); all ranks call it together."""

    def __init__(self, cfg: RunConfig, *, tokenizer, transform: ImageTransform, rank: int, world_size: int):
        self.loader = build_train_loader(
            cfg.data.reading("valid"),
            tokenizer=tokenizer,
            transform=transform,
            rank=rank,
            world_size=world_size,
            seed=cfg.train.seed,
            storage_options=cfg.data.storage_options,
        )
        self.tokenizer = tokenizer
        self.storage_options = cfg.data.storage_options
        self.sources, self.batch_size, self.workers = cfg.data.valid, cfg.data.valid_batch_size, cfg.data.workers
        self.false_negatives, self.recall = cfg.train.false_negatives, cfg.train.valid_recall

    def __call__(self, engine, step: int) -> dict[str, float]:
        device, dtype = engine.device, eng.input_dtype(engine)
        metrics = self._contrastive(engine, device, dtype)
        if self.recall:
            metrics.update(self._recall(engine, device, dtype))
        return {**metrics, "step": step, "valid_batch_size": self.batch_size}

    @torch.no_grad()
    def _contrastive(self, engine, device, dtype) -> dict[str, float]:
        engine.eval()
        totals = torch.zeros(3, device=device)  # loss, i2t_acc, t2i_acc summed on the device
        batches = 0
        self.loader.rewind()  # a full pass every call, over the same samples and captions
        # every rank gets the same number of non-empty batches (ZeRO-3 forwards are collective)
        for batch in self.loader:
            images, ids, mask, (image_ids, text_ids) = step_inputs(batch, device, dtype, self.false_negatives)
            img, txt, scale = engine(images, ids, mask)
            out = clip_loss(img.float(), txt.float(), scale.float(), image_ids, text_ids, distributed=False)
            totals += torch.stack([out["loss"], out["i2t_acc"], out["t2i_acc"]]).float()
            batches += 1
        engine.train()
        means = totals / max(1, batches)
        return mean_over_ranks(dict(zip(("valid_loss", "valid_i2t_acc", "valid_t2i_acc"), means, strict=True)))

    def _recall(self, engine, device, dtype) -> dict[str, float]:
        """Retrieval recall through the evaluator (the same code as launch/evaluate.py), on a plain copy of the model
        (see ``engine.plain_model_copy``: ZeRO-3's hooks must not see the evaluation's forwards), its images decoded by
        the run's loader workers rather than in the training process."""
        from ..eval import evaluate_retrieval

        model = eng.plain_model_copy(engine)
        result = evaluate_retrieval(
            model,
            self.sources,
            self.tokenizer,
            device=device,
            dtype=dtype,
            batch_size=self.batch_size,
            workers=self.workers,
            storage_options=self.storage_options,
        )
        del model
        return {
            f"{direction}_{key}": result[direction][key]
            for direction in ("t2i", "i2t")
            for key in ("r1", "r5", "r10", "mean_recall")
        }
