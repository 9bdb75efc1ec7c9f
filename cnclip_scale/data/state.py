"""The epoch plan and the resume position: pure arithmetic, no I/O.

Every rank computes the same plan from the same numbers (manifest counts, world size, workers, batch
size, seed, epoch), so nothing is communicated and the plan decides — before any byte is read — how
many batches each rank yields. That is what keeps ranks in step whatever the shard sizes.

Vocabulary. A rank's epoch is a sequence of batches ``0..nb-1``; batch ``j`` is made by the rank's
DataLoader worker *slot* ``j % K`` (K = max(workers, 1)), so the DataLoader's round-robin hands them to
the consumer in order. A slot reads its own input sequence and emits it in a buffered-shuffle order
(``buffered_order``), which is a pure function of a seed: a slot's *position* is how many entries of
that order it has used (including corrupt samples it skipped), and is all a resume needs.

Exact epochs: the split's samples in a per-epoch seeded shard order form one global sequence, cut into
contiguous ranges — one per rank (sizes differ by at most one), then one per slot. Each sample is read
once per epoch. Ranks get the same number of batches, ``ceil(ceil(S/W)/B)``; all are full except the
last one or two of each rank (``drop_last=True``: ``S // (W*B)`` full batches, the rest of the
shuffled sequence waits for another epoch).

Resampled epochs: each slot draws shards with replacement (weights per source) from its own seeded
stream and fills ``epoch_samples // (W*B)`` full batches per rank; a corrupt sample is replaced by
reading on, so batches are always full.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Iterable, Iterator

STATE_VERSION = 1


def rng(*parts) -> random.Random:
    """A Random seeded from ``parts`` identically in every process (no PYTHONHASHSEED dependence)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


def pick(count: int, *parts) -> int:
    """A seeded index in ``range(count)``, e.g. which caption of an image this visit uses."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % count


def buffered_order(inputs: Iterable[int], bufsize: int, seed) -> Iterator[int]:
    """``inputs`` re-emitted through a shuffle buffer of ``bufsize`` (webdataset's ``shuffle`` on
    indices): an entry comes out at most ``bufsize`` places early, so the data can stream."""
    if bufsize <= 1:
        yield from inputs
        return
    r, buffer = rng("order", seed), []
    for item in inputs:
        buffer.append(item)
        if len(buffer) < bufsize:
            continue
        j = r.randrange(len(buffer))
        buffer[j], buffer[-1] = buffer[-1], buffer[j]
        yield buffer.pop()
    r.shuffle(buffer)
    yield from buffer


def shard_order(count: int, seed, epoch: int, shuffle: bool) -> list[int]:
    order = list(range(count))
    if shuffle:
        rng("shards", seed, epoch).shuffle(order)
    return order


def rank_batch_sizes(quota: int, batches: int, batch_size: int) -> list[int]:
    """``batches`` non-empty batch sizes summing to ``quota``: full ones first, the shortfall taken
    from the end (e.g. quota 8, 3 batches of 4 -> [4, 3, 1])."""
    if quota < batches:
        raise ValueError(f"{quota} samples cannot fill {batches} non-empty batches")
    sizes, deficit = [batch_size] * batches, batches * batch_size - quota
    for j in reversed(range(batches)):
        take = min(deficit, sizes[j] - 1)
        sizes[j] -= take
        deficit -= take
    return sizes


@dataclass(frozen=True)
class Layout:
    """What the plan depends on besides the data; a resumed state must match it."""
    world_size: int
    workers: int          # DataLoader workers per rank (0 counts as 1 slot, in-process)
    batch_size: int
    mode: str             # "exact" | "resampled"
    drop_last: bool
    seed: int

    @property
    def slots(self) -> int:
        return max(self.workers, 1)


@dataclass(frozen=True)
class SlotPlan:
    """One worker slot's share of a rank's epoch."""
    slot: int
    batch_sizes: tuple[int, ...]   # its batches, in order (rank batches slot, slot+K, ...)
    start: int = 0                 # exact: its range of the epoch's global sample sequence
    stop: int = 0


def batches_per_rank(total_samples: int, layout: Layout, epoch_samples: int | None = None) -> int:
    w, b = layout.world_size, layout.batch_size
    if layout.mode == "resampled":
        return max((epoch_samples or total_samples) // (w * b), 1)
    if layout.drop_last:
        return total_samples // (w * b)
    return -(-(-(-total_samples // w)) // b)   # ceil(ceil(S / W) / B)


def plan_rank(total_samples: int, layout: Layout, rank: int, epoch_samples: int | None = None) -> list[SlotPlan]:
    """The slots of ``rank``: their batch sizes and (exact mode) global sample ranges."""
    k, nb, b = layout.slots, batches_per_rank(total_samples, layout, epoch_samples), layout.batch_size
    if layout.mode == "resampled" or layout.drop_last:
        sizes = [b] * nb
        rank_start = rank * nb * b
    else:
        w = layout.world_size
        if total_samples < w:
            raise ValueError(f"exact epochs need at least one sample per rank: {total_samples} samples, {w} ranks")
        quotas = [total_samples // w + (r < total_samples % w) for r in range(w)]
        if quotas[-1] < nb:
            raise ValueError(f"{total_samples} samples cannot give {w} ranks {nb} non-empty batches of <= {b}; "
                             "use a larger batch size or drop_last=True")
        sizes = rank_batch_sizes(quotas[rank], nb, b)
        rank_start = sum(quotas[:rank])
    plans, start = [], rank_start
    for slot in range(k):
        mine = tuple(sizes[slot::k])
        plans.append(SlotPlan(slot, mine, start, start + sum(mine)))
        start += sum(mine)
    return plans


def consumed_batches(slot: int, batches: int, slots: int) -> int:
    """How many of ``slot``'s batches are among the rank's first ``batches``."""
    return len(range(slot, batches, slots))


def fresh_state(epoch: int, layout: Layout) -> dict:
    return {"version": STATE_VERSION, "epoch": epoch, "batches": 0, "positions": {},
            "layout": layout.__dict__.copy()}


def check_state(state: dict, layout: Layout) -> str | None:
    """None if ``state`` can resume under ``layout``, else why not (in words)."""
    if state.get("version") != STATE_VERSION:
        return f"state version {state.get('version')} != {STATE_VERSION}"
    saved = state.get("layout", {})
    diffs = [f"{k} {saved.get(k)} -> {v}" for k, v in layout.__dict__.items() if saved.get(k) != v]
    return "; ".join(diffs) or None
