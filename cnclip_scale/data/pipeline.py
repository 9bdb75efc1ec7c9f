"""Shards -> batches on every rank and DataLoader worker, with an exact, saveable position.

Training::

    loader = build_train_loader(Reading(sources="s3://b/train/manifest.json", batch_size=128, workers=8),
                                tokenizer=Tokenizer(), transform=ImageTransform(resolution=224), rank=rank,
                                world_size=world, seed=0, storage_options={"endpoint_url": ...})
    # in the trainer: build_train_loader(cfg.data.reading("train"), ...) (see ``data.config``)
    loader.load_state_dict(ckpt["data"])                # optional: resume (exact for the same layout; see below)
    for epoch in range(loader.epoch, epochs):
        loader.set_epoch(epoch)                         # keeps a loaded mid-epoch position for that epoch
        for batch in loader:                            # exactly loader.batches_per_epoch batches, every rank
            ...                                         # batch["images"] uint8 B×3×r×r, "input_ids" long B×L,
                                                        # "attention_mask" bool B×L, "image_ids", "text_ids", "keys",
                                                        # "image_id_hashes"/"text_id_hashes" int64 B
            ckpt["data"] = loader.state_dict(gather=True)   # all ranks call; any rank's copy resumes every rank
        log(loader.stats())                             # corrupt / missing samples, unreadable shards

How it works (numbers in ``state.py``): the epoch is planned from manifest counts before reading, so
every rank yields ``batches_per_epoch`` batches whatever the shard sizes and even with fewer shards than
ranks × workers (ranges are cut at sample level, not shard level). Workers make whole batches (decode with
JPEG draft, resize to uint8, pick one caption per visit, tokenize); the main process only forwards them and
records, for each batch the consumer takes, which worker slot made it and that slot's position. A state is
``{"epoch", "batches", "positions": {slot: position}, "layout", ...}``; a rebuilt loader rotates which
DataLoader worker plays which slot so the batch sequence continues exactly — no sample repeated or skipped.
Under a new world size / worker count / batch size, a gathered state finishes the saved epoch with
exactly the samples no rank had taken (``state.epoch_view``); that epoch has its own ``batches_per_epoch``.
An epoch whose batches were all taken yields nothing: take the epoch to run from ``loader.epoch``.

Evaluation: ``build_eval_loader`` reads every image sample exactly once across ranks, in manifest order,
no shuffle (shares may differ by a batch; no collective happens per batch, so nothing waits), and also
reads a Chinese-CLIP seed folder (``{split}_imgs.tsv`` + ``{split}_texts.jsonl``).
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import logging
import multiprocessing
import os
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from cnclip_scale import comm
from cnclip_scale.data import state as st
from cnclip_scale.data.config import Reading
from cnclip_scale.data.decode import COUNTER_NAMES, Counters, RateLimitedLog, RawSample, parse_sample, read_samples
from cnclip_scale.data.eval_reader import SeedEvalStream, ShardEvalStream, read_seed_texts, read_shard_queries
from cnclip_scale.data.ids import id_hashes
from cnclip_scale.data.sources import DataError, Shard, resolve_sources
from cnclip_scale.model.transforms import ImageTransform

log = logging.getLogger("cnclip_scale.data")

__all__ = ["DataError", "EpochTooSmall", "Reading", "build_eval_loader", "build_train_loader"]

# A resampled slot gives up after this many shard draws in a row without one usable sample (or sooner, once
# every distinct shard has failed in that run). Failing draws cost a failed open or a few decodes each, so
# this is seconds; a source where 255 draws in 256 fail is not worth training on.
MAX_FAILED_DRAWS = 256


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _mp_context(shards: list[Shard], requested: str | None):
    """Fork for local data; forkserver for remote data (a forked child inherits the parent's s3fs event
    loop: noisy, can hang). The forkserver imports this module once, so workers start without
    re-importing torch and the model package each (seconds per worker)."""
    method = requested or (None if all(_is_local(s.url) for s in shards) else "forkserver")
    if method is None:
        return None
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload([__name__])
    return context


# ------------------------------------------------------------------------------------------- training


class EpochTooSmall(ValueError):
    """The sources hold too few samples for one batch on every rank (a setting to change, not damaged data)."""


@dataclass(kw_only=True)
class WorkerPlan:
    """Everything a worker needs to make its batches (pickled into each DataLoader worker)."""

    shards: list[Shard]
    weights: list[float]  # per shard: its source's weight (resampled draws)
    layout: st.Layout
    rank: int
    tokenizer: object  # texts -> (ids, mask) at its own context length
    transform: ImageTransform  # PIL -> uint8 tensor, e.g. ``ImageTransform(resolution=224, augment=True)``
    storage_options: dict = field(default_factory=dict)
    sources: list = field(default_factory=list)  # the source specs as given, for error messages

    def source_names(self) -> str:
        names = self.sources or sorted({s.url.rsplit("/", 1)[0] for s in self.shards})
        return " :: ".join(names)


@dataclass
class EpochPart:
    """The epoch a stream reads: normally all of it (``view.total``); after a layout change, the rest.
    ``remaining`` holds only this rank's stretch of ``view.remaining`` (from ``offset``), to keep the
    pickle sent to each worker small."""

    epoch: int
    view: st.EpochView
    offset: int = 0
    remaining: list | None = None

    @classmethod
    def of(cls, epoch: int, view: st.EpochView, layout: st.Layout, rank: int) -> EpochPart:
        if view.remaining is None:
            return cls(epoch, view)
        plans = st.plan_rank(view.total, layout, rank)
        lo, hi = plans[0].start, plans[-1].stop
        return cls(epoch, st.EpochView(view.total, None, view.level), lo, view.remaining[lo:hi])

    def global_index(self, position: int) -> int:
        """Position in the view -> position in the epoch's full shard-ordered sequence."""
        return position if self.remaining is None else self.remaining[position - self.offset]


class _FailedDraws:
    """Resampled epochs draw shards forever, so a source with no usable sample would never end an epoch.
    This counts, in the order the consumer finishes them, shard draws none of whose samples was usable;
    a usable sample resets the count. Past the bound, DataError names the sources and what went wrong."""

    def __init__(self, work: WorkerPlan, counters: Counters):
        self.work, self.counters = work, counters
        self.distinct = {s.url for s in work.shards if s.samples}
        self.bases: list[int] = []  # first input index of each draw
        self.left: dict[int, list] = {}  # draw -> [samples not yet consumed, shard url]
        self.failed, self.failed_urls = 0, set()

    def drawn(self, base: int, url: str, wanted: int) -> None:
        self.bases.append(base)
        if wanted:
            self.left[len(self.bases) - 1] = [wanted, url]

    def consumed(self, index: int, usable: bool) -> None:
        draw = bisect.bisect_right(self.bases, index) - 1
        entry = self.left.get(draw)
        if usable:
            self.failed, self.failed_urls = 0, set()
            if entry is not None:
                entry[1] = None  # this draw gave something: it cannot count as failed
        if entry is None:
            return
        entry[0] -= 1
        if entry[0]:
            return
        del self.left[draw]
        if entry[1] is None:
            return
        self.failed += 1
        self.failed_urls.add(entry[1])
        if self.failed >= MAX_FAILED_DRAWS or self.failed_urls >= self.distinct:
            raise DataError(
                f"no usable sample in {self.work.source_names()}: {self.failed} shard draws in a row "
                f"({len(self.failed_urls)} of {len(self.distinct)} shards) gave none: "
                f"{self.counters.summary()}"
            )


class _SlotInputs:
    """A slot's input samples in reading order, as (input index, RawSample or None)."""

    def __init__(
        self,
        work: WorkerPlan,
        part: EpochPart,
        plan: st.SlotPlan,
        skip: set,
        counters: Counters,
        draws: _FailedDraws | None = None,
    ):
        self.work, self.part, self.plan, self.skip, self.counters = work, part, plan, skip, counters
        self.draws = draws

    def _segments(self):
        """(shard, {sample index in shard: input index}) in reading order."""
        work, epoch = self.work, self.part.epoch
        if work.layout.mode == "resampled":
            draw = st.rng("draw", *st.slot_seed(work.layout, epoch, work.rank, self.plan.slot, self.part.view.level))
            base = 0
            while True:
                shard = draw.choices(work.shards, weights=work.weights)[0]
                if self.draws is not None:
                    self.draws.drawn(base, shard.url, sum(base + i not in self.skip for i in range(shard.samples)))
                yield shard, {i: base + i for i in range(shard.samples)}
                base += shard.samples
        # Exact: this slot's stretch of the epoch's sequence, grouped by shard (ascending positions).
        order = st.shard_order(len(work.shards), work.layout.seed, epoch, work.layout.shard_shuffle)
        starts, offset = {}, 0
        for i in order:
            starts[i], offset = offset, offset + work.shards[i].samples
        bounds = [starts[i] for i in order] + [offset]
        segment, current = {}, None
        for n, position in enumerate(range(self.plan.start, self.plan.stop)):
            g = self.part.global_index(position)
            k = bisect.bisect_right(bounds, g) - 1
            if k != current and segment:
                yield work.shards[order[current]], segment
                segment = {}
            current = k
            segment[g - bounds[k]] = n
        if segment:
            yield work.shards[order[current]], segment

    def __iter__(self):
        for shard, index in self._segments():
            first, last = min(index), max(index)
            wanted = lambda i, index=index: i in index and index[i] not in self.skip  # noqa: E731
            for i, raw in read_samples(
                shard.url, first, last - first + 1, wanted, self.counters, self.work.storage_options
            ):
                yield index[i], raw


@contextlib.contextmanager
def _augment_rng(augment: bool, seed: int):
    """Seed torch's RNG (which torchvision's augmentations draw from) per batch, so augmentation replays
    on resume; in the main process (workers=0) without disturbing the trainer's own RNG stream."""
    if not augment:
        yield
        return
    with contextlib.nullcontext() if get_worker_info() is not None else torch.random.fork_rng(devices=[]):
        # The CPU generator alone: torch.manual_seed would also re-seed CUDA, which fork_rng(devices=[]) does not
        # restore, and the trainer's dropout on the GPU would become a function of the augmentation seed.
        torch.default_generator.manual_seed(seed)
        yield


class TrainStream(IterableDataset):
    """One rank's epoch from ``batches`` on; DataLoader worker ``w`` plays slot ``(w + batches) % K``."""

    def __init__(self, work: WorkerPlan, part: EpochPart, batches: int = 0, positions: dict | None = None):
        self.work, self.part, self.batches, self.positions = work, part, batches, dict(positions or {})

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        yield from self._slot((worker + self.batches) % self.work.layout.slots)

    def _slot(self, slot: int):
        work, part = self.work, self.part
        plan = st.plan_rank(part.view.total, work.layout, work.rank)[slot]
        seed, counters = st.slot_seed(work.layout, part.epoch, work.rank, slot, part.view.level), Counters()
        first_batch = st.consumed_batches(slot, self.batches, work.layout.slots)
        position = int(self.positions.get(str(slot), 0))
        count = None if work.layout.mode == "resampled" else plan.stop - plan.start
        order = st.buffered_order(
            itertools.count() if count is None else range(count), work.layout.shuffle_buffer, seed
        )
        skip = set(itertools.islice(order, position))  # inputs used before the saved position
        draws = _FailedDraws(work, counters) if count is None else None
        inputs, pending = iter(_SlotInputs(work, part, plan, skip, counters, draws)), {}
        transform = work.transform
        last_good = None
        for b in range(first_batch, len(plan.batch_sizes)):
            with _augment_rng(work.transform.random, st.pick(2**62, "augment", *seed, b)):
                items = []
                while len(items) < plan.batch_sizes[b]:
                    index = next(order, None)
                    if index is None:  # exact: this slot's range is used up (damage)
                        break
                    position += 1
                    while index not in pending:
                        got, raw = next(inputs)
                        pending[got] = raw
                    raw = pending.pop(index)
                    item = None if raw is None else self._sample(raw, transform, counters, (*seed, position))
                    if item is not None:
                        items.append(item)
                        last_good = item
                    if draws is not None:
                        draws.consumed(index, item is not None)
                if not items:
                    # Damage left a planned batch empty; an empty batch would break the step on this rank
                    # only, so repeat one good sample (counted) to keep every rank in step.
                    items = [last_good or self._any_good(transform)]
                    counters.values["filler_samples"] += 1
                batch = self._collate(items, slot, position, counters)
            yield batch

    def _sample(self, raw: RawSample, transform, counters: Counters, visit):
        try:
            image, image_id, texts = parse_sample(raw, self.work.transform.resolution)
            if not texts:
                raise ValueError("no caption")
            text_id, text = texts[st.pick(len(texts), "caption", *visit)]
            return transform(image), image_id, text_id, text, raw.key
        except Exception as err:
            counters.bad("corrupt_samples", f"shard {raw.url} key {raw.key}: skipped: {type(err).__name__}: {err}")
            return None

    def _any_good(self, transform):
        # Exact epochs end by themselves; when damage emptied a batch and no earlier one had a good sample,
        # one pass over every shard either finds a filler or shows that nothing here can be trained on.
        counters = Counters(warnings=RateLimitedLog(burst=0, every=float("inf")))  # the error says it all
        for shard in self.work.shards:
            for _, raw in read_samples(
                shard.url, 0, shard.samples, lambda i: True, counters, self.work.storage_options
            ):
                item = raw and self._sample(raw, transform, counters, ("filler",))
                if item:
                    return item
        raise DataError(
            f"no usable sample in {self.work.source_names()}: none of its {len(self.work.shards)} shards "
            f"gave one: {counters.summary()}"
        )

    def _collate(self, items, slot: int, position: int, counters: Counters) -> dict:
        images, image_ids, text_ids, texts, keys = zip(*items)
        input_ids, mask = self.work.tokenizer(list(texts))
        return {
            "images": torch.stack(images),
            "input_ids": input_ids,
            "attention_mask": mask,
            "image_ids": list(image_ids),
            "text_ids": list(text_ids),
            "keys": list(keys),
            # hashed here, in the worker, so the training step does no per-sample work on the host
            "image_id_hashes": id_hashes(image_ids),
            "text_id_hashes": id_hashes(text_ids),
            "_loader": {"slot": slot, "position": position, "counts": counters.take()},
        }


class TrainLoader:
    """Iterable for one epoch at a time; see the module docstring for the protocol."""

    def __init__(self, work: WorkerPlan, *, workers: int, prefetch_factor: int = 2, mp_context: str | None = None):
        self.work, self.workers, self.prefetch_factor = work, workers, prefetch_factor
        self.mp_context = _mp_context(work.shards, mp_context)
        # Fail now, not in a worker, if the data cannot give every rank a batch.
        if st.batches_per_rank(work.layout.epoch_total, work.layout) == 0:
            raise EpochTooSmall(
                f"{work.layout.epoch_total} samples give no batch to each of {work.layout.world_size} "
                f"ranks (batch size {work.layout.batch_size}, drop_last={work.layout.drop_last})"
            )
        st.plan_rank(work.layout.epoch_total, work.layout, work.rank)
        self._state, self._view = st.fresh_state(0, work.layout), None
        self._counts = dict.fromkeys(COUNTER_NAMES, 0)

    @property
    def epoch(self) -> int:
        return self._state["epoch"]

    @property
    def view(self) -> st.EpochView:
        """What the current epoch reads (all of it, unless it was resumed under another layout)."""
        if self._view is None:
            self._view = st.epoch_view(self.work.layout, self._state["epoch"], self._state.get("reshard"))
        return self._view

    @property
    def batches_per_epoch(self) -> int:
        """Batches every rank yields in the current epoch (the same on all ranks)."""
        return st.batches_per_rank(self.view.total, self.work.layout)

    @property
    def samples_per_epoch(self) -> int:
        """Samples all ranks together take in the current epoch."""
        layout = self.work.layout
        return sum(
            sum(p.batch_sizes) for r in range(layout.world_size) for p in st.plan_rank(self.view.total, layout, r)
        )

    def __len__(self) -> int:
        return self.batches_per_epoch

    def set_epoch(self, epoch: int) -> None:
        if epoch != self._state["epoch"]:
            self._state, self._view = st.fresh_state(epoch, self.work.layout), None

    def rewind(self) -> None:
        """Back to the start of the current epoch: the next iteration is a full pass again (what a validation loader
        does before every pass, reading the same samples and captions each time)."""
        self._state, self._view = st.fresh_state(self._state["epoch"], self.work.layout), None

    def __iter__(self):
        state = self._state
        if state["batches"] >= self.batches_per_epoch:
            return
        part = EpochPart.of(state["epoch"], self.view, self.work.layout, self.work.rank)
        stream = TrainStream(self.work, part, state["batches"], state["positions"])
        if self.workers == 0:
            batches = iter(stream)
        else:
            # Its own generator: a DataLoader otherwise draws its workers' base seed from the global torch RNG,
            # so starting an iterator would shift the trainer's dropout stream and break exact resume.
            batches = iter(
                DataLoader(
                    stream,
                    batch_size=None,
                    num_workers=self.workers,
                    pin_memory=torch.cuda.is_available(),
                    prefetch_factor=self.prefetch_factor,
                    multiprocessing_context=self.mp_context,
                    generator=torch.Generator(),
                )
            )
        for batch in batches:
            meta = batch.pop("_loader")
            # Recorded as the consumer takes the batch: DataLoader prefetching never moves the position.
            state["positions"][str(meta["slot"])] = meta["position"]
            state["batches"] += 1
            for name, n in meta["counts"].items():
                self._counts[name] += n
            yield batch

    def stats(self) -> dict:
        """Damage counts over the batches consumed so far (this rank), plus where the epoch stands."""
        return {
            **self._counts,
            "epoch": self._state["epoch"],
            "batches": self._state["batches"],
            "batches_per_epoch": self.batches_per_epoch,
        }

    def state_dict(self, gather: bool = False) -> dict:
        """JSON-serialisable position after the last batch taken. ``gather=True`` (a collective: every rank
        calls it) adds all ranks' positions, so one rank's copy resumes every rank — and lets a resume
        under another world size / worker count / batch size continue the epoch without repeats."""
        state = {
            **self._state,
            "positions": dict(self._state["positions"]),
            "rank": self.work.rank,
            "counts": dict(self._counts),
        }
        if gather and comm.active():
            state["ranks"] = {str(s["rank"]): s["positions"] for s in comm.gather_objects(state)}
        return state

    def load_state_dict(self, state: dict) -> None:
        """Resume from ``state_dict()``: exactly under the same layout; under a new world size, worker count,
        batch size or drop_last, the saved epoch goes on with the samples no rank had taken (needs a
        gathered state when the old world size was > 1); after any other change, the epoch restarts."""
        epoch = int(state.get("epoch", 0))
        changes = st.layout_changes(state, self.work.layout)
        ranks = state.get("ranks") or (
            {str(state.get("rank", 0)): state.get("positions", {})}
            if state.get("layout", {}).get("world_size") == 1
            else None
        )
        if state.get("version") != st.STATE_VERSION or (
            changes and not (set(changes) <= set(st.RESHARDABLE) and ranks is not None)
        ):
            log.warning(
                "data state not resumable here (%s): restarting epoch %d from its start",
                st.check_state(state, self.work.layout) or "no gathered positions",
                epoch,
            )
            self._state, self._view = st.fresh_state(epoch, self.work.layout), None
            return
        self._counts = {**dict.fromkeys(COUNTER_NAMES, 0), **state.get("counts", {})}
        if changes:
            log.warning(
                "data layout changed (%s): epoch %d goes on with the samples not yet taken",
                st.check_state(state, self.work.layout),
                epoch,
            )
            reshard = {"layout": state["layout"], "ranks": ranks, "from": state.get("reshard")}
            self._state, self._view = st.fresh_state(epoch, self.work.layout, reshard), None
            return
        if "ranks" not in state and state.get("rank", self.work.rank) != self.work.rank:
            raise ValueError(f"state of rank {state['rank']} loaded on rank {self.work.rank}; save with gather=True")
        positions = (state.get("ranks") or {}).get(str(self.work.rank), state["positions"])
        self._state = {
            **st.fresh_state(epoch, self.work.layout, state.get("reshard")),
            "batches": int(state["batches"]),
            "positions": {str(k): int(v) for k, v in positions.items()},
        }
        self._view = None


def build_train_loader(
    reading: Reading,
    *,
    tokenizer,
    transform: ImageTransform,
    rank: int,
    world_size: int,
    seed: int,
    storage_options: dict | None = None,
    prefetch_factor: int = 2,
    mp_context: str | None = None,
) -> TrainLoader:
    """A training-style loader over ``reading.sources`` (see ``sources.py``; ``reading.weights`` mix them in
    resampled mode). ``tokenizer`` and ``transform`` run in the workers (both pickle).

    Exact epochs (``resampled=False``): every sample once; the last batches of a rank may be smaller unless
    ``drop_last``. Resampled epochs: shards drawn with replacement, ``epoch_samples`` (default: the sources' total)
    // (world_size × batch_size) full batches per rank. ``shuffle_buffer`` is per worker, in samples (memory ≈
    buffer × mean encoded sample size).
    """
    resolved = resolve_sources(reading.sources, reading.weights, storage_options)
    if not reading.resampled and len({s.weight for s in resolved}) > 1:
        log.warning("source weights only apply to resampled epochs; exact epochs read every sample once")
    shards = [shard for source in resolved for shard in source.shards]
    layout = st.Layout(
        world_size,
        reading.workers,
        reading.batch_size,
        "resampled" if reading.resampled else "exact",
        reading.drop_last,
        seed,
        reading.shuffle_buffer,
        reading.shard_shuffle,
        reading.epoch_samples if reading.resampled else None,
        sum(s.samples for s in shards),
    )
    work = WorkerPlan(
        shards=shards,
        weights=[s.weight for s in resolved for _ in s.shards],
        layout=layout,
        rank=rank,
        tokenizer=tokenizer,
        transform=transform,
        storage_options=dict(storage_options or {}),
        sources=[s.spec for s in resolved],
    )
    return TrainLoader(work, workers=reading.workers, prefetch_factor=prefetch_factor, mp_context=mp_context)


# ----------------------------------------------------------------------------------------- evaluation


class EvalLoader:
    """Iterable of eval batches (see ``eval_reader.py``); ``samples`` is the split's total over all ranks."""

    def __init__(
        self,
        stream: IterableDataset,
        samples: int | None,
        workers: int,
        mp_context: str | None,
        source_names: list[str] | None = None,
        queries: list[tuple] | None = None,
    ):
        self.stream, self.samples, self.workers, self.mp_context = stream, samples, workers, mp_context
        self.source_names = source_names or []  # batch["sources"] indexes this list
        # (text_id, text, source index) of the texts without ground truth ("image_ids": []): no image carries them,
        # so they come beside the batches; the same list on every rank (the evaluator predicts for them only).
        self.queries = queries or []
        self._counts = dict.fromkeys(COUNTER_NAMES, 0)

    @property
    def batch_size(self) -> int:
        """Images per batch (the last batch of each worker may hold fewer)."""
        return self.stream.batch_size

    def __iter__(self):
        # Its own generator, as in training: the trainer validates mid-run, and a DataLoader otherwise draws its
        # workers' seed from the global RNG, shifting the trainer's dropout stream.
        batches = (
            self.stream
            if self.workers == 0
            else DataLoader(
                self.stream,
                batch_size=None,
                num_workers=self.workers,
                pin_memory=torch.cuda.is_available(),
                multiprocessing_context=self.mp_context,
                generator=torch.Generator(),
            )
        )
        for batch in batches:
            for name, n in batch.pop("_loader")["counts"].items():
                self._counts[name] += n
            batch["texts"] = [[tuple(t) for t in texts] for texts in batch["texts"]]  # workers send lists
            yield batch

    def stats(self) -> dict:
        return dict(self._counts)


def _seed_layout(sources, split: str | None) -> tuple[str, str] | None:
    """(images tsv, texts jsonl) if ``sources`` names a Chinese-CLIP seed folder or its ``*_imgs.tsv``."""
    if not isinstance(sources, str) or "::" in sources or "://" in sources.replace("file://", ""):
        return None
    path = sources.removeprefix("file://")
    if path.endswith("_imgs.tsv"):
        return path, path[: -len("_imgs.tsv")] + "_texts.jsonl"
    if split and os.path.isfile(os.path.join(path, f"{split}_imgs.tsv")):
        return os.path.join(path, f"{split}_imgs.tsv"), os.path.join(path, f"{split}_texts.jsonl")
    return None


def build_eval_loader(
    sources,
    *,
    image_size: int,
    batch_size: int,
    workers: int,
    rank: int,
    world_size: int,
    split: str | None = None,
    storage_options: dict | None = None,
    mp_context: str | None = None,
) -> EvalLoader:
    """Every image sample once across ranks, no shuffle. ``sources``: shard sources as for training, or a
    seed folder with ``split`` (``DIR`` + ``"valid"`` reads ``DIR/valid_imgs.tsv`` + ``DIR/valid_texts.jsonl``),
    or the path of a ``{split}_imgs.tsv``."""
    common = dict(image_size=image_size, batch_size=batch_size, rank=rank, world_size=world_size, workers=workers)
    seed = _seed_layout(sources, split)
    if seed is not None:
        for path in seed:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"seed-layout file not found: {path}")
        queries = [(t, text, 0) for t, text in read_seed_texts(seed[1])[1]]
        return EvalLoader(SeedEvalStream(*seed, **common), None, workers, mp_context, [seed[0]], queries)
    resolved = resolve_sources(sources, None, storage_options)
    shards = [s for source in resolved for s in source.shards]
    source_of = [k for k, source in enumerate(resolved) for _ in source.shards]
    stream = ShardEvalStream(shards, dict(storage_options or {}), source_of, **common)
    queries = [(t, text, k) for k, source in enumerate(resolved) for t, text in _shard_queries(source, storage_options)]
    return EvalLoader(
        stream,
        sum(s.samples for s in shards),
        workers,
        _mp_context(shards, mp_context),
        [s.spec for s in resolved],
        queries,
    )


def _shard_queries(source, storage_options: dict | None) -> list[tuple]:
    """The split's queries without ground truth (the manifest's ``queries`` file, see shards/convert.py), when the
    source names a whole converted split (its folder or manifest); a brace pattern or single tars are a subset of
    the shards, not the split, and bring none."""
    entry = (source.manifest or {}).get("queries")
    spec = source.spec.strip()
    if not isinstance(entry, dict) or "{" in spec or spec.endswith(".tar"):
        return []
    folder = (spec.rsplit("/", 1)[0] if "/" in spec else ".") if spec.endswith(".json") else spec.rstrip("/")
    return read_shard_queries(f"{folder}/{entry['file']}", int(entry["texts"]), storage_options)
