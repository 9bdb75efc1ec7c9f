"""The data section of a run config, and what one loader reads.

``DataCfg`` is what a user writes under ``data:``; ``DataCfg.reading(split)`` turns it into a ``Reading``, the
settings of one train-style loader (``pipeline.build_train_loader``). Tests and benchmarks that need a combination
the two splits do not make (e.g. an exact, shuffled epoch without ``drop_last``) build a ``Reading`` directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Split = Literal["train", "valid"]


@dataclass(kw_only=True)
class Reading:
    """One loader's epochs: which sources, how they are cut into batches and shuffled."""

    sources: list[str] | str  # manifest URLs, folders or brace patterns; ``a::b`` mixes
    batch_size: int  # per rank
    workers: int = 0
    weights: list[float] | str | None = None  # mixing weights, one per source (resampled epochs only)
    resampled: bool = False  # shards drawn with replacement instead of every sample once
    epoch_samples: int | None = None  # resampled epochs: samples per epoch (default: the sources' total)
    shuffle_buffer: int = 1000  # per worker, in samples
    shard_shuffle: bool = True  # a new shard order every epoch
    drop_last: bool = False  # only full global batches (what a gathered loss needs)


@dataclass(kw_only=True)
class DataCfg:
    train: list[str] = field(default_factory=list)  # manifest URLs, folders or brace patterns
    train_weights: list[float] | None = None  # mixing weights, one per source
    valid: list[str] = field(default_factory=list)
    batch_size: int = 128  # per rank
    valid_batch_size: int = 128
    workers: int = 4
    resampled: bool = False  # pretraining at scale: shards drawn with replacement
    epoch_samples: int | None = None  # resampled epochs: samples per epoch (default: the manifest's total)
    shuffle_buffer: int = 2000
    augment: bool = False
    # fsspec options for remote sources (s3://...: endpoint_url, key, secret, client_kwargs, ...), a mapping in YAML
    # or a JSON object on the command line; without them s3fs reads the AWS_* environment variables. Saved configs
    # and checkpoints keep them with credentials redacted (``redacted_storage_options``).
    storage_options: dict | None = None

    def redacted_storage_options(self) -> dict | None:
        """``storage_options`` with every credential-like value (a name with key, secret, token, password or
        credential) replaced: what configs and checkpoints record."""
        return _redact(self.storage_options)

    def reading(self, split: Split) -> Reading:
        if split == "train":
            # Training gathers features across ranks, so every rank's batch must be full.
            return Reading(
                sources=self.train,
                weights=self.train_weights,
                batch_size=self.batch_size,
                workers=self.workers,
                resampled=self.resampled,
                epoch_samples=self.epoch_samples,
                shuffle_buffer=self.shuffle_buffer,
                shard_shuffle=True,
                drop_last=True,
            )
        if split == "valid":
            # Validation scores each rank's batches alone: every sample once, in order, the last batches short.
            return Reading(
                sources=self.valid,
                batch_size=self.valid_batch_size,
                workers=self.workers,
                shuffle_buffer=0,
                shard_shuffle=False,
                drop_last=False,
            )
        raise ValueError(f"split {split!r} is not one of train, valid")


_SECRET_NAMES = ("key", "secret", "token", "password", "credential")


def _redact(value):
    if isinstance(value, dict):
        return {
            k: "<redacted>" if any(n in str(k).lower() for n in _SECRET_NAMES) and v else _redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value
