"""Rank-0 logging: the seed's line format (Chinese-CLIP users grep these), a metrics JSONL, TensorBoard events."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

LOG_FORMAT = "%(asctime)s | %(levelname)s | Rank %(rank)s | %(message)s"
DATE_FORMAT = "%Y-%m-%d,%H:%M:%S"


class _MainRankOnly(logging.Filter):
    """Ranks other than 0 print only warnings and lines logged with ``extra={"all_ranks": True}``."""

    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        return self.rank == 0 or record.levelno >= logging.WARNING or getattr(record, "all_ranks", False)


def setup_logging(output_dir: Path, rank: int) -> logging.LoggerAdapter:
    """Rank 0 logs to stderr and to ``out_<timestamp>.log`` in the run directory, as Chinese-CLIP does; the other
    ranks print their start-up line and warnings."""
    logger = logging.getLogger("cnclip_scale.train")
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    logger.propagate = False
    formatter = logging.Formatter(LOG_FORMAT, DATE_FORMAT)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(_MainRankOnly(rank))
    logger.addHandler(handler)
    if rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        log_file = output_dir / f"out_{time.strftime('%Y-%m-%d-%H-%M-%S')}.log"
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    return _RankAdapter(logger, {"rank": rank})


class _RankAdapter(logging.LoggerAdapter):
    """Adds the rank to every record and keeps a call's own ``extra`` (Python 3.11's adapter drops it)."""

    def process(self, msg, kwargs):
        kwargs["extra"] = {**self.extra, **kwargs.get("extra", {})}
        return msg, kwargs


def train_line(m: dict) -> str:
    pct = 100.0 * m["epoch_samples"] / max(1, m["samples_per_epoch"])
    return (
        f"Global Steps: {m['step']}/{m['max_steps']} | Train Epoch: {m['epoch'] + 1} "
        f"[{m['epoch_samples']}/{m['samples_per_epoch']} ({pct:.0f}%)] | Loss: {m['loss']:.6f} | "
        f"Image2Text Acc: {100 * m['i2t_acc']:.2f} | Text2Image Acc: {100 * m['t2i_acc']:.2f} | "
        f"Data Time: {m['data_time']:.3f}s | Batch Time: {m['batch_time']:.3f}s | LR: {m['lr']:.6f} | "
        f"logit_scale: {m['logit_scale']:.3f} | Global Batch Size: {m['global_batch_size']} | "
        f"Samples/s: {m['samples_per_s']:.1f} | Loss Scale: {m['loss_scale']:g} | "
        f"Skipped Steps: {m['skipped_steps']}"
    )


def valid_line(m: dict) -> str:
    line = (
        f"Validation Result (epoch {m['epoch'] + 1} @ {m['step']} steps) | Valid Loss: {m['valid_loss']:.6f} | "
        f"Image2Text Acc: {100 * m['valid_i2t_acc']:.2f} | Text2Image Acc: {100 * m['valid_t2i_acc']:.2f} | "
        f"logit_scale: {m['logit_scale']:.3f} | Valid Batch Size: {m['valid_batch_size']}"
    )
    if "t2i_mean_recall" in m:
        line += (
            f" | Text2Image R@1/5/10: {m['t2i_r1']:.2f}/{m['t2i_r5']:.2f}/{m['t2i_r10']:.2f} | "
            f"Image2Text R@1/5/10: {m['i2t_r1']:.2f}/{m['i2t_r5']:.2f}/{m['i2t_r10']:.2f}"
        )
    return line


class MetricsSink:
    """``metrics.jsonl`` (one JSON per record, appended, survives resume) and TensorBoard scalars; rank 0 only."""

    def __init__(self, output_dir: Path, enabled: bool):
        self.enabled = enabled
        self.writer = None
        if enabled:
            self.jsonl = open(output_dir / "metrics.jsonl", "a", encoding="utf-8")
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(output_dir / "tensorboard"))
            except ImportError:  # tensorboard is a declared dependency; keep training if a user removed it
                self.writer = None

    def write(self, kind: str, metrics: dict) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"kind": kind, "time": time.time(), **metrics}, ensure_ascii=False) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.writer.add_scalar(f"{kind}/{key}", value, metrics["step"])

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            if self.writer is not None:
                self.writer.close()
