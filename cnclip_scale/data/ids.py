"""Sample ids as integers: the trainer's false-negative handling compares ids across ranks, which needs tensors.

Hashed in the DataLoader workers (part of each batch), so the training step does no per-sample Python work on the host.
"""

from __future__ import annotations

import hashlib

import torch


def id_hashes(ids) -> torch.Tensor:
    """Stable 63-bit integer ids (int64, non-negative); ``1`` and ``"1"`` hash alike, as the shards store ids as
    text."""
    out = [int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little") >> 1 for i in ids]
    return torch.tensor(out, dtype=torch.long)
