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

Layout changes: a state saved under one world size / worker count / batch size and loaded under
another cannot continue slot by slot, but the old plan and positions say exactly which samples were
taken; ``epoch_view`` replays them and plans the rest of that epoch (``EpochView``) over the new ranks.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

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
    """What the plan depends on; a state resumes exactly only under an equal layout."""

    world_size: int
    workers: int  # DataLoader workers per rank (0 counts as 1 slot, in-process)
    batch_size: int
    mode: str  # "exact" | "resampled"
    drop_last: bool
    seed: int
    shuffle_buffer: int = 0
    shard_shuffle: bool = True
    epoch_samples: int | None = None  # resampled: samples per epoch (default: the data's total)
    samples: int = 0  # the data's total (a different dataset is a different plan)

    @property
    def slots(self) -> int:
        return max(self.workers, 1)

    @property
    def epoch_total(self) -> int:
        """Samples an epoch spreads over the ranks (before a layout change cut it short)."""
        return (self.epoch_samples or self.samples) if self.mode == "resampled" else self.samples


# A layout change that keeps the data and its order; any other change restarts the epoch.
RESHARDABLE = ("world_size", "workers", "batch_size", "drop_last")


@dataclass(frozen=True)
class SlotPlan:
    """One worker slot's share of a rank's epoch."""

    slot: int
    batch_sizes: tuple[int, ...]  # its batches, in order (rank batches slot, slot+K, ...)
    start: int = 0  # exact: its range of the epoch's global sample sequence
    stop: int = 0


def batches_per_rank(total: int, layout: Layout) -> int:
    """Batches every rank yields when ``total`` samples are spread (``Layout.epoch_total`` normally)."""
    w, b = layout.world_size, layout.batch_size
    if layout.mode == "resampled":
        return max(total // (w * b), 1)
    if layout.drop_last:
        return total // (w * b)
    if total < w:  # only after a layout change: the epoch's last few samples wait
        return 0
    return -(-(-(-total // w)) // b)  # noqa: B002 - ceil(ceil(S / W) / B), by floor division of negatives


def plan_rank(total: int, layout: Layout, rank: int) -> list[SlotPlan]:
    """The slots of ``rank``: their batch sizes and (exact mode) ranges of the epoch's sequence."""
    k, nb, b = layout.slots, batches_per_rank(total, layout), layout.batch_size
    if layout.mode == "resampled" or layout.drop_last or nb == 0:
        sizes = [b] * nb
        rank_start = rank * nb * b
    else:
        w = layout.world_size
        quotas = [total // w + (r < total % w) for r in range(w)]
        if quotas[-1] < nb:
            raise ValueError(
                f"{total} samples cannot give {w} ranks {nb} non-empty batches of <= {b}; "
                "use a larger batch size or drop_last=True"
            )
        sizes = rank_batch_sizes(quotas[rank], nb, b)
        rank_start = sum(quotas[:rank])
    plans, start = [], rank_start
    for slot in range(k):
        mine = tuple(sizes[slot::k])
        plans.append(SlotPlan(slot, mine, start, start + sum(mine)))
        start += sum(mine)
    return plans


def slot_seed(layout: Layout, epoch: int, rank: int, slot: int, level: int = 0) -> tuple:
    """Seeds a slot's order and draws; ``level`` > 0 after layout changes, so new streams are new."""
    return (layout.seed, epoch, rank, slot) + ((level,) if level else ())


@dataclass(frozen=True)
class EpochView:
    """The part of an epoch still to read. Normally all of it; after a resume under a changed layout
    (``RESHARDABLE``), what the old layout's ranks had not consumed."""

    total: int  # samples to spread over the ranks
    remaining: list | None = None  # exact: positions of the epoch's sequence left, ascending
    level: int = 0  # how many layout changes this epoch went through


def epoch_view(layout: Layout, epoch: int, reshard: dict | None) -> EpochView:
    """``reshard``: ``{"layout", "ranks": {rank: {slot: position}}, "from": an earlier reshard or None}``."""
    if not reshard:
        return EpochView(layout.epoch_total)
    old = Layout(**reshard["layout"])
    before = epoch_view(old, epoch, reshard.get("from"))
    consumed: set[int] = set()
    used = 0
    for rank, positions in reshard["ranks"].items():
        plans = plan_rank(before.total, old, int(rank))
        for slot, position in positions.items():
            used += int(position)
            if old.mode == "exact":
                plan = plans[int(slot)]
                order = buffered_order(
                    range(plan.stop - plan.start),
                    old.shuffle_buffer,
                    slot_seed(old, epoch, int(rank), int(slot), before.level),
                )
                consumed.update(plan.start + i for i in itertools.islice(order, int(position)))
    if old.mode == "resampled":
        return EpochView(max(before.total - used, 0), None, before.level + 1)
    base = before.remaining if before.remaining is not None else range(before.total)
    remaining = [g for i, g in enumerate(base) if i not in consumed]
    if not feasible(len(remaining), layout):
        # e.g. 5 left for 3 ranks at batch size 1: 2 batches each, but one rank has 1 sample. The
        # last (len % world) samples wait for the next epoch rather than repeat or unbalance ranks.
        remaining = remaining[: len(remaining) - len(remaining) % layout.world_size]
    return EpochView(len(remaining), remaining, before.level + 1)


def feasible(total: int, layout: Layout) -> bool:
    """Whether an exact plan gives every rank the same number of non-empty batches."""
    w, nb = layout.world_size, batches_per_rank(total, layout)
    return layout.mode == "resampled" or layout.drop_last or nb == 0 or total // w >= nb


def consumed_batches(slot: int, batches: int, slots: int) -> int:
    """How many of ``slot``'s batches are among the rank's first ``batches``."""
    return len(range(slot, batches, slots))


def fresh_state(epoch: int, layout: Layout, reshard: dict | None = None) -> dict:
    return {
        "version": STATE_VERSION,
        "epoch": epoch,
        "batches": 0,
        "positions": {},
        "layout": layout.__dict__.copy(),
        "reshard": reshard,
    }


def check_state(state: dict, layout: Layout) -> str | None:
    """None if ``state`` can resume under ``layout``, else why not (in words)."""
    if state.get("version") != STATE_VERSION:
        return f"state version {state.get('version')} != {STATE_VERSION}"
    return "; ".join(f"{k} {v[0]} -> {v[1]}" for k, v in layout_changes(state, layout).items()) or None


def layout_changes(state: dict, layout: Layout) -> dict:
    saved = state.get("layout", {})
    return {k: (saved.get(k), v) for k, v in layout.__dict__.items() if saved.get(k) != v}
