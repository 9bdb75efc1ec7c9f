"""Evaluation streams: every image exactly once across ranks × workers, in source order, no shuffle.

Two inputs, one batch format ``{"images": uint8 B×3×r×r, "image_ids": [str], "texts": [[(text_id, text)]],
"keys": [str], "sources": [int]}`` (``sources``: the index of the ``a::b`` source each image came from, so the
evaluator can tell an id repeated within a source from two sources' different images under one id):
  - shards (``ShardEvalStream``): the global sample sequence (shards in manifest order) is cut into
    ``world_size × workers`` contiguous ranges of near-equal size; each worker batches its range.
  - a Chinese-CLIP seed folder (``SeedEvalStream``): ``{split}_imgs.tsv`` is cut into byte ranges at line
    starts, one per rank × worker, and captions come from ``{split}_texts.jsonl`` (via ``seed_formats``).
Texts without ground truth (``"image_ids": []``) belong to no image: ``read_seed_texts`` / ``read_shard_queries``
read them (the seed's texts.jsonl, or the ``queries.jsonl`` beside our shards) for the loader's ``queries``.
Shares may differ by a batch between ranks; the evaluator gathers embeddings after the loop, so no
rank waits on another mid-stream. Damaged samples are skipped and counted like in training.
"""

from __future__ import annotations

import torch
from torch.utils.data import IterableDataset, get_worker_info

from cnclip_scale.data import seed_formats as sf
from cnclip_scale.data.decode import Counters, decode_image, parse_sample, read_samples
from cnclip_scale.data.sources import Shard
from cnclip_scale.model.transforms import resize_to_uint8


def _slot(rank: int, workers: int) -> tuple[int, int]:
    """(this worker's global slot, number of slots)."""
    info = get_worker_info()
    per_rank = max(workers, 1)
    return rank * per_rank + (info.id if info is not None else 0), per_rank


class _EvalBase(IterableDataset):
    def __init__(self, image_size: int, batch_size: int, rank: int, world_size: int, workers: int):
        self.image_size, self.batch_size = image_size, batch_size
        self.rank, self.world_size, self.workers = rank, world_size, workers

    def _range(self, total: int) -> tuple[int, int]:
        slot, per_rank = _slot(self.rank, self.workers)
        slots = self.world_size * per_rank
        return total * slot // slots, total * (slot + 1) // slots

    def _batches(self, items, counters: Counters):
        batch = []
        for item in items:
            batch.append(item)
            if len(batch) == self.batch_size:
                yield self._collate(batch, counters)
                batch = []
        if batch:
            yield self._collate(batch, counters)

    @staticmethod
    def _collate(batch, counters: Counters) -> dict:
        images, image_ids, texts, keys, sources = zip(*batch)
        return {
            "images": torch.stack(images),
            "image_ids": list(image_ids),
            "texts": list(texts),
            "keys": list(keys),
            "sources": list(sources),
            "_loader": {"counts": counters.take()},
        }


class ShardEvalStream(_EvalBase):
    def __init__(self, shards: list[Shard], storage_options: dict, source_of: list[int] | None = None, **kw):
        super().__init__(**kw)
        self.shards, self.storage_options = shards, storage_options
        self.source_of = source_of or [0] * len(shards)  # per shard: index of its source

    def __iter__(self):
        counters, transform = Counters(), resize_to_uint8(self.image_size, train=False)
        yield from self._batches(self._items(counters, transform), counters)

    def _items(self, counters: Counters, transform):
        start, stop = self._range(sum(s.samples for s in self.shards))
        offset = 0
        for shard, source in zip(self.shards, self.source_of):
            lo, hi = max(start, offset), min(stop, offset + shard.samples)
            offset += shard.samples
            if lo >= hi:
                continue
            first = lo - (offset - shard.samples)
            for _, raw in read_samples(shard.url, first, hi - lo, lambda i: True, counters, self.storage_options):
                if raw is None:
                    continue
                try:
                    image, image_id, texts = parse_sample(raw, self.image_size)
                    yield transform(image), image_id, texts, raw.key, source
                except Exception as err:
                    counters.bad(
                        "corrupt_samples", f"shard {raw.url} key {raw.key}: skipped: {type(err).__name__}: {err}"
                    )


def read_seed_texts(texts_jsonl: str, counters: Counters | None = None) -> tuple[dict[str, list], list[tuple]]:
    """(image_id -> [(text_id, text)], queries [(text_id, text)]) from a seed ``{split}_texts.jsonl``: queries are the
    texts with ``"image_ids": []`` (no ground truth: the evaluator predicts for them, scores nothing). As the converter
    does, ids compare as text (1 and "1" are one id) and the first line naming one owns it."""
    counters = counters if counters is not None else Counters()
    captions: dict[str, list] = {}
    queries: list[tuple] = []
    seen: dict[str, int] = {}
    for line, record in sf.iter_texts_jsonl(texts_jsonl):
        if isinstance(record, sf.BadRecord):
            counters.bad("corrupt_samples", f"{texts_jsonl}:{line}: skipped text: {record}")
            continue
        if seen.setdefault(str(record.text_id), line) != line:
            first = seen[str(record.text_id)]
            counters.bad(
                "corrupt_samples",
                f"{texts_jsonl}:{line}: skipped text: duplicate_text_id: "
                f"text_id {record.text_id!r} first seen at line {first}",
            )
            continue
        if not record.image_ids:
            queries.append((str(record.text_id), record.text))
        for image_id in record.image_ids:
            captions.setdefault(image_id, []).append((str(record.text_id), record.text))
    return captions, queries


def read_shard_queries(url: str, expected: int, storage_options: dict | None = None) -> list[tuple]:
    """The queries without ground truth a converted split keeps beside its shards (the manifest's ``queries``
    file, seed ``texts.jsonl`` lines with ``"image_ids": []``), as [(text_id, text)]; SourceError if the file
    is missing or does not hold the ``expected`` count the manifest recorded."""
    import fsspec

    from cnclip_scale.data.sources import SourceError

    options = (storage_options or {}) if "://" in url and not url.startswith("file://") else {}
    fs, path = fsspec.core.url_to_fs(url, **options)
    try:
        raw = fs.cat_file(path)
    except FileNotFoundError:
        raise SourceError(
            f"{url}: missing (the manifest lists {expected} queries without ground truth in it)"
        ) from None
    queries = []
    for number, line in enumerate(raw.splitlines(), start=1):
        try:
            record = sf.parse_text_line(line)
        except sf.BadRecord as bad:
            raise SourceError(f"{url}:{number}: {bad}") from None
        queries.append((str(record.text_id), record.text))
    if len(queries) != expected:
        raise SourceError(f"{url}: {len(queries)} queries, the manifest says {expected}")
    return queries


class SeedEvalStream(_EvalBase):
    def __init__(self, images_tsv: str, texts_jsonl: str, **kw):
        super().__init__(**kw)
        self.images_tsv, self.texts_jsonl = images_tsv, texts_jsonl

    def __iter__(self):
        counters, transform = Counters(), resize_to_uint8(self.image_size, train=False)
        yield from self._batches(self._items(counters, transform), counters)

    def _items(self, counters: Counters, transform):
        slot, per_rank = _slot(self.rank, self.workers)
        cuts = sf.tsv_line_starts(self.images_tsv, self.world_size * per_rank)
        if cuts[slot] >= cuts[slot + 1]:
            return
        captions, _ = read_seed_texts(self.texts_jsonl, counters)
        for _, offset, line in sf.iter_tsv_lines(self.images_tsv, cuts[slot], cuts[slot + 1]):
            try:
                image_id, data = sf.read_tsv_image(line)
            except sf.BadRecord as bad:
                if bad.reason != "blank_line":
                    counters.bad("corrupt_samples", f"{self.images_tsv} line at byte {offset}: skipped: {bad}")
                continue
            try:
                yield (
                    transform(decode_image(data, self.image_size)),
                    image_id,
                    captions.get(image_id, []),
                    image_id,
                    0,
                )
            except Exception as err:
                counters.bad(
                    "corrupt_samples", f"{self.images_tsv} image {image_id}: skipped: {type(err).__name__}: {err}"
                )
